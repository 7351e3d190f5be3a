"""`gridrun status [NAME]`: a grid at a glance, from its files only (never Ray), so it works from
any terminal or node that sees the storage, also while the launch runs."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .errors import GridrunError
from . import analysis, study
from .progress import dur as _dur, eta_s  # one duration format and one ETA for status and the launch's line
from .results import find_experiments, load_experiment
from .storage.layout import ExperimentDir, TrialDir, finite_number
from .storage.safeio import Unreadable

ORDER = ("running", "pending", "finished", "diverged", "pruned", "failed", "stopped", "unfinished", "broken")


def _pick(name: str | None, storage: str) -> Path:
    if name:
        p = Path(name)
        return p if p.is_dir() and ExperimentDir(p).is_experiment() else find_experiments([name], storage)[0]
    found = find_experiments([], storage)
    return max(found, key=lambda p: p.stat().st_mtime)


def snapshot(path: Path) -> dict:
    """What the folder says now: counts, running trials, elapsed time, ETA, best config."""
    exp = load_experiment(path)  # the one reader: a trial broken for the report is broken here
    holder = ExperimentDir(path).lock_holder()
    now = time.time()
    rows = []
    for t in exp.trials:
        status = t.status
        epoch_s = t.epoch_seconds
        if status == "unfinished":
            recent = now - t.updated_at() < 3 * (epoch_s[-1] if epoch_s else 60) + 60
            status = "running" if holder and recent else "pending" if holder else "unfinished"
        elif status == "pending" and not holder:
            status = "pending"
        rows.append({"trial": t.name, "status": status, "epoch": len(t.history), "epochs": t.config.get("epochs"),
                     "val_acc": t.final.get("val_acc"), "images_per_s": t.final.get("images_per_s"),
                     "seconds_per_epoch": float(np.mean(epoch_s)) if epoch_s else None,
                     "updated_s_ago": round(now - t.updated_at(), 1) if t.dir else None, "reason": t.reason,
                     "group": t.group})
    counts = {s: sum(r["status"] == s for r in rows) for s in ORDER}
    if not counts["pruned"]:  # a grid without rungs says what it always said
        del counts["pruned"]
    per_epoch = [r["seconds_per_epoch"] for r in rows if r["seconds_per_epoch"]]
    startup, per_report = _tune_times(exp)
    epoch_s = per_report or (float(np.median(per_epoch)) if per_epoch else None)
    todo = [r for r in rows if r["status"] in ("running", "pending")]
    # each trial still to run: its epochs left, and its start-up when it has not reported yet
    left = [(max(0, (r["epochs"] or 0) - r["epoch"]), (startup or 0.0) if r["epoch"] == 0 else 0.0) for r in todo]
    eta = eta_s(left, epoch_s, counts["running"]) if epoch_s and holder else None
    launches = exp.launches
    elapsed = now - holder["since"] if holder and finite_number(holder.get("since")) else \
        sum(l.get("wall_s", 0) for l in launches if isinstance(l.get("wall_s"), (int, float)))
    return {"experiment": exp.name, "folder": str(path), "launch": holder, "trials": len(rows), "counts": counts,
            "running": [r for r in rows if r["status"] == "running"],
            "problems": [r for r in rows if r["status"] in ("failed", "broken", "diverged")],
            "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1) if eta is not None else None,
            "seconds_per_epoch": round(epoch_s, 2) if epoch_s else None,
            "startup_s": round(startup, 1) if startup is not None else None,
            **_bests(study.shown(exp)[0]), "problems_experiment": exp.problems}  # a study: its confirmation


def _bests(exp) -> dict:
    """{"best": ...}, or with several datasets {"best": None, "best_by_dataset": {dataset: ...}}: a
    config is never the best over another dataset's."""
    sets = exp.datasets()
    if len(sets) == 1:
        return {"best": _best(analysis.analyse(exp))}
    return {"best": None, "best_by_dataset": {ds: _best(analysis.analyse(exp.view(ds))) for ds in sets}}


def _tune_times(exp) -> tuple[float | None, float | None]:
    """(start-up, seconds per epoch) as Ray timed the trials in their result.json: a launch's
    first report of a trial comes after its start-up and one epoch; the others, one epoch
    apart, evaluation and checkpoint included (metrics.csv's seconds are the training alone)."""
    first, later = [], []
    for d in {t.dir.parent if t.group else t.dir for t in exp.trials if t.dir is not None}:
        try:  # bounded, regular files only, like every file the reader opens
            reports = TrialDir(d).read_tune_results()
        except (Unreadable, OSError):
            continue
        for r in reports:
            s = r.get("time_this_iter_s")
            if isinstance(s, (int, float)) and math.isfinite(s):
                (first if r.get("iterations_since_restore") == 1 else later).append(float(s))
    epoch = float(np.median(later)) if later else None
    startup = max(0.0, float(np.median(first)) - (epoch or 0.0)) if first else None
    return startup, epoch


def _best(a: analysis.Analysis) -> dict | None:
    """The best config so far by mean validation accuracy over its finished seeds (analysis.py's
    rule, over every config: no budget), as JSON; None when no finished trial recorded one."""
    best = a.best
    if best is None:
        return None
    mean, std, n = best.val
    return {"config": {k: best.config.get(k) for k in ["model", *a.varying] if k in best.config},
            "config_id": best.id, "label": best.label, "val_acc_mean": mean, "val_acc_std": std, "n": n,
            "trials": [m.name for m in best.members], "ties": [t.label for t in a.best_ties]}


def strict_json(obj) -> str:
    """JSON that every parser reads: NaN and infinities as null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
    return json.dumps(clean(obj), allow_nan=False)


def render(snap: dict) -> str:
    c = snap["counts"]
    who = snap["launch"]
    head = (f"{snap['experiment']} ({snap['folder']}): " + (f"launch running (pid {who.get('pid')} on {who.get('host')})"
            if who else "no launch running") + f"; {snap['trials']} trials: "
            + ", ".join(f"{v} {k}" for k, v in c.items() if v))
    lines = [head]
    for r in snap["running"]:
        va = f"{r['val_acc']:.4f}" if finite_number(r["val_acc"]) else "-"
        ips = f"{r['images_per_s']:,.0f} img/s" if r["images_per_s"] else "- img/s"
        lines.append(f"  running {r['trial']:<40} epoch {r['epoch']:>3}/{r['epochs']}  val acc {va}  {ips}"
                     f"  (updated {_dur(r['updated_s_ago'])} ago)")
    for r in snap["problems"][:10]:
        lines.append(f"  {r['status']:<8} {r['trial']:<40} {r['reason'][:80]}")
    for line in snap["problems_experiment"][:5]:
        lines.append(f"  unreadable: {line[:120]}")
    time_line = f"  elapsed {_dur(snap['elapsed_s'])}"
    if snap["eta_s"] is not None:
        startup = f"start-up {snap['startup_s']:.0f} s + " if snap.get("startup_s") is not None else ""
        time_line += (f"; ETA {_dur(snap['eta_s'])} (from {startup}{snap['seconds_per_epoch']} s per epoch as measured, "
                      f"{max(1, c['running'])} at a time)")
    lines.append(time_line)
    bests = snap.get("best_by_dataset") or {"": snap["best"]}
    for ds, b in bests.items():
        if b:
            spread = f" ± {100 * b['val_acc_std']:.2f}" if b["val_acc_std"] is not None else ""
            cfg = ", ".join(f"{k}={v}" for k, v in b["config"].items())
            lines.append(f"  best config so far by validation{f' on {ds}' if ds else ''}: {cfg}: val "
                         f"{100 * b['val_acc_mean']:.2f}{spread} (n={b['n']})"
                         + (f"; ties with {'; '.join(b['ties'])}" if b["ties"] else ""))
    return "\n".join(lines)


def status(name: str | None = None, storage: str = "runs", watch: bool = False, as_json: bool = False,
           every_s: float = 5.0, out=print, tty: bool | None = None) -> int:
    """Print the grid's state once, or (watch) until it is done: on a terminal each refresh
    redraws the previous block in place; in a log or a pipe the blocks follow each other."""
    path = _pick(name, storage)
    tty = (out is print and sys.stdout.isatty()) if tty is None else tty
    rows = 0  # terminal rows the previous block took
    while True:
        snap = snapshot(path)
        text = strict_json(snap) if as_json else render(snap)
        if watch and tty and not as_json:
            out((f"\x1b[{rows}F\x1b[J" if rows else "") + text)  # up to the block's first row, clear below
            rows = _rows(text)
        else:
            out(text)
        if not watch or (snap["launch"] is None and not snap["counts"]["running"]):
            return 0
        try:
            time.sleep(every_s)
        except KeyboardInterrupt:
            return 0
        if not as_json and not tty:
            out("")


def _rows(text: str) -> int:
    """Terminal rows `text` takes, long lines wrapping at the terminal's width."""
    cols = max(1, shutil.get_terminal_size().columns)
    return sum(max(1, -(-len(line) // cols)) for line in text.split("\n"))


__all__ = ["snapshot", "render", "status", "GridrunError"]
