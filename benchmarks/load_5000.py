"""Reading a 5,000-trial experiment (status, load, report) and planning a 5,000-trial launch, against their targets.

Issue 31, build 7.
Builds runs-like folder of 5,000 trials from one real trial's files (trained here for 1 epoch on
a 600-image subset; its logits, labels and weights hard-linked, its config, summary and metrics
rewritten per trial with varied names, learning rates, weight decays, batch sizes, seeds and
accuracies), then times, each in a fresh process as a user runs them:

    gridrun status EXP            target <= 5 s
    gridrun.load(EXP)             target <= 5 s
    gridrun report EXP            target <= 60 s

and runs a launch of a grid of as many trials (whole seeds of its 200 combinations) up to its
manifest (plan, lock, manifest; stopped before Ray is joined): its peak RSS above the imports.

    python -m benchmarks load_5000 [--trials 5000] [--keep DIR]

No alternative is timed here: each figure is set against its target (the rows' baseline).
The launch's peak RSS is set against what its imports alone hold.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gridrun.storage.layout import (CONFIG, LAUNCHES, MANIFEST, METRICS, MODEL, PARAMS, RESULT, SPEC_COPY, SPLITS, SUMMARY, labels_file, logits_file)

from . import child_env

LRS = [0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002]
WDS = [0.0, 1e-5, 1e-4, 5e-4, 1e-3]
BATCHES = [32, 64, 128, 256]
BIG = (*map(logits_file, SPLITS), *map(labels_file, SPLITS), MODEL)  # hard-linked, not rewritten


def template(work: Path, data_dir: str | None) -> Path:
    """One real trial: tinynet_7k, 1 epoch on 600 training images, all of MNIST's test set."""
    from gridrun.train import train

    out = work / "template"
    train({"model": "tinynet_7k", "epochs": 1, "subset": 600, "val_size": 5000, "augment": "none",
           "data_dir": data_dir, "out_dir": str(out)})
    return out


def grid(n: int) -> list[dict]:
    """n (lr, weight decay, batch, seed) combinations, seeds varying fastest."""
    combos = [(lr, wd, b) for lr in LRS for wd in WDS for b in BATCHES]
    seeds = -(-n // len(combos))
    return [{"lr": lr, "weight_decay": wd, "batch_size": b, "seed": s}
            for lr, wd, b in combos for s in range(seeds)][:n]


def build(exp: Path, tpl: Path, n: int) -> None:
    """The experiment folder: manifest, spec copy, launch record and n trial folders."""
    from gridrun.identity import trial_id

    cfg0 = json.loads((tpl / CONFIG).read_text())
    summary0 = json.loads((tpl / SUMMARY).read_text())
    with open(tpl / METRICS, newline="") as f:
        rows0 = list(csv.DictReader(f))
    exp.mkdir(parents=True)
    manifest = []
    for i, v in enumerate(grid(n)):
        name = f"tinynet_7k_lr{v['lr']}_wd{v['weight_decay']}_b{v['batch_size']}_s{v['seed']}"
        d = exp / name
        d.mkdir()
        for f in BIG:  # the same bytes for every trial: test accuracy rechecks stay true
            os.link(tpl / f, d / f)
        cfg = {**cfg0, **v, "out_dir": str(d)}
        (d / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        bump = (i % 97) / 1e4  # a varied validation accuracy (validation logits are not rechecked)
        rows = [{**r, "val_acc": f"{float(r['val_acc']) - bump:.6f}"} for r in rows0]
        with open(d / METRICS, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows0[0]))
            w.writeheader()
            w.writerows(rows)
        final = {**summary0["final"], "val_acc": float(rows[-1]["val_acc"])}
        (d / SUMMARY).write_text(json.dumps({**summary0, "final": final}, indent=2, sort_keys=True))
        (d / PARAMS).write_text(json.dumps({"unit": {"name": name}}))  # what Ray leaves beside them
        (d / RESULT).write_text(json.dumps({"epoch": 2, "val_acc": final["val_acc"]}) + "\n")
        train = {k: x for k, x in cfg.items() if k not in ("_meta", "out_dir")}
        manifest.append({"name": name, "id": trial_id(train), "axes": {k: v[k] for k in ("lr", "weight_decay",
                         "batch_size")}, "params": cfg0["_meta"]["params"], "train": train, "group": None})
    (exp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (exp / SPEC_COPY).write_text(json.dumps({"name": exp.name, "grid": {"lr": LRS, "weight_decay": WDS,
                                                                        "batch_size": BATCHES}}))
    (exp / LAUNCHES).write_text(json.dumps({"command": "gridrun launch bench.yaml", "wall_s": 1.0,
                                                            "exit": 0, "finished_at": time.time()}) + "\n")


def timed(cmd: list[str], env: dict) -> tuple[float, str, str | None]:
    """Wall seconds, stdout, and the failure (exit code and the output's end) if it failed."""
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    err = f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}" if p.returncode else None
    return wall, p.stdout, err


# Peak RSS from VmHWM: getrusage's ru_maxrss survives exec on Linux, so a child started by this
# (large) benchmark process would report the parent's peak as its own.
LAUNCH_5000 = r'''
import json, re, sys, time
def rss(): return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1]) / 1024
import gridrun.launch as L, gridrun.spec, gridrun.models  # the imports a launch needs anyway
base = rss()
class Stop(Exception): pass
def stop(*a, **k): raise Stop()
L._connect = stop  # stop where Ray would be joined: planned, locked, manifest written
t = time.perf_counter()
try:
    L.launch(sys.argv[1], storage=sys.argv[2], out=lambda *a: None)
except Stop:
    pass
print(json.dumps({"imports_mib": base, "peak_mib": rss(), "seconds": time.perf_counter() - t}))
'''


def launch_5000(work: Path, data_dir: str | None, env: dict, n: int) -> dict:
    seeds = -(-n // (len(LRS) * len(WDS) * len(BATCHES)))  # 25 for 5,000 trials
    spec = work / "bench5000.yaml"
    import yaml

    spec.write_text(yaml.safe_dump({"name": "bench5000", "data": {"subset": 600, "data_dir": data_dir},
                                    "base": {"model": "tinynet_7k", "epochs": 2},
                                    "grid": {"lr": LRS, "weight_decay": WDS, "batch_size": BATCHES}, "seeds": seeds}))
    _, out, err = timed([sys.executable, "-c", LAUNCH_5000, str(spec), str(work / "launch_runs")], env)
    res = {**(json.loads(out.strip().splitlines()[-1]) if out.strip() else {}), "error": err}
    manifest = work / "launch_runs" / "bench5000" / MANIFEST
    res["manifest_trials"] = len(json.loads(manifest.read_text())) if manifest.exists() else 0
    return res


def add_args(ap) -> None:
    ap.add_argument("--trials", type=int, default=5000)
    ap.add_argument("--keep", default=None, help="build the folder here and keep it (default: a temp folder)")
    ap.add_argument("--reuse", action="store_true", help="with --keep: time the folder built by an earlier run")


def readers(exp: Path, work: Path, env: dict, cfg: dict, bench) -> None:
    """status, gridrun.load and report, each in a fresh process, against their targets."""
    py = [sys.executable, "-m", "gridrun.cli"]
    for what, cmd, target in [
            ("gridrun status", py + ["status", str(exp)], 5),
            ("gridrun.load", [sys.executable, "-c", f"import gridrun; gridrun.load({str(exp)!r})"], 5),
            ("gridrun report", py + ["report", str(exp), "--out", str(work / "load5000.md")], 60)]:
        s, _, err = timed(cmd, env)
        bench.row("seconds (fresh process, imports included)", s, "s", variant=what, config=cfg, wall_s=s,
                  baseline=f"target {target} s", baseline_value=target, note=err)


def planner(work: Path, data_dir: str | None, env: dict, cfg: dict, bench) -> None:
    """A launch of the grid up to its manifest: seconds and peak RSS."""
    res = launch_5000(work, data_dir, env, cfg["trials"])
    cfg = {**cfg, "manifest_trials": res.get("manifest_trials", 0), "imports_mib": round(res.get("imports_mib", 0)),
           "peak_mib": round(res.get("peak_mib", 0))}
    bench.row("seconds up to the manifest", res.get("seconds"), "s", variant="gridrun launch", config=cfg,
              wall_s=res.get("seconds"), note=res.get("error"))
    grid = res["peak_mib"] - res["imports_mib"] if "peak_mib" in res else None
    bench.row("peak RSS above the imports", grid, "MiB", variant="gridrun launch", config=cfg,
              note="target: a few hundred MB")


def run(a, bench) -> None:
    data_dir = os.environ.get("GRIDRUN_DATA")
    env = {**child_env(), "GRIDRUN_NO_DOWNLOAD": "1"}
    work = Path(a.keep or tempfile.mkdtemp(prefix="gridrun-load5000-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        exp = work / "runs" / "load5000"
        if not (a.reuse and exp.is_dir()):
            shutil.rmtree(exp, ignore_errors=True)
            build(exp, template(work, data_dir), a.trials)
            print(f"built {a.trials:,} trials from one real trial in {time.perf_counter() - t:.1f}s: {exp}", flush=True)
        shutil.rmtree(work / "launch_runs", ignore_errors=True)
        cfg = {"trials": a.trials}
        readers(exp, work, env, cfg, bench)
        planner(work, data_dir, env, cfg, bench)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
