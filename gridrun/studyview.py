"""A study's section of the report (report.py adds it; a grid has none): how the search ran and
what chose the config, the confirmed configs, hyperparameter importance, the pruned trials,
best-so-far validation accuracy against trials and wall time, and each axis of the search
space. Numbers come from study.py; this module renders them.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from . import study
from .analysis import Analysis, mean_std
from .spec import SpecError, parse


def section(exp, stage: str, a: Analysis, out_md: Path) -> list[str]:
    """The study's lines ([] for a grid); its figures are written beside `out_md`."""
    if not stage:
        return []
    spec = _spec(exp)
    searched = study.search_trials(exp)
    imp = study.importance(spec, searched) if spec else {}
    search = spec.search.model_dump() if spec else exp.spec.get("search") or {}
    search["prune"] = spec.prune.model_dump() if getattr(spec, "prune", None) else None  # prune's key
    lines = ["## Study", "", _how(search, searched, stage, a, exp), ""]
    lines += _confirmed(exp, a, searched) if stage == study.CONFIRM else []
    lines += _importance(imp, searched) + _pruned(searched)
    pics = [p for p in (_progress_plot(exp.name, searched, exp.launches, out_md), _space_plot(exp.name, spec, searched, imp, out_md))
            if p]
    return lines + ([f"![{p}]({p})" for p in pics] + [""] if pics else [])


def others(exp):
    """The experiment less its pruned trials (the study section lists those)."""
    return replace(exp, trials=[t for t in exp.trials if t.status != "pruned"])


def _spec(exp):
    try:
        return parse(exp.spec, f"{exp.name}: its recorded spec")
    except SpecError:  # a folder whose recorded spec this gridrun cannot read: no space, no importance
        return None


def _pm(stats) -> str:
    mean, std, n = stats
    return "–" if mean is None else f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "") + f" (n={n})"


def point(exp, trial: str) -> str:
    """A trial's point in the search space in words: 'lr=0.01, model=tinynet_7k'."""
    axes = next((e.axes for e in exp.manifest if e.name == trial), None) or {}
    return ", ".join(f"{k}={v}" for k, v in axes.items()) or trial


def _how(search: dict, searched: list, stage: str, a: Analysis, exp) -> str:
    """The search in one paragraph, and the rule that chose the config."""
    counts: dict[str, int] = {}
    for t, _ in searched:
        counts[t.status] = counts.get(t.status, 0) + 1
    sampler = {"tpe": "Optuna's TPE (constant liar)", "random": "Optuna's random sampler"}.get(
        search.get("sampler", "tpe"), str(search.get("sampler")))
    prune = search.get("prune") or {}
    rungs = f", pruned at epochs {prune['rungs']} keeping {prune.get('keep', 0.5):g} of each group" \
        if prune.get("rungs") else ""
    said = (f"Search: {sampler}, seed {search.get('seed', 0)}, {len(searched)} of {search.get('trials')} trials "
            f"asked{rungs}; " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ". Objective: final "
            f"validation accuracy (test accuracy chose nothing).")
    if stage == study.SEARCH:
        return said + (" Not confirmed yet: the tables below hold the search's own runs; their validation "
                       "accuracy both chose and scores them, so it is optimistic.")
    conf = search.get("confirm") or {}
    pick = (f" Chosen: **{point(exp, a.chosen.members[0].name)}**, val {_pm(a.chosen.val)}, test {_pm(a.chosen.test)} "
            f"(confirmation runs)."
            if a.chosen else "")
    return said + (f" The search's validation accuracy chose which configs to confirm, so it is optimistic: the "
                   f"top {conf.get('top')} were rerun with {conf.get('seeds')} fresh seeds each. The config is "
                   f"chosen among the confirmed configs on their confirmation runs' mean validation accuracy, and "
                   f"every table below (test accuracy included) holds the confirmation runs alone." + pick)


def _confirmed(exp, a: Analysis, searched: list) -> list[str]:
    """Each confirmed config: its search runs' validation beside its confirmation runs' numbers."""
    import pandas as pd

    axes_of = {e.name: e.axes for e in exp.manifest}  # its confirmation's point is the search's
    search_val: dict[str, list] = {}
    for t, axes in searched:
        if t.status == "finished":
            search_val.setdefault(study.key(axes), []).append(t.final.get("val_acc"))
    rows = []
    for s in sorted(a.summaries, key=lambda s: -(s.val_mean or 0)):
        k = study.key(axes_of.get(s.members[0].name) or {})
        rows.append({"config": point(exp, s.members[0].name), "search val acc, %": _pm(mean_std(search_val.get(k, []))),
                     "confirmation val acc, %": _pm(s.val), "confirmation test acc, %": _pm(s.test),
                     "chosen": "yes" if s is a.chosen else ""})
    return ["### Confirmed configs", "", pd.DataFrame(rows).to_markdown(index=False), ""] if rows else []


def _importance(imp: dict, searched: list) -> list[str]:
    import pandas as pd

    n = sum(t.status == "finished" for t, _ in searched)
    if not imp:  # say why rather than leave the section out (a reader looks for it)
        why = (f"{n} finished search trial(s); the evaluator needs at least 5" if n < 5
               else "every searched axis took one value among the finished trials: nothing to apportion")
        return ["### Hyperparameter importance", "", f"Not computed: {why}.", ""] if searched else []
    rows = [{"hyperparameter": k, "importance": f"{v:.3f}"} for k, v in imp.items()]
    return ["### Hyperparameter importance", "", f"Optuna's PED-ANOVA importance evaluator over the {n} finished "
            f"search trials: how far each axis's values among the best 10% by final validation accuracy depart "
            f"from its values over all of them (normalised to sum to 1).", "",
            pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]


def _pruned(searched: list) -> list[str]:
    import pandas as pd

    rows = [{"trial": t.name, "epochs trained": len(t.history),
             "val acc then, %": f"{100 * t.final['val_acc']:.2f}" if study._finite(t.final.get("val_acc")) else "–",
             "reason": t.reason} for t, _ in searched if t.status == "pruned"]
    if not rows:
        return []
    return [f"### Pruned trials ({len(rows)})", "", "Retired at a rung inside their fused group; never counted as "
            "finished runs or seeds.", "", pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]


# ---------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path.name


def _progress_plot(name: str, searched: list, launches: list, out_md: Path) -> str | None:
    """Best-so-far validation accuracy against trials asked and against wall time."""
    from matplotlib.ticker import MaxNLocator

    records = [t for t, _ in searched]
    by_n, by_time = study.best_so_far(records, launches)
    if not by_n:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    done = [(n, 100 * t.final["val_acc"]) for n, t in enumerate(records, 1)
            if t.status == "finished" and study._finite(t.final.get("val_acc"))]
    left.plot(*zip(*done), "o", color="0.6", ms=4, label="a finished trial's final val acc")
    left.step([n for n, _ in by_n], [100 * b for _, b in by_n], where="post", color="tab:blue", label="best so far")
    left.set_xlabel("trials asked")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    if by_time:
        right.step([s / 60 for s, _ in by_time], [100 * b for _, b in by_time], where="post", color="tab:blue",
                   marker=".")
        right.set_xlim(left=0)
    right.set_xlabel("wall time, minutes since the study began")
    for ax in (left, right):
        ax.set_ylabel("validation accuracy, %")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"{name}: best validation accuracy so far (finished trials; pruned ones never count)", fontsize=10)
    return _save(plt, fig, out_md.with_name(f"{out_md.stem}_study.png"))


def _space_plot(name: str, spec, searched: list, imp: dict, out_md: Path) -> str | None:
    """Final validation accuracy against each axis, one point per finished search trial: log axes
    with decade ticks, no sideways jitter, coloured by the most important other axis."""
    done = [(t, a) for t, a in searched if t.status == "finished" and study._finite(t.final.get("val_acc"))]
    if spec is None or not done:
        return None
    dists = study.space(spec)
    plt = _plt()
    cols = min(3, len(dists))
    fig, axes = plt.subplots(-(-len(dists) // cols), cols, figsize=(4.6 * cols, 3.6 * -(-len(dists) // cols)),
                             squeeze=False)
    ranked = sorted(dists, key=lambda k: -imp.get(k, 0))
    for ax, axis in zip(axes.flat, dists):
        by = next((k for k in ranked if k != axis), None)
        _space_axis(plt, fig, ax, axis, dists, by, done)
    for ax in list(axes.flat)[len(dists):]:
        ax.set_visible(False)
    fig.suptitle(f"{name}: final validation accuracy against each searched axis ({len(done)} finished trials)",
                 fontsize=10)
    return _save(plt, fig, out_md.with_name(f"{out_md.stem}_space.png"))


def _numeric(d) -> bool:
    return type(d).__name__ in ("FloatDistribution", "IntDistribution")


def _position(d, v) -> float:
    """Where a value sits on its axis: itself when numeric, a category's index otherwise."""
    return float(v) if _numeric(d) else d.choices.index(study.token(v))


def _space_axis(plt, fig, ax, axis: str, dists: dict, by: str | None, done: list) -> None:
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    d = dists[axis]
    xs = [_position(d, a.get(axis)) for _, a in done]
    ys = [100 * t.final["val_acc"] for t, _ in done]
    colour = [_position(dists[by], a.get(by)) for _, a in done] if by else None
    log_c = by is not None and getattr(dists[by], "log", False)
    norm = plt.matplotlib.colors.LogNorm() if log_c else None
    dots = ax.scatter(xs, ys, c=colour, cmap="viridis" if by and _numeric(dists[by]) else "tab10", norm=norm,
                      s=22, alpha=0.85, edgecolors="none")
    if by:
        bar = fig.colorbar(dots, ax=ax, pad=0.01)
        bar.set_label(by, fontsize=7)
        if not _numeric(dists[by]):
            bar.set_ticks(range(len(dists[by].choices)), labels=[str(c)[:12] for c in dists[by].choices])
        bar.ax.tick_params(labelsize=6)
    if getattr(d, "log", False):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_major_formatter(LogFormatterSciNotation(base=10))
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif not _numeric(d):
        ax.set_xticks(range(len(d.choices)), [str(c)[:16] for c in d.choices], fontsize=7,
                      rotation=30 if sum(len(str(c)) for c in d.choices) > 40 else 0)
        ax.set_xlim(-0.5, len(d.choices) - 0.5)
    ax.set_xlabel(axis + (" (log scale)" if getattr(d, "log", False) else ""))
    ax.set_ylabel("val acc, %")
    ax.grid(alpha=0.3)
    if math.isfinite(min(ys)):
        ax.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
