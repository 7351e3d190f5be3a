"""Search at equal wall time: gridrun random vs gridrun TPE + rungs in fused groups vs Ray Tune OptunaSearch + ASHA.

One search space for tinynet_7k (SPACE: lr, weight decay, label smoothing, batch size,
augmentation) on a stratified MNIST subset. Each method runs in its own process for the same
wall-time budget, Ray's start included, once per sampler seed; the methods take turns within
each seed so the machine's load falls on all of them alike (the load average is recorded beside
each run). Every (trial, epoch) validation accuracy a method produced is read back with its
wall-clock time (gridrun: the TensorBoard scalars in each trial folder; Tune: the time its
train function reported, in each trial's result.json), which gives best-so-far validation
accuracy against wall time. Rows, per seed and over the seeds: the best validation accuracy
within the budget and the seconds to --target, each against Ray Tune's.

    GRIDRUN_DATA=../shared/data/mnist nice python -m benchmarks search --out search.jsonl --trace search.json
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import BenchError, child_env

SPACE = {  # gridrun's distribution notation; Tune's space is made from it (_search_tune.param_space)
    "lr": {"loguniform": [0.01, 1.0]},
    "weight_decay": {"loguniform": [1e-5, 1e-2]},
    "label_smoothing": {"uniform": [0.0, 0.2]},
    "batch_size": {"choice": [32, 64, 128, 256]},
    "augment": {"choice": ["none", "rotate", "rotate+affine"]},
}
BASE = {"model": "tinynet_7k", "optimizer": "sgd", "scheduler": "onecycle", "seed": 0}
LABELS = {"random": "(a) gridrun random", "tpe": "(b) gridrun TPE + rungs", "tune": "(c) Ray Tune Optuna + ASHA"}
BASELINE = "tune"
GRACE_S = 60  # after the budget: seconds a method gets to stop on SIGINT before its processes are killed


def add_args(ap) -> None:
    ap.add_argument("--budget", type=float, default=240, help="wall seconds per method and seed (Ray start included)")
    ap.add_argument("--seeds", default="0,1,2", help="sampler seeds, joined with ','")
    ap.add_argument("--methods", default="random,tpe,tune", help=f"of {','.join(LABELS)}, joined with ','")
    ap.add_argument("--target", type=float, default=0.97, help="the validation accuracy timed (fraction)")
    ap.add_argument("--images", type=int, default=6000, help="MNIST training images the search sees (stratified)")
    ap.add_argument("--val-size", type=int, default=2000, help="of those, held out for validation (the objective)")
    ap.add_argument("--test-images", type=int, default=1000,
                    help="MNIST test images (never used to choose; the trainer scores them every epoch)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rungs", default="2,4", help="(b)'s rung epochs; ASHA's grace period is the first")
    ap.add_argument("--keep", type=float, default=0.5, help="(b): fraction kept at a rung; ASHA's factor is 1/keep")
    ap.add_argument("--samples", type=int, default=400, help="configs each method may try (a budget in trials; the "
                                                                  "default is more than --budget trains here)")
    ap.add_argument("--fuse", type=int, default=4, help="fused group size of (a) and (b) (and (b)'s K asked at once)")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed after)")
    ap.add_argument("--trace", default=None, help="write every method's observations and curves to this JSON file")
    ap.add_argument("--plot", default=None, help="draw best-so-far validation accuracy against wall time to this PNG")
    ap.add_argument("--from-trace", default=None, metavar="TRACE_JSON",
                    help="run nothing: the rows, tables and plot from a trace a run wrote (--budget/--target may differ)")


def run(a, bench) -> None:
    methods, seeds = _choices(a)
    if a.from_trace:
        return report(json.loads(Path(a.from_trace).read_text())["runs"], a, bench)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gridrun-search-"))
    runs = []
    try:
        data = subset_data(a, work / "mnist")
        for seed in seeds:
            for m in methods:  # take turns: load that drifts over the run falls on every method
                runs.append(run_method(m, seed, a, work, data))
                print(f"search: {LABELS[m]} seed {seed}: {len(runs[-1]['obs'])} epochs scored, best "
                      f"{best_at(runs[-1]['obs'], a.budget) or 0:.4f}, load {runs[-1]['load']}", flush=True)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    if a.trace:
        Path(a.trace).write_text(json.dumps(trace(runs, a), indent=1) + "\n")
    report(runs, a, bench)


def report(runs: list[dict], a, bench) -> None:
    """The rows, the two markdown tables, the plot."""
    for r in rows(runs, a.budget, a.target):
        bench.row(**r)
    print(markdown(runs, a.budget, a.target), flush=True)
    if a.plot:
        plot(runs, a.budget, a.target, a.plot)


def _choices(a) -> tuple[list[str], list[int]]:
    """--methods and --seeds checked: one line naming the bad value."""
    methods = [m for m in a.methods.split(",") if m]
    bad = [m for m in methods if m not in LABELS]
    if bad or not methods:
        raise BenchError(f"--methods: {bad[0] if bad else 'none'} is not one of {', '.join(LABELS)}")
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        raise BenchError(f"--seeds {a.seeds!r}: whole numbers joined with ',', e.g. 0,1,2") from None
    if not 0 < a.target <= 1:
        raise BenchError(f"--target {a.target}: a validation accuracy as a fraction, e.g. 0.97")
    return methods, seeds


# ---- the three methods: each one process, stopped at the budget ------------------------------------

def subset_data(a, folder: Path) -> Path:
    """The benchmark's MNIST: --images training images (stratified, fixed) and the first
    --test-images test images, as IDX files every method reads (small files: each trial's
    set-up and per-epoch scoring cost what the search needs, not 70,000 images)."""
    from gridrun.data import load_arrays, stratified_split, write_idx

    arr = load_arrays()  # $GRIDRUN_DATA, else gridrun's cache
    if not 0 < a.val_size < a.images <= len(arr["train_labels"]) or not 0 < a.test_images <= len(arr["test_labels"]):
        raise BenchError(f"--images {a.images}, --val-size {a.val_size}, --test-images {a.test_images}: need "
                         f"0 < val-size < images <= {len(arr['train_labels'])} and test-images <= "
                         f"{len(arr['test_labels'])}")
    _, pick = stratified_split(arr["train_labels"], a.images, 0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, x in (("train-images-idx3-ubyte", arr["train_images"][pick]), ("train-labels-idx1-ubyte",
                    arr["train_labels"][pick]), ("t10k-images-idx3-ubyte", arr["test_images"][:a.test_images]),
                    ("t10k-labels-idx1-ubyte", arr["test_labels"][:a.test_images])):
        write_idx(folder / name, x)
    return folder


def base(a, data: Path) -> dict:
    """The fixed part of every config (what the space does not search)."""
    return {**BASE, "epochs": a.epochs, "data_dir": str(data), "val_size": a.val_size, "device": "cpu"}


def gridrun_spec(method: str, seed: int, a, data: Path) -> dict:
    """(a) random: the distribution axes and `samples`; (b) the same space as a TPE study, its
    fused groups pruned at the rungs (`prune:`)."""
    b = base(a, data)
    spec = {"name": f"{method}_s{seed}", "data": {"val_size": b.pop("val_size"), "data_dir": b.pop("data_dir")},
            "base": {k: v for k, v in b.items() if k != "seed"}, "grid": SPACE, "seeds": [b["seed"]],
            "resources": {"cpu": 1}, "fuse": a.fuse}
    if method == "random":  # more draws than a budget here trains: the budget stops it
        return {**spec, "samples": a.samples, "sample_seed": seed}
    return {**spec, "search": {"sampler": "tpe", "trials": a.samples, "seed": seed},
            **({"prune": {"rungs": _rungs(a), "keep": a.keep}} if _rungs(a) else {})}


def _rungs(a) -> list[int]:
    try:
        return [int(e) for e in a.rungs.split(",") if e]
    except ValueError:
        raise BenchError(f"--rungs {a.rungs!r}: epochs joined with ',', e.g. 2,4") from None


def tune_job(seed: int, a, data: Path, storage: Path, deadline: float) -> dict:
    """What (c)'s script needs: ASHA's grace period and factor match (b)'s first rung and keep."""
    return {"space": SPACE, "base": base(a, data), "seed": seed, "samples": a.samples, "deadline": deadline,
            "storage": str(storage),
            "grace_period": _rungs(a)[0] if _rungs(a) else 1, "reduction_factor": 1 / a.keep}


def run_method(method: str, seed: int, a, work: Path, data: Path) -> dict:
    """Run one method for --budget wall seconds from its process's start; its observations."""
    where = work / f"{method}_s{seed}"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    t0 = time.time()
    if method == "tune":
        job = where / "job.json"
        job.write_text(json.dumps(tune_job(seed, a, data, where, t0 + a.budget)))
        cmd = [sys.executable, "-m", "benchmarks._search_tune", str(job)]
    else:
        spec = where / "spec.yaml"
        spec.write_text(yaml.safe_dump(gridrun_spec(method, seed, a, data), sort_keys=False))
        cmd = [sys.executable, "-m", "gridrun.cli", "launch", str(spec), "--storage", str(where / "runs")]
    load0 = os.getloadavg()[0]
    rc = stopped(cmd, where / "log.txt", t0 + a.budget)
    if rc not in (0, 130, -signal.SIGINT):  # neither finished nor stopped at the budget: say why
        tail = (where / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
        print(f"search: {method} seed {seed} exited with {rc}:", *tail, sep="\n  ", flush=True)
    obs = tune_obs(where / "tune") if method == "tune" else gridrun_obs(where / "runs" / f"{method}_s{seed}")
    return {"method": method, "seed": seed, "t0": t0, "rc": rc, "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "obs": sorted((round(t - t0, 3), v, trial, e) for t, v, trial, e in obs)}


def stopped(cmd: list[str], log: Path, deadline: float) -> int:
    """Run `cmd` until it ends or the deadline; then SIGINT (both stop their trials and shut Ray
    down), and after GRACE_S the whole process group is killed. Its exit status."""
    with open(log, "w") as f:
        env = {**child_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                          child_env().get("PYTHONPATH")]))}
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                             cwd=Path(__file__).parent.parent)
        try:
            return p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)
        try:
            return p.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            return p.wait()


def gridrun_obs(exp: Path) -> list[tuple[float, float, str, int]]:
    """(wall time, val_acc, trial, epoch) of every scored epoch, from each trial folder's TensorBoard scalars."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    from gridrun.storage.layout import EVENTS, ExperimentDir

    if not exp.is_dir():
        return []
    out = []
    for name, (folder, _group) in ExperimentDir(exp).trial_dirs().items():
        for f in sorted(folder.glob(EVENTS)):
            for ev in LegacyEventFileLoader(str(f)).Load():
                out += [(ev.wall_time, v.simple_value, name, ev.step) for v in ev.summary.value if v.tag == "val/acc"]
    return out


def tune_obs(exp: Path) -> list[tuple[float, float, str, int]]:
    """(wall time, val_acc, trial, epoch) of every report of (c)'s train function, from Tune's result.json files."""
    out = []
    for f in sorted(exp.glob("*/result.json")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # a line cut by the kill at the deadline
                continue
            if "wall" in r and "val_acc" in r:
                out.append((r["wall"], r["val_acc"], r.get("trial_id", f.parent.name), r["epoch"]))
    return out


# ---- the figures: best-so-far validation accuracy against wall time --------------------------------

def best_at(obs: list, t: float) -> float | None:
    """The best validation accuracy scored within t seconds of the method's start (None: nothing yet)."""
    vals = [v for s, v, *_ in obs if s <= t]
    return max(vals) if vals else None


def time_to(obs: list, target: float, limit: float) -> float | None:
    """Seconds from the start to the first validation accuracy >= target within `limit` (None: not reached)."""
    return next((s for s, v, *_ in sorted(obs) if v >= target and s <= limit), None)


def curve(obs: list, limit: float) -> list[tuple[float, float]]:
    """The steps of best-so-far validation accuracy: (seconds, best) at each improvement within `limit`."""
    out = []
    for s, v, *_ in sorted(obs):
        if s <= limit and (not out or v > out[-1][1]):
            out.append((s, v))
    return out


def median_time(times: list[float | None]) -> float | None:
    """The median seconds to the target over seeds, a seed that never reached it counting as longest
    (None when the median seed did not reach it)."""
    m = statistics.median([float("inf") if t is None else t for t in times])
    return None if m == float("inf") else m


def rows(runs: list[dict], budget: float, target: float) -> list[dict]:
    """bench.row's arguments: per seed, then over the seeds, each method against the baseline."""
    acc_m, time_m = f"best val_acc within {budget:g} s", f"seconds to val_acc {100 * target:g}%"
    per = {(r["method"], r["seed"]): r for r in runs}
    out = []
    for r in runs:
        base_run = per.get((BASELINE, r["seed"])) if r["method"] != BASELINE else None
        cfg = {"seed": r["seed"], "load1": r["load"], "trials": len({o[2] for o in r["obs"]}), "epochs": len(r["obs"])}
        for metric, unit, f in ((acc_m, "acc", lambda o: best_at(o, budget)),
                                (time_m, "s", lambda o: time_to(o, target, budget))):
            v = f(r["obs"])
            out.append(dict(metric=metric, value=v, unit=unit, variant=LABELS[r["method"]], config=cfg,
                            baseline=LABELS[BASELINE] if base_run else None,
                            baseline_value=f(base_run["obs"]) if base_run else None, wall_s=budget,
                            note=f"not reached in {budget:g} s" if unit == "s" and v is None else None))
    return out + summary_rows(runs, budget, target, acc_m, time_m)


def summary_rows(runs: list[dict], budget: float, target: float, acc_m: str, time_m: str) -> list[dict]:
    """Over the seeds: mean best accuracy and median seconds to the target, against the baseline
    (and (b) against (a) too: the aim is stated against both)."""
    def over(method):
        rs = [r for r in runs if r["method"] == method]
        accs = [best_at(r["obs"], budget) for r in rs]
        times = [time_to(r["obs"], target, budget) for r in rs]
        return (statistics.mean(x or 0.0 for x in accs) if rs else None, median_time(times) if rs else None,
                f"{sum(t is not None for t in times)} of {len(rs)} seeds reached it")

    methods = list(dict.fromkeys(r["method"] for r in runs))
    got = {m: over(m) for m in methods}
    out = []
    for m in methods:
        against = [b for b in (BASELINE, "random") if b != m and b in got and (b == BASELINE or m == "tpe")]
        for b in against or [None]:
            cfg = {"seeds": sorted({r["seed"] for r in runs if r["method"] == m}), "over": "seeds"}
            out.append(dict(metric=f"mean {acc_m}", value=got[m][0], unit="acc", variant=LABELS[m], config=cfg,
                            baseline=LABELS[b] if b else None, baseline_value=got[b][0] if b else None))
            out.append(dict(metric=f"median {time_m}", value=got[m][1], unit="s", variant=LABELS[m], config=cfg,
                            baseline=LABELS[b] if b else None, baseline_value=got[b][1] if b else None,
                            note=got[m][2]))
    return out


def trace(runs: list[dict], a) -> dict:
    """Everything the figures came from, for a report or a plot without rerunning."""
    return {"args": {k: v for k, v in vars(a).items() if k not in ("out", "trace")}, "space": SPACE,
            "base": base(a, Path("MNIST-SUBSET")), "runs": [{**r, "curve": curve(r["obs"], a.budget)} for r in runs]}


def plot(runs: list[dict], budget: float, target: float, path: str) -> None:
    """Best-so-far validation accuracy against wall time: one colour per method, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, m in enumerate(LABELS):
        for j, r in enumerate(r for r in runs if r["method"] == m):
            pts = curve(r["obs"], budget)
            if pts:  # a step from each improvement to the next, held to the budget
                xs, ys = zip(*(pts + [(budget, pts[-1][1])]))
                ax.step(xs, [100 * y for y in ys], where="post", color=f"C{i}", alpha=0.85,
                        label=LABELS[m] if j == 0 else None)
    ax.axhline(100 * target, color="grey", ls="--", lw=0.8, label=f"target {100 * target:g}%")
    ax.set(xlim=(0, budget), ylim=(max(0, 100 * target - 10), 100), xlabel="wall seconds from the method's start",
           ylabel="best validation accuracy so far (%)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(runs: list[dict], budget: float, target: float) -> str:
    """Per run, then over the seeds, as reports/benchmarks.md shows them."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def sec(v):
        return "not reached" if v is None else f"{v:.0f} s"

    def x(v, b, lower=False):
        return "" if v is None or b is None else f" ({(b / v if lower else v / b):.2f}×)"

    per = {(r["method"], r["seed"]): r for r in runs}
    out = [f"| seed | method | load avg (start → end) | first epoch scored at | configs scored | epochs scored | "
           f"best val acc in {budget:g} s (÷ (c)) | seconds to {100 * target:g}% ((c) ÷ this) |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: (r["seed"], list(LABELS).index(r["method"]))):
        b = per.get((BASELINE, r["seed"])) if r["method"] != BASELINE else None
        acc, t = best_at(r["obs"], budget), time_to(r["obs"], target, budget)
        first = sec(min((o[0] for o in r["obs"]), default=None)).replace("not reached", "-")
        out.append(f"| {r['seed']} | {LABELS[r['method']]} | {r['load'][0]:.1f} → {r['load'][1]:.1f} | {first} | "
                   f"{len({o[2] for o in r['obs']})} | {len(r['obs'])} | {pct(acc)}"
                   f"{x(acc, best_at(b['obs'], budget)) if b else ''} | {sec(t)}"
                   f"{x(t, time_to(b['obs'], target, budget), lower=True) if b else ''} |")
    out += ["", f"| method | mean best val acc in {budget:g} s | median seconds to {100 * target:g}% | seeds that "
                f"reached it | (c)'s median ÷ this | (a)'s median ÷ this |", "|---|---:|---:|---:|---:|---:|"]
    by = {m: [r for r in runs if r["method"] == m] for m in LABELS}
    times = {m: [time_to(r["obs"], target, budget) for r in rs] for m, rs in by.items() if rs}
    med = {m: median_time(ts) for m, ts in times.items()}

    def faster(m, than):  # how many times sooner m's median seed got there
        return "-" if m == than or med.get(m) is None or med.get(than) is None else f"{med[than] / med[m]:.2f}×"

    for m, ts in times.items():
        mean = statistics.mean(best_at(r["obs"], budget) or 0.0 for r in by[m])
        out.append(f"| {LABELS[m]} | {pct(mean)} | {sec(med[m])} | {sum(t is not None for t in ts)} of {len(ts)} | "
                   f"{faster(m, BASELINE)} | {faster(m, 'random')} |")
    return "\n".join(out)
