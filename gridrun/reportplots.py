"""The report's figures (matplotlib, headless): accuracy per hyperparameter, validation curves and
accuracy against parameter count, drawn from analysis.py's config summaries."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import analysis
from .identity import value_text, varying_of


def plots(a: analysis.Analysis, out_md: Path) -> list[str]:
    """The report's figures, written beside `out_md`; returns their file names. A figure that
    would say nothing (parameters when every config has the same count, validation curves
    without a validation value) is not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not a.summaries:
        return []
    stem = out_md.stem
    figures = [(_hparams_plot, f"{stem}_hparams.png"), (_curves_plot, f"{stem}_curves.png"),
               (_params_plot, f"{stem}_params.png")]
    names = []
    for draw, name in figures:
        path = out_md.with_name(name)
        if draw(plt, a, path):
            names.append(name)
        else:
            path.unlink(missing_ok=True)  # an earlier report's figure that no longer applies
    return names


def _bar(stats: tuple) -> tuple[float, float]:
    """A (mean, std, n) of accuracies as a point and an error bar in percent (one seed: no bar)."""
    mean, std, _ = stats
    return 100 * mean, 100 * (std or 0.0)


LOG_AXES = ("lr", "weight_decay")  # spread over decades: equal ratios get equal room
SAMPLED = 8  # a numeric field with more distinct values was sampled: matplotlib's ticks (decades on a log axis)


def _hparams_plot(plt, a: analysis.Analysis, path: Path) -> bool:
    """Validation accuracy (mean ± std over seeds, one point per config) against each field
    the grid varies: a subplot per field, categories for text and choices, log axes for lr and
    weight decay."""
    scored = [s for s in a.summaries if s.val_mean is not None]
    fields = varying_of([s.members[0].trial.canonical for s in scored])[:12]  # among the configs drawn
    if not fields:
        return False
    cols = min(3, len(fields))
    rows = -(-len(fields) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.5, 4.2 * cols), 3.4 * rows + 0.4), squeeze=False)
    models = sorted({s.model for s in scored})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for ax, field in zip(axes.flat, fields):
        _hparam_axis(ax, field, scored, colors if len(models) > 1 else None)
    for ax in list(axes.flat)[len(fields):]:
        ax.set_visible(False)
    if len(models) > 1:
        axes.flat[0].legend(handles=[plt.Line2D([], [], marker="o", ls="", color=colors[m], label=m) for m in models],
                            fontsize=7)
    fig.suptitle(f"{a.experiment}: validation accuracy against each varying field\n(mean ± std over seeds, "
                 f"one point per config)", fontsize=10)
    return _save(plt, fig, path)


def _hparam_axis(ax, field: str, scored: list[analysis.ConfigSummary], colors: dict | None) -> None:
    from matplotlib.ticker import NullFormatter

    values = [s.config.get(field) for s in scored]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    log = numeric and field in LOG_AXES and all(v > 0 for v in values)
    sampled = numeric and len(set(values)) > SAMPLED
    if numeric:  # ticks at the grid's own values, written as in the spec; decades for sampled values
        xs = [float(v) for v in values]
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # the decades' minor labels collide
        ticks = sorted(set(xs))
        if not sampled:
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks], fontsize=7)
    else:  # categories, in sorted order, at 0, 1, 2, ...
        cats = sorted({value_text(v) for v in values})
        xs = [cats.index(value_text(v)) for v in values]
        crowded = sum(map(len, cats)) > 40
        ax.set_xticks(range(len(cats)), cats, fontsize=7, rotation=30 if crowded else 0, ha="right" if crowded else "center")
        ax.set_xlim(-0.5, len(cats) - 0.5)
    offsets = [0.0] * len(xs) if sampled else _dodge([math.log10(x) for x in xs] if log else xs, numeric and not log)
    for x, dx, s in zip(xs, offsets, scored):  # sampled values are read where they are: no sideways offsets
        mean, std = _bar(s.val)
        color = colors[s.model] if colors else "tab:blue"
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


def _curves_plot(plt, a: analysis.Analysis, path: Path) -> bool:
    """Validation curves of the five best configs by validation: the mean over seeds, with a
    band of ± one std across them."""
    from matplotlib.ticker import MaxNLocator

    with_val = [s for s in a.summaries if s.val_mean is not None
                and all(t.final.get("val_acc") is not None for t in s.members)]
    ranked = sorted(with_val, key=lambda s: -s.val_mean)[:5]
    if not ranked:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in ranked:
        g = s.members
        n_ep = min(len(t.history) for t in g)
        acc = 100 * np.array([[h["val_acc"] for h in t.history[:n_ep]] for t in g], dtype=float)
        epochs = np.arange(1, n_ep + 1)
        line, = ax.plot(epochs, acc.mean(0), marker=".", label=f"{s.label} (n={len(g)})")
        if len(g) > 1:
            sd = acc.std(0, ddof=1)
            ax.fill_between(epochs, acc.mean(0) - sd, acc.mean(0) + sd, color=line.get_color(), alpha=0.2, lw=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(plt, fig, ax, "epoch", "validation accuracy, % (mean ± std over seeds)",
                   f"{a.experiment}: validation curves of the best configs (by validation)", path) is not None


def _params_plot(plt, a: analysis.Analysis, path: Path) -> bool:
    """Test accuracy against parameter count, one point per config; only when the configs'
    counts differ (one count would stack every point on one vertical line)."""
    if len({s.params for s in a.summaries}) < 2:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted({s.model for s in a.summaries})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for s in a.summaries:
        if s.test[0] is not None:
            mean, std = _bar(s.test)
            ax.errorbar(s.params or 0, mean, yerr=std, fmt="o", color=colors[s.model], capsize=3, alpha=0.8)
    for m in models:
        ax.plot([], [], "o", color=colors[m], label=m)
    return _finish(plt, fig, ax, "parameters", "test accuracy, % (mean ± std over seeds)",
                   f"{a.experiment}: test accuracy against parameters (one point per config)", path) is not None


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
