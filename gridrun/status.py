"""`gridrun status [NAME]`: a grid at a glance, from its files only (never Ray), so it works from
any terminal or node that sees the storage, also while the launch runs."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from .errors import GridrunError
from .config import NOT_CONFIG
from .results import find_experiments, is_experiment, load_experiment, lock_holder

ORDER = ("running", "pending", "finished", "diverged", "failed", "stopped", "unfinished", "broken")


def _pick(name: str | None, storage: str) -> Path:
    if name:
        p = Path(name)
        return p if p.is_dir() and is_experiment(p) else find_experiments([name], storage)[0]
    found = find_experiments([], storage)
    return max(found, key=lambda p: p.stat().st_mtime)


def snapshot(path: Path) -> dict:
    """What the folder says now: counts, running trials, elapsed time, ETA, best config."""
    exp = load_experiment(path, logits=False)
    holder = lock_holder(path)
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
    per_epoch = [r["seconds_per_epoch"] for r in rows if r["seconds_per_epoch"]]
    left = sum(max(0, (r["epochs"] or 0) - r["epoch"]) for r in rows if r["status"] in ("running", "pending"))
    parallel = max(1, counts["running"])
    eta = left * float(np.median(per_epoch)) / parallel if per_epoch and holder else None
    launches = exp.launches
    elapsed = now - holder["since"] if holder and holder.get("since") else \
        sum(l.get("wall_s", 0) for l in launches if isinstance(l.get("wall_s"), (int, float)))
    return {"experiment": exp.name, "folder": str(path), "launch": holder, "trials": len(rows), "counts": counts,
            "running": [r for r in rows if r["status"] == "running"],
            "problems": [r for r in rows if r["status"] in ("failed", "broken", "diverged")],
            "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1) if eta is not None else None,
            "seconds_per_epoch": round(float(np.median(per_epoch)), 2) if per_epoch else None,
            "best": _best(exp)}


def _best(exp) -> dict | None:
    """The best config so far by mean validation accuracy over its finished seeds."""
    groups: dict[str, list] = {}
    for t in exp.trials:
        if t.status == "finished" and t.final.get("val_acc") is not None:
            groups.setdefault(t.group_key(), []).append(t)
    if not groups:
        return None
    key, members = max(groups.items(), key=lambda kv: float(np.mean([m.final["val_acc"] for m in kv[1]])))
    cfgs = [g[0].config for g in groups.values()]
    varying = sorted(k for k in members[0].config if k not in NOT_CONFIG
                     and len({json.dumps(c.get(k), sort_keys=True) for c in cfgs}) > 1)
    val = [m.final["val_acc"] for m in members]
    return {"config": {k: members[0].config.get(k) for k in ["model", *varying] if k in members[0].config},
            "val_acc_mean": float(np.mean(val)), "val_acc_std": float(np.std(val, ddof=1)) if len(val) > 1 else None,
            "n": len(val), "trials": [m.name for m in members]}


def _dur(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def render(snap: dict) -> str:
    c = snap["counts"]
    who = snap["launch"]
    head = (f"{snap['experiment']} ({snap['folder']}): " + (f"launch running (pid {who.get('pid')} on {who.get('host')})"
            if who else "no launch running") + f"; {snap['trials']} trials: "
            + ", ".join(f"{v} {k}" for k, v in c.items() if v))
    lines = [head]
    for r in snap["running"]:
        va = f"{r['val_acc']:.4f}" if r["val_acc"] is not None else "-"
        ips = f"{r['images_per_s']:,.0f} img/s" if r["images_per_s"] else "- img/s"
        lines.append(f"  running {r['trial']:<40} epoch {r['epoch']:>3}/{r['epochs']}  val acc {va}  {ips}"
                     f"  (updated {_dur(r['updated_s_ago'])} ago)")
    for r in snap["problems"][:10]:
        lines.append(f"  {r['status']:<8} {r['trial']:<40} {r['reason'][:80]}")
    time_line = f"  elapsed {_dur(snap['elapsed_s'])}"
    if snap["eta_s"] is not None:
        time_line += (f"; ETA {_dur(snap['eta_s'])} (from {snap['seconds_per_epoch']} s per epoch, "
                      f"{max(1, c['running'])} at a time)")
    lines.append(time_line)
    b = snap["best"]
    if b:
        spread = f" ± {100 * b['val_acc_std']:.2f}" if b["val_acc_std"] is not None else ""
        cfg = ", ".join(f"{k}={v}" for k, v in b["config"].items())
        lines.append(f"  best config so far by validation: {cfg}: val {100 * b['val_acc_mean']:.2f}{spread} "
                     f"(n={b['n']})")
    return "\n".join(lines)


def status(name: str | None = None, storage: str = "runs", watch: bool = False, as_json: bool = False,
           every_s: float = 5.0, out=print) -> int:
    path = _pick(name, storage)
    while True:
        snap = snapshot(path)
        out(json.dumps(snap, default=str) if as_json else render(snap))
        if not watch or (snap["launch"] is None and not snap["counts"]["running"]):
            return 0
        try:
            time.sleep(every_s)
        except KeyboardInterrupt:
            return 0
        if not as_json:
            out("")


__all__ = ["snapshot", "render", "status", "GridrunError"]
