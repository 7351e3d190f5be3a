"""`gridrun report`: tables, the majority-vote ensemble and plots, from what trials wrote.

Analysis and rendering only: experiment folders are read by results.py (files only, no
pickles, no code from the folder). Every choice (best config per model, ensemble members) is
made on validation accuracy; test accuracy is only reported, and was recomputed from each
trial's saved logits as a check on what the trial said.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from . import analysis
from .analysis import rank_by_validation
from .errors import GridrunError
from .config import field_names
from .identity import config_key, config_label, varying_fields
from .results import AGREE_TOL, Experiment, TrialRecord, find_experiments, load_experiment
from .store import CONFIG, REFERENCE, ExperimentDir

STUDY_COLUMNS = [("model", "Model"), ("scheduler", "Scheduler"), ("augment", "Augmentation"),
                 ("batch_size", "Batch"), ("epochs", "Epochs")]
Trial = TrialRecord  # the name the report's helpers have always used


# ---------------------------------------------------------------- ensemble

def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def majority_vote(logits: list[np.ndarray]) -> np.ndarray:
    """Per-image majority vote of the members' argmax; ties go to the larger summed softmax."""
    stack = np.stack([l.astype(np.float32) for l in logits])          # (K, N, C)
    k, n, c = stack.shape
    votes = np.zeros((n, c))
    for preds in stack.argmax(2):
        votes[np.arange(n), preds] += 1
    probs = softmax(stack, 2).sum(0)                                   # (N, C)
    return np.where(votes == votes.max(1, keepdims=True), probs, -np.inf).argmax(1)


def majority_vote_labels(preds: list[np.ndarray]) -> np.ndarray:
    """Per-image majority vote of predicted classes, members best-by-validation first; a tie goes
    to the tied class voted by the best member among those that voted for one (labels only: a
    slim export keeps no logits, so there is no softmax to sum)."""
    stack = np.stack([np.asarray(p, np.int64) for p in preds])        # (K, N)
    k, n = stack.shape
    votes = np.zeros((n, 10))
    for p in stack:
        votes[np.arange(n), p] += 1
    tied = votes == votes.max(1, keepdims=True)                        # (N, C)
    first = tied[np.arange(n), stack].argmax(0)                        # best member voting a tied class
    return stack[first, np.arange(n)]


TIE_RULES = {"softmax": "a tie goes to the class with the larger summed softmax",
             "labels": "a tie goes to the tied class voted by the member best on validation (some members "
                       "kept predicted labels only, as a slim export does, so there is no softmax to sum)"}


def tie_rule(exp: Experiment) -> str:
    """One rule for the whole experiment: summed softmax when every finished trial has logits."""
    return "labels" if exp.labels_only else "softmax"


def vote(members: list[Trial], rule: str) -> np.ndarray:
    """The ensemble's class per test image; members in validation order."""
    if rule == "softmax":
        return majority_vote([t.test_logits for t in members])
    return majority_vote_labels([t.test_preds for t in members])


def ensemble_curve(ranked: list[Trial], labels: np.ndarray, ks: list[int],
                   rule: str = "softmax") -> list[tuple[int, float]]:
    if rule == "softmax":
        return _softmax_curve(ranked, labels, ks)
    return [(k, float((vote(ranked[:k], rule) == labels).mean())) for k in ks]


def _softmax_curve(ranked: list[Trial], labels: np.ndarray, ks: list[int]) -> list[tuple[int, float]]:
    """majority_vote's accuracy of the top k for every k, adding one member at a time: each
    member's votes and softmax computed once (5,000 trials: one pass, not a stack of every top k;
    197 s of a 277 s report on the 2-core CPU before)."""
    out, votes, probs = [], None, None
    for i, t in enumerate(ranked[:max(ks, default=0)], 1):
        logits = t.test_logits.astype(np.float32)
        if votes is None:
            votes, probs = np.zeros(logits.shape), np.zeros(logits.shape)
        votes[np.arange(len(logits)), logits.argmax(1)] += 1
        probs += softmax(logits, 1)
        if i in ks:
            pred = np.where(votes == votes.max(1, keepdims=True), probs, -np.inf).argmax(1)
            out.append((i, float((pred == labels).mean())))
    return out


def _ks(n: int, top_k: int) -> list[int]:
    ks = sorted({k for k in [1, 3, 5, 7, 9, 15, 25, 50, 100, top_k, n] if 1 <= k <= n})
    return ks


# ---------------------------------------------------------------- tables

def _pct(values) -> str:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return "–"
    mean = 100 * float(np.mean(v))
    if len(v) == 1:
        return f"{mean:.2f} (n=1)"
    return f"{mean:.2f} ± {100 * float(np.std(v, ddof=1)):.2f} (n={len(v)})"


def config_groups(trials: list[Trial]) -> dict[str, list[Trial]]:
    """Finished trials grouped by config (every field but the seed and plumbing)."""
    return {config_key(s.config): s.members for s in analysis.config_summaries(trials)}


def config_table(exp: Experiment) -> tuple[list[dict], str]:
    """Rows of the per-config table (markdown-ready) and the constraint summary."""
    summaries = analysis.config_summaries(exp.trials)
    varying = [k for k in summaries[0].varying if k not in {c for c, _ in STUDY_COLUMNS}] if summaries else []
    cons = exp.spec.get("constraints") or {}
    rows = [_config_row(s, varying, cons) for s in summaries]
    summary = _constraint_summary(summaries, rows, cons)  # before the best rows' cells turn bold
    rows.sort(key=lambda r: (str(r["_model"]), -r["_val"] if r["_val"] is not None else math.inf))
    for best in analysis.best_per_model(summaries).values():  # by mean validation accuracy, never test
        r = next(r for r in rows if r["_summary"] is best)
        for k in list(r):
            if not k.startswith("_") and r[k] not in (None, ""):
                r[k] = f"**{r[k]}**"
    return rows, summary


def _config_row(s: "analysis.ConfigSummary", varying: list[str], cons: dict) -> dict:
    members, cfg = s.members, s.config
    test = [m.test_acc_recomputed for m in members]
    row = {"_model": cfg.get("model"), "_val": s.val_mean, "_test": float(np.mean(test)), "_summary": s}
    for k, title in STUDY_COLUMNS[:1]:
        row[title] = cfg.get(k)
    row["Params"] = f"{s.params:,}" if s.params else "?"
    for k, title in STUDY_COLUMNS[1:]:
        row[title] = cfg.get(k)
    for k in varying:
        row[k] = json.dumps(cfg.get(k)) if isinstance(cfg.get(k), dict) else cfg.get(k)
    row["Train acc"] = _pct([m.final.get("train_acc") for m in members])
    row["Val acc"] = _pct([m.final.get("val_acc") for m in members])
    row["Test acc"] = _pct(test)
    checks = []  # (column, ok, what follows the mark)
    if cons.get("max_params"):
        checks.append(("params ≤ {:,}".format(cons["max_params"]), (s.params or 0) <= cons["max_params"], ""))
    if cons.get("max_epochs"):
        checks.append((f"epochs ≤ {cons['max_epochs']}", cfg.get("epochs", 0) <= cons["max_epochs"], ""))
    if target := cons.get("target_test_acc"):
        hit = row["_test"] >= target
        # a miss whose mean the table's two decimals round up to the target shows its digits
        near = not hit and round(100 * row["_test"], 2) >= round(100 * target, 2)
        checks.append((f"test ≥ {100 * target:.2f}", hit, f" ({100 * row['_test']:.3f})" if near else ""))
    for title, ok, why in checks:
        row[title] = ("✓" if ok else "✗") + why
    row["_ok"] = all(ok for _, ok, _ in checks)
    row["_label"] = ", ".join([str(cfg.get("model"))] + [f"{k} {row[t]}" for k, t in STUDY_COLUMNS[1:]]
                              + [f"{k} {row[k]}" for k in varying if row[k] not in (None, "", "{}")])
    return row


def _constraint_summary(summaries: list, rows: list[dict], cons: dict) -> str:
    """The answer first: the config with the best mean validation accuracy among those within
    the budget (parameters, epochs), and whether its test mean meets the target. How many
    configs' test means pass comes second, said to be no choice: picking among them by test
    accuracy would be choosing on the test set. With no validation value, nothing is chosen."""
    if not cons:
        return ""
    words = _cons_words(cons)
    budget = [w for w in words if not w.startswith("mean test")]
    row_of = {id(r["_summary"]): r for r in rows}
    best, ties = analysis.chosen(summaries, cons)
    lines = []
    if best is not None:
        a = row_of[id(best)]
        where = f" among the configs within {' and '.join(budget)}" if budget else ""
        line = f"Chosen on validation{where}: {a['_label']}, val {a['Val acc']}, test {a['Test acc']}"
        if target := cons.get("target_test_acc"):
            line += (f": it {'meets' if a['_ok'] else 'misses'} the target of {100 * target:.2f}% mean test "
                     f"accuracy")
        if ties:  # validation cannot tell them apart, and test must not: say so, keep the first listed
            line += (f". It ties on validation with {'; '.join(row_of[id(t)]['_label'] for t in ties)} "
                     f"(the first listed is shown; test breaks no tie)")
        lines.append(line + ".")
    elif summaries and not analysis.has_validation(summaries):
        lines.append("No config is chosen: no trial recorded a validation accuracy (val_size: 0).")
    elif budget:
        lines.append(f"No config is within {' and '.join(budget)}.")
    n_ok = sum(r["_ok"] for r in rows)
    lines.append(f"{n_ok} of {len(rows)} configs meet every constraint ({', '.join(words)})"
                 + ("; the test set chose none of them." if cons.get("target_test_acc") else "."))
    return " ".join(lines)


def _cons_words(cons: dict) -> list[str]:
    words = []
    if cons.get("max_params"):
        words.append(f"params ≤ {cons['max_params']:,}")
    if cons.get("max_epochs"):
        words.append(f"epochs ≤ {cons['max_epochs']}")
    if cons.get("target_test_acc"):
        words.append(f"mean test accuracy ≥ {100 * cons['target_test_acc']:.2f}%")
    return words


# ---------------------------------------------------------------- the report

def _plots(exp: Experiment, out_md: Path) -> list[str]:
    """The report's figures, written beside `out_md`; returns their file names. A figure that
    would say nothing (parameters when every config has the same count) is not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = config_groups(exp.trials)
    if not groups:
        return []
    stem = out_md.stem
    figures = [(_hparams_plot, f"{stem}_hparams.png"), (_curves_plot, f"{stem}_curves.png"),
               (_params_plot, f"{stem}_params.png")]
    names = []
    for draw, name in figures:
        path = out_md.with_name(name)
        if draw(plt, exp.name, groups, path):
            names.append(name)
        else:
            path.unlink(missing_ok=True)  # an earlier report's figure that no longer applies
    return names


def _val_pct(members: list[Trial]) -> list[float]:
    return [100 * m.final["val_acc"] for m in members
            if m.final.get("val_acc") is not None and not math.isnan(m.final["val_acc"])]


def _mean_std(v: list[float]) -> tuple[float, float]:
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


LOG_AXES = ("lr", "weight_decay")  # spread over decades: equal ratios get equal room


def _hparams_plot(plt, name: str, groups: dict, path: Path) -> bool:
    """Validation accuracy (mean ± std over seeds, one point per config) against each field
    the grid varies: a subplot per field, categories for text and choices, log axes for lr and
    weight decay."""
    scored = [g for g in groups.values() if _val_pct(g)]
    fields = varying_fields([g[0].config for g in scored])[:12]
    if not fields:
        return False
    cols = min(3, len(fields))
    rows = -(-len(fields) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.5, 4.2 * cols), 3.4 * rows + 0.4), squeeze=False)
    models = sorted({str(g[0].config.get("model")) for g in scored})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for ax, field in zip(axes.flat, fields):
        _hparam_axis(ax, field, scored, colors if len(models) > 1 else None)
    for ax in list(axes.flat)[len(fields):]:
        ax.set_visible(False)
    if len(models) > 1:
        axes.flat[0].legend(handles=[plt.Line2D([], [], marker="o", ls="", color=colors[m], label=m) for m in models],
                            fontsize=7)
    fig.suptitle(f"{name}: validation accuracy against each varying field\n(mean ± std over seeds, "
                 f"one point per config)", fontsize=10)
    return _save(plt, fig, path)


def _hparam_axis(ax, field: str, groups: list[list[Trial]], colors: dict | None) -> None:
    from matplotlib.ticker import NullFormatter

    values = [g[0].config.get(field) for g in groups]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    log = numeric and field in LOG_AXES and all(v > 0 for v in values)
    if numeric:  # ticks at the grid's own values, written as in the spec
        xs = [float(v) for v in values]
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # the decades' minor labels collide
        ticks = sorted(set(xs))
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks], fontsize=7)
    else:  # categories, in sorted order, at 0, 1, 2, ...
        cats = sorted({_short(v) for v in values})
        xs = [cats.index(_short(v)) for v in values]
        crowded = sum(map(len, cats)) > 40
        ax.set_xticks(range(len(cats)), cats, fontsize=7, rotation=30 if crowded else 0, ha="right" if crowded else "center")
        ax.set_xlim(-0.5, len(cats) - 0.5)
    for x, dx, g in zip(xs, _dodge([math.log10(x) for x in xs] if log else xs, numeric and not log), groups):
        mean, std = _mean_std(_val_pct(g))
        color = colors[str(g[0].config.get("model"))] if colors else "tab:blue"
        ax.errorbar(x * 10 ** dx if log else x + dx, mean, yerr=std, fmt="o", color=color, capsize=3, alpha=0.8)
    ax.set_xlabel(field + (" (log scale)" if log else ""))
    ax.set_ylabel("val acc, %")
    ax.grid(alpha=0.3)


def _dodge(xs: list[float], linear: bool) -> list[float]:
    """Small sideways offsets so that configs sharing a value do not hide each other's bars
    (in axis units: categories and log10 of a log axis, or a share of a linear axis' span)."""
    unit = 0.025 * ((max(xs) - min(xs)) or 1) if linear else 0.06
    seen: dict[float, int] = {}
    rank = []
    for x in xs:
        rank.append(seen.get(x, 0))
        seen[x] = rank[-1] + 1
    return [(r - (seen[x] - 1) / 2) * unit for x, r in zip(xs, rank)]


def _short(v) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) or v is None else str(v)


def _curves_plot(plt, name: str, groups: dict, path: Path) -> bool:
    """Validation curves of the five best configs by validation: the mean over seeds, with a
    band of ± one std across them."""
    from matplotlib.ticker import MaxNLocator

    with_val = [g for g in groups.values() if all(t.final.get("val_acc") is not None for t in g)]
    ranked = sorted(with_val, key=lambda g: -np.mean([t.final["val_acc"] for t in g]))[:5]
    if not ranked:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in ranked:
        n_ep = min(len(t.history) for t in g)
        acc = 100 * np.array([[h["val_acc"] for h in t.history[:n_ep]] for t in g], dtype=float)
        epochs = np.arange(1, n_ep + 1)
        line, = ax.plot(epochs, acc.mean(0), marker=".", label=f"{_label(g[0], groups)} (n={len(g)})")
        if len(g) > 1:
            sd = acc.std(0, ddof=1)
            ax.fill_between(epochs, acc.mean(0) - sd, acc.mean(0) + sd, color=line.get_color(), alpha=0.2, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(plt, fig, ax, "epoch", "validation accuracy, % (mean ± std over seeds)",
                   f"{name}: validation curves of the best configs (by validation)", path) is not None


def _params_plot(plt, name: str, groups: dict, path: Path) -> bool:
    """Test accuracy against parameter count, one point per config; only when the configs'
    counts differ (one count would stack every point on one vertical line)."""
    if len({g[0].params for g in groups.values()}) < 2:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted({str(g[0].config.get("model")) for g in groups.values()})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for members in groups.values():
        acc = [100 * m.test_acc_recomputed for m in members]
        m0 = members[0]
        ax.errorbar(m0.params or 0, np.mean(acc), yerr=np.std(acc, ddof=1) if len(acc) > 1 else 0, fmt="o",
                    color=colors[str(m0.config.get("model"))], capsize=3, alpha=0.8)
    for m in models:
        ax.plot([], [], "o", color=colors[m], label=m)
    return _finish(plt, fig, ax, "parameters", "test accuracy, % (mean ± std over seeds)",
                   f"{name}: test accuracy against parameters (one point per config)", path) is not None


def _label(t: Trial, groups: dict) -> str:
    """A config's model plus the fields in which configs differ."""
    return config_label(t.config, varying_fields([g[0].config for g in groups.values()]))


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> str:
    """Label, save (no timestamp in the PNG, so reruns give the same bytes), close."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)
    return path.name


def _save(plt, fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return True


def write_csv(exp: Experiment, path: Path) -> None:
    keys = sorted({k for t in exp.trials for k in t.config})
    metric_keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", "reason", "params", *keys, *[f"final_{k}" for k in metric_keys],
                    "test_acc_recomputed", "train_seconds"])
        for t in exp.trials:
            w.writerow([t.name, t.status, t.reason, t.params,
                        *[json.dumps(t.config.get(k)) if isinstance(t.config.get(k), dict) else t.config.get(k)
                          for k in keys],
                        *[t.final.get(k) for k in metric_keys], t.test_acc_recomputed,
                        round(sum(t.epoch_seconds), 1)])


def render(exp: Experiment, out_md: Path, top_k: int | None = None) -> str:
    """The report's markdown (plots are written beside `out_md`)."""
    if top_k is None:
        top_k = (exp.spec.get("report") or {}).get("top_k", 5)
        top_k = top_k if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1 else 5
    done = [t for t in exp.trials if t.status == "finished"]
    lines = _header(exp) + _conditions(exp) + _config_section(exp) + _reference_section(exp)
    lines += _ensemble_section(exp, done, top_k) + _runs_section(done)
    pics = _plots(exp, out_md)
    if pics:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in pics] + [""]
    return "\n".join(lines + _others_section(exp) + _checks_section(exp, done, out_md))


def _header(exp: Experiment) -> list[str]:
    lines = [f"# {exp.name}", ""]
    if isinstance(exp.spec.get("description"), str) and exp.spec["description"]:
        lines += [exp.spec["description"], ""]
    counts = exp.counts()
    return lines + [f"Experiment folder `{exp.dir}`: {len(exp.trials)} trials; "
                    + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".", "",
                    _compared(exp), ""]


def _compared(exp: Experiment) -> str:
    summaries = analysis.config_summaries(exp.trials)
    if summaries and not analysis.has_validation(summaries):
        return ("No trial recorded a validation accuracy (val_size: 0): no config is chosen or bold, and no "
                "ensemble is formed; test accuracy is the final epoch's, mean ± sample std over seeds, and "
                "chose nothing.")
    return ("Configs are compared by mean validation accuracy (bold: the best config of each model); "
            "test accuracy is the final epoch's, mean ± sample std over seeds, and chose nothing.")


def _config_section(exp: Experiment) -> list[str]:
    import pandas as pd

    rows, cons_line = config_table(exp)
    if not rows:
        return []
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    return ["## Results by config", "", df.to_markdown(index=False), ""] + ([cons_line, ""] if cons_line else [])


def _ensemble_section(exp: Experiment, done: list[Trial], top_k: int) -> list[str]:
    import pandas as pd

    ranked = rank_by_validation(exp.trials)
    if not ranked:
        return ["## Ensemble", "", "No validation split (val_size: 0): members cannot be chosen honestly, "
                "so no ensemble is reported.", ""] if done else []
    rule = tie_rule(exp)
    curve = ensemble_curve(ranked, exp.test_labels, _ks(len(ranked), top_k), rule)
    best, k_main = ranked[0], min(top_k, len(ranked))
    ens_main = next(a for k, a in curve if k == k_main)
    return ["## Ensemble: majority vote of the top K runs by validation accuracy", "",
            f"Top {k_main} by validation: **{100 * ens_main:.2f}%** test accuracy "
            f"(members: {', '.join(t.name for t in ranked[:k_main])}).", "",
            f"- best single run by validation: {best.name}, val {100 * best.final['val_acc']:.2f}%, "
            f"test {100 * best.test_acc_recomputed:.2f}%",
            f"- mean single run: {_pct([t.test_acc_recomputed for t in done])}",
            "", pd.DataFrame([{"K": k, "test acc, %": 100 * a} for k, a in curve]).to_markdown(
                index=False, floatfmt=(".0f", ".2f")),
            "", f"Each test image gets the class most members predict; {TIE_RULES[rule]}.", ""]


def _runs_section(done: list[Trial]) -> list[str]:
    import pandas as pd

    if not done or len(done) > 60:
        return []
    per = [{"trial": t.name, "seed": t.config.get("seed"), "epochs": len(t.history),
            "val acc, %": 100 * t.final["val_acc"] if t.final.get("val_acc") is not None else float("nan"),
            "test acc, %": 100 * t.test_acc_recomputed,
            "s/epoch": float(np.mean(t.epoch_seconds)) if t.epoch_seconds else float("nan")} for t in sorted(done, key=lambda t: t.name)]
    return ["## Runs (final epoch of each)", "", pd.DataFrame(per).to_markdown(index=False, floatfmt=".2f"), ""]


def _others_section(exp: Experiment) -> list[str]:
    import pandas as pd

    other = [t for t in exp.trials if t.status != "finished"]
    if not other:
        return []
    return ["## Trials not in the tables", "",
            pd.DataFrame([{"trial": t.name, "status": t.status, "reason": t.reason or "not started"}
                          for t in other]).to_markdown(index=False), ""]


def _checks_section(exp: Experiment, done: list[Trial], out_md: Path) -> list[str]:
    unread = ["Files of the experiment that could not be read (the rest is reported without them): "
              + "; ".join(exp.problems) + ".", ""] if exp.problems else []
    if not done:
        return ["## Checks", ""] + unread if unread else []
    scores = "predicted labels (a slim export: the argmax of its logits)" if exp.labels_only else "logits"
    return ["## Checks", "",
            f"Test accuracy of every finished trial was recomputed from its saved {scores} against "
            f"{exp.label_source} and agrees with what the trial reported (to {AGREE_TOL:.0e}). "
            f"Per-trial rows: [{out_md.stem}.csv]({out_md.stem}.csv).", ""] + unread


def _reference_section(exp: Experiment) -> list[str]:
    """A study's own numbers (reference.csv, copied from the spec's report.reference at launch)
    set beside gridrun's configs: each reference row is matched on the config fields it names."""
    import pandas as pd

    try:
        text = ExperimentDir(exp.dir).read_reference()
        if text is None:
            return []
        ref = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        return ["## Beside the study", "", f"{REFERENCE} could not be read ({str(e)[:100]}).", ""]
    keys = [c for c in ref.columns if c in field_names()]
    groups = config_groups(exp.trials)
    rows = []
    for _, r in ref.iterrows():
        match = [g for g in groups.values() if all(_same(g[0].config.get(k), r[k]) for k in keys)]
        members = match[0] if len(match) == 1 else []
        rows.append({"study run": r.get("label", ""), **{k: r[k] for k in keys},
                     "study test acc, %": r.get("test_acc", ""),
                     "gridrun test acc, % (mean ± std)": _pct([t.test_acc_recomputed for t in members])
                     if members else ("no run" if not match else "ambiguous"),
                     "gridrun val acc, %": _pct([t.final.get("val_acc") for t in members]) if members else "–"})
    note = ("The study's number is the best epoch of one run, picked on the test set; gridrun's is the "
            "final epoch, mean ± sample std over seeds (n), nothing chosen on test.")
    return ["## Beside the study", "", note, "", pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]


def _same(value, text: str) -> bool:
    """A config value against a CSV cell (numbers compared as numbers)."""
    if value is None:
        return text in ("", "none", "null", "None")
    try:
        return math.isclose(float(value), float(text))
    except (TypeError, ValueError):
        return str(value) == text


def _conditions(exp: Experiment) -> list[str]:
    """Where and how the trials ran, from what they recorded."""
    metas = [t.meta for t in exp.trials if t.meta]
    out = []
    if metas:
        devs = sorted({f"{m.get('device')} ({m.get('threads')} threads)" for m in metas})
        out.append(f"Ran on {', '.join(devs)}; torch {', '.join(sorted({str(m.get('torch')) for m in metas}))}.")
        gpus = sorted({str(m["gpu"]) for m in metas if m.get("gpu") and "cuda" in str(m.get("device"))})
        if gpus:
            cuda = sorted({f"CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}" for m in metas if m.get("gpu")})
            peak = [m["peak_gpu_mem_mb"] for m in metas if m.get("peak_gpu_mem_mb")]
            out.append(f"GPU {', '.join(gpus)} ({', '.join(cuda)})"
                       + (f"; peak GPU memory per trial {min(peak):,.0f}–{max(peak):,.0f} MB." if peak else "."))
    if exp.launches:
        last = exp.launches[-1]
        total = sum(r.get("wall_s", 0) for r in exp.launches if isinstance(r.get("wall_s", 0), (int, float)))
        out.append(f"Launched with `{last.get('command')}` on {last.get('cluster')}; wall time "
                   f"{total:.0f} s over {len(exp.launches)} launch(es).")
        prov = last.get("provenance") or {}
        if prov:
            git = prov.get("git") or {}
            code = (f"code at git {git.get('commit', '?')[:12]}" + (" with uncommitted changes (diff in "
                    "the experiment folder)" if git.get("dirty") else "") if git else "code outside git")
            vers = ", ".join(f"{k} {prov[k]}" for k in ("gridrun", "ray", "python") if prov.get(k))
            gpu = f"; driver {prov['driver']}" if prov.get("driver") else ""
            out.append(f"Provenance: {code}; {vers}{gpu}.")
    return [" ".join(out), ""] if out else []


def report_path(exp: Experiment, reports_dir: str) -> Path:
    """reports/<experiment folder name>.md, with the name made safe: a folder's name can never
    put a report outside reports_dir."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", exp.name).lstrip(".") or "experiment"
    return Path(reports_dir) / f"{safe}.md"


def report(targets: list[str], out: str | None = None, top_k: int | None = None, storage: str = "runs",
           reports_dir: str = "reports", echo=print) -> list[Path]:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise GridrunError(f"--top-k {top_k}: the ensemble size must be a whole number >= 1")
    paths = find_experiments(targets, storage)
    if out and len(paths) > 1:
        raise GridrunError("--out names one file but several experiments were given: drop --out")
    if out and Path(out).is_dir():
        raise GridrunError(f"--out {out} is a folder: give a file name such as {Path(out) / 'report.md'}")
    written, broken = [], []
    for p in paths:
        try:
            exp = load_experiment(p)
        except (GridrunError, OSError) as e:
            if len(paths) == 1:
                raise
            broken.append(f"{p} ({str(e)[:160]})")
            continue
        md = Path(out) if out else report_path(exp, reports_dir)
        try:
            md.parent.mkdir(parents=True, exist_ok=True)
            text = render(exp, md, top_k)
            md.write_text(text)
            write_csv(exp, md.with_suffix(".csv"))
        except OSError as e:
            raise GridrunError(f"cannot write the report to {md} ({e.strerror or e}): choose another --out") from None
        echo(text)
        echo(f"wrote {md}, {md.with_suffix('.csv')}")
        written.append(md)
    if broken:
        raise BrokenExperiments(written, broken)
    return written


class BrokenExperiments(GridrunError):
    """Some experiments could not be read; the others were reported."""

    def __init__(self, written: list[Path], broken: list[str]):
        self.written, self.broken = written, broken
        super().__init__(f"{len(broken)} of {len(written) + len(broken)} experiments could not be read and have no "
                         f"report: {'; '.join(broken)}")


# ---------------------------------------------------------------- gridrun best

def best(target: str, storage: str = "runs", how: str = "text") -> str:
    """The config the report's validation rule chooses (within the spec's budget when it sets
    one), with its mean ± std and n: as text, as a spec-ready YAML block, or as the command that
    retrains its first seed's trial."""
    exp = load_experiment(find_experiments([target], storage)[0])
    summaries = analysis.config_summaries(exp.trials)
    if not summaries:
        raise GridrunError(f"{exp.name} has no finished trial yet: `gridrun status {target}` shows where it is")
    cons = exp.spec.get("constraints") or {}
    chosen, ties = analysis.chosen(summaries, cons)
    if chosen is None:
        budget = " and ".join(w for w in _cons_words(cons) if not w.startswith("mean test"))
        why = ("no trial recorded a validation accuracy (val_size: 0), and test accuracy chooses nothing"
               if not analysis.has_validation(summaries) else f"no config is within {budget}")
        raise GridrunError(f"no config of {exp.name} can be chosen: {why}")
    if how == "command":
        first = min(chosen.members, key=lambda t: (t.config.get("seed", 0), t.name))
        return f"gridrun train --config {_shown_path(first.dir / CONFIG)}"
    budget = [w for w in _cons_words(cons) if not w.startswith("mean test")]
    rule = "highest mean validation accuracy" + (f" among the configs within {' and '.join(budget)}" if budget else "")
    numbers = f"val {_pm(chosen.val)}, test {_pm(chosen.test)}"
    tie = (f"; ties on validation with {'; '.join(t.label for t in ties)} (the first in trial order is shown)"
           if ties else "")
    if how == "yaml":
        return _spec_block(exp, chosen, f"# gridrun best {exp.name}: {chosen.label} ({rule}): {numbers}{tie}")
    return (f"{exp.name}: {chosen.label} (config {chosen.id}), chosen by {rule}{tie}\n"
            f"  {numbers}\n  trials: {', '.join(t.name for t in chosen.members)}")


def _pm(stats: tuple) -> str:
    mean, std, n = stats
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "") + f" (n={n})"


def _shown_path(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _spec_block(exp: Experiment, chosen, comment: str) -> str:
    """A YAML spec that reruns the chosen config with as many seeds: data fields under data:, every
    other config field (not seed, not plumbing) under base:."""
    import yaml

    from .config import NOT_CONFIG
    from .spec import Data

    cfg = {k: v for k, v in chosen.config.items() if k not in NOT_CONFIG}
    data = {k: cfg.pop(k) for k in list(cfg) if k in Data.model_fields}
    seeds = sorted({t.config.get("seed", 0) for t in chosen.members})
    spec = {"name": f"{exp.name}-best", "data": data, "base": cfg,
            "seeds": seeds if seeds != list(range(len(seeds))) else len(seeds)}
    return comment + "\n" + yaml.safe_dump(spec, sort_keys=False, default_flow_style=False).rstrip()
