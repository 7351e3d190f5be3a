"""`gridrun launch SPEC`: a validated grid becomes Ray Tune trials. The only module importing ray."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import GridrunError
from .spec import SpecError, load_trials

# Ray's own TensorBoard/JSON/CSV loggers would duplicate the trainer's files; its banners and
# tables would bury ours. Set before ray is imported anywhere in this process.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")


# ---------------------------------------------------------------- inside a trial (a Ray worker)

def run_trial(config: dict, mnist: dict | None = None) -> None:
    """One Tune trial: train, reporting metrics and a checkpoint every epoch. `mnist` holds the
    four arrays, verified once by the driver and shipped through Ray's object store."""
    from ray import tune

    from .train import train

    ctx = tune.get_context()
    cfg = dict(config["trial"]["train"], out_dir=ctx.get_trial_dir())
    work = tempfile.mkdtemp(prefix="gridrun-state-")
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a retry, a restored experiment or a lost node: continue, not restart
        with ckpt.as_directory() as d:
            resume = os.path.join(work, "resume.pt")
            shutil.copy(os.path.join(d, "state.pt"), resume)

    import ray

    node = ray.get_runtime_context().get_node_id()

    def on_epoch(m, state_path):
        # The state folder holds only state.pt, and report() copies it to storage before it
        # returns, so it is the checkpoint as it stands (no second copy per epoch).
        tune.report({**m, "node_id": node, "status": "running"},
                    checkpoint=tune.Checkpoint.from_directory(os.path.dirname(state_path)))

    try:
        result = train(cfg, on_epoch=on_epoch, resume_from=resume, state_dir=os.path.join(work, "state"),
                       arrays=mnist)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(cfg["out_dir"], "node.json").write_text(json.dumps({"node_id": node, "host": os.uname().nodename}))
    if result["status"] != "ok":  # diverged: end the trial with its reason, not an error
        tune.report({"status": result["status"], "node_id": node, "epoch": result["epochs"]})


# ---------------------------------------------------------------- the driver

def _plan(spec, trials, cpus: float, gpus: float, out=print) -> None:
    """The trial table and how the grid packs onto `cpus`/`gpus`."""
    import pandas as pd

    rows = [{"trial": t["name"], **{k: (v if not isinstance(v, dict) else json.dumps(v)) for k, v in t["axes"].items()},
             "seed": t["train"]["seed"], "epochs": t["train"]["epochs"], "params": t["params"]} for t in trials]
    out(pd.DataFrame(rows).to_markdown(index=False, intfmt=","))
    r = spec.resources
    by_cpu = int(cpus // r.cpu) if r.cpu else len(trials)
    if r.gpu and gpus:
        per_gpu = int(1 // r.gpu) if r.gpu <= 1 else 0
        by_gpu = int(gpus * per_gpu) if r.gpu <= 1 else int(gpus // r.gpu)
        at_once = min(by_cpu, by_gpu, len(trials))
        out(f"plan: {len(trials)} trials; {r.cpu:g} CPU + {r.gpu:g} GPU each -> {per_gpu or 1} trial(s) per GPU; "
            f"{gpus:g} GPU(s), {cpus:g} CPU(s) -> {at_once} trial(s) at once")
    else:
        note = " (GPU spec: no GPU here, trials run on CPUs)" if r.gpu else ""
        out(f"plan: {len(trials)} trials; {r.cpu:g} CPU each; {cpus:g} CPU(s) -> {min(by_cpu, len(trials))} "
            f"trial(s) at once{note}")


def _connect(address: str | None, quiet: bool = True):
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
              configure_logging=True)
    try:
        if address:
            ray.init(address=address, **{k: v for k, v in kw.items() if k != "include_dashboard"})
        else:
            ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray"
        raise GridrunError(f"cannot start or join Ray at {where} ({str(e).splitlines()[0]}): check --address / "
                           f"RAY_ADDRESS (`ray status` on the head node prints it)") from None
    return ray


def _cluster_line(ray, per_node: bool = False) -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    line = f"cluster: {len(nodes)} node(s), {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s)"
    if per_node:
        for n in nodes:
            r = n.get("Resources", {})
            line += (f"\n  node {n['NodeID'][:12]} at {n.get('NodeManagerAddress')}: {r.get('CPU', 0):g} CPU(s), "
                     f"{r.get('GPU', 0):g} GPU(s)")
    return line


class _Progress:
    """Compact progress: one line per finished/failed trial, a small table of running ones."""

    def __init__(self, n: int, out, every_s: float = 15.0):
        from ray.tune import Callback

        self.n, self.out, self.every = n, out, every_s
        prog = self

        class _CB(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                prog.last[trial.trial_id] = result
                prog.maybe_table(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                r = prog.last.get(trial.trial_id, {})
                status = r.get("status", "ok")
                status = "ok" if status == "running" else status
                prog.done += 1
                prog.out(f"[done {prog.done}/{prog.n}] {_tname(trial)}: "
                         f"{status}, epoch {r.get('epoch', '?')}, val acc {_fmt(r.get('val_acc'))}")

            def on_trial_error(self, iteration, trials, trial, **info):
                prog.failed += 1
                prog.out(f"[failed {prog.failed}] {_tname(trial)}: {_error_line(trial)}")

            def on_trial_recover(self, iteration, trials, trial, **info):
                prog.out(f"[retry] {_tname(trial)}: {_error_line(trial)}; resuming from its last checkpoint")

        self.callback = _CB()
        self.last: dict = {}
        self.t = 0.0
        self.done = self.failed = 0

    def maybe_table(self, trials):
        if time.time() - self.t < self.every:
            return
        self.t = time.time()
        counts = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        running = [t for t in trials if t.status == "RUNNING"]
        self.out(" | ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())))
        for t in running[:16]:
            r = self.last.get(t.trial_id, {})
            self.out(f"  {_tname(t):<48} epoch {r.get('epoch', '-'):>3}  val acc {_fmt(r.get('val_acc'))}")


def _tname(trial) -> str:
    return trial.config.get("trial", {}).get("name", str(trial))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text().strip().splitlines() if path else []
    except OSError:
        text = []
    last = next((l for l in reversed(text) if l.strip() and not l.startswith(" ")), "error")
    return last[:300]


def launch(spec_path: str, dry_run: bool = False, address: str | None = None, name: str | None = None,
           storage: str | None = None, max_concurrent: int | None = None, fresh: bool = False, out=print) -> int:
    """Run (or resume) a grid; returns the process exit code (1 when any trial failed)."""
    spec, trials = load_trials(spec_path)
    name = name or spec.name
    storage = storage or "runs"
    local_storage = "://" not in storage
    exp_dir = os.path.join(os.path.abspath(storage) if local_storage else storage, name)
    address = address or os.environ.get("RAY_ADDRESS")
    if dry_run:
        if address:
            ray = _connect(address)
            out(_cluster_line(ray, per_node=True))
            res = ray.cluster_resources()
            cpus, gpus = res.get("CPU", 0), res.get("GPU", 0)
        else:
            import torch

            cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
            out(f"local: {cpus} CPU(s), {gpus} GPU(s)")
        _plan(spec, trials, cpus, gpus, out)
        return 0

    if fresh and local_storage and os.path.exists(exp_dir):
        k = 1
        while os.path.exists(f"{exp_dir}.prev-{k}"):
            k += 1
        os.rename(exp_dir, f"{exp_dir}.prev-{k}")  # start over, but never delete results
        out(f"--fresh: the previous experiment is kept as {exp_dir}.prev-{k}")
    _check_existing(exp_dir, spec_path, trials, local_storage)
    ray = _connect(address)
    from ray import tune

    import logging

    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # failures get our one-line [failed]
    res = ray.cluster_resources()
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if resources["gpu"] and not res.get("GPU"):
        out(f"notice: the spec asks {resources['gpu']:g} GPU per trial but this Ray has none: running on CPUs")
        resources["gpu"] = 0
        for t in trials:
            t["train"]["gpu_memory_fraction"] = None
    out(f"{_cluster_line(ray)}; {len(trials)} trials -> {exp_dir}")

    # The driver reads and checks MNIST once; Ray ships the arrays to each node's object store,
    # so a trial finds its data whatever that node's disk holds (about 55 MB per node).
    from .data import load_arrays

    data_dirs = {t["train"]["data_dir"] for t in trials}
    if len(data_dirs) > 1:
        raise SpecError(f"{spec_path}: trials name different data_dir values ({', '.join(map(str, data_dirs))}): "
                        f"set it once under data:")
    mnist = load_arrays(data_dirs.pop())
    trainable = tune.with_resources(tune.with_parameters(run_trial, mnist=mnist), resources)
    run_config = tune.RunConfig(
        name=name, storage_path=os.path.dirname(exp_dir) if local_storage else storage.rstrip("/"),
        verbose=0, log_to_file=True,
        # Trial files (metrics, TensorBoard, logits) go to storage at every epoch's checkpoint,
        # from whichever node ran the trial: live reports and TensorBoard, and nothing left
        # behind on a node that dies. (Ray 2.60 syncs no artifacts by default.)
        sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True),
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[_Progress(len(trials), out).callback, *_loggers()],
    )
    scheduler = None
    if spec.early_stop:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric="val_acc", mode="max", time_attr="training_iteration",
                                  max_t=max(t["train"]["epochs"] for t in trials),
                                  grace_period=spec.early_stop.grace_period,
                                  reduction_factor=spec.early_stop.reduction_factor)
    if tune.Tuner.can_restore(exp_dir):
        out(f"resuming {exp_dir}: finished trials are kept, unfinished ones continue from their checkpoint")
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=max_concurrent,
                                        trial_dirname_creator=lambda t: t.config["trial"]["name"],
                                        trial_name_creator=lambda t: t.config["trial"]["name"]),
            run_config=run_config,
        )
    t0 = time.time()
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        out(f"interrupted: run the same command again to resume {exp_dir}")
        return 130
    code = _summarize(grid, len(trials), time.time() - t0, exp_dir, out, early_stop=spec.early_stop is not None)
    if local_storage:  # the report quotes how and where the grid ran
        with open(os.path.join(exp_dir, "gridrun_launches.jsonl"), "a") as f:
            f.write(json.dumps({"command": " ".join(["gridrun", *sys.argv[1:]]) if sys.argv[0].endswith("gridrun")
                                else f"launch({spec_path!r})", "cluster": _cluster_line(ray),
                                "wall_s": round(time.time() - t0, 1), "exit": code}) + "\n")
    return code


def _loggers():
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _check_existing(exp_dir: str, spec_path: str, trials: list[dict], local: bool) -> None:
    """An existing experiment must be the same grid: resuming another grid would mix results."""
    if not local:
        return
    manifest = Path(exp_dir) / "gridrun_trials.json"
    current = [{k: t[k] for k in ("name", "axes", "params", "train")} for t in trials]
    if manifest.exists():
        if [t.get("train") for t in json.loads(manifest.read_text())] != [t["train"] for t in current]:
            raise SpecError(f"{exp_dir} holds an experiment from a different grid than {spec_path}: "
                            f"launch with --name NEW, or delete that folder to start over")
    else:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(current, indent=1))
        shutil.copy(spec_path, Path(exp_dir) / "spec.yaml")


def _summarize(grid, n: int, seconds: float, exp_dir: str, out, early_stop: bool = False) -> int:
    counts = {"finished": 0, "diverged": 0, "failed": 0, "stopped": 0, "interrupted": 0}
    for t in grid._experiment_analysis.trials:
        m = t.last_result or {}
        train_cfg = t.config.get("trial", {}).get("train", {})
        summary = Path(exp_dir, t.config.get("trial", {}).get("name", "?"), "summary.json")
        if t.status == "ERROR":
            counts["failed"] += 1
        elif summary.exists():  # the trial's own word, where storage is a local path
            ok = json.loads(summary.read_text()).get("status") == "ok"
            counts["finished" if ok else "diverged"] += 1
        elif str(m.get("status", "")).startswith("diverged"):
            counts["diverged"] += 1
        elif "://" in exp_dir and m.get("epoch", 0) >= train_cfg.get("epochs", 0):
            counts["finished"] += 1
        elif early_stop and m.get("done"):  # ASHA ended it before its last epoch
            counts["stopped"] += 1
        else:  # Ctrl-C stopped the experiment under it
            counts["interrupted"] += 1
    words = f"{counts['finished']} finished, {counts['diverged']} diverged, {counts['failed']} failed"
    if counts["stopped"]:
        words += f", {counts['stopped']} stopped early"
    if counts["interrupted"]:
        words += f", {counts['interrupted']} interrupted (run the same command again to resume them)"
    out(f"{exp_dir}: {n} trials in {seconds:.0f}s: {words}"
        + (" (see the [failed] lines above; rerun the same command to retry them)" if counts["failed"] else ""))
    return 1 if counts["failed"] else 130 if counts["interrupted"] else 0


def tensorboard(name: str | None, storage: str = "runs", port: int = 6006) -> int:
    """Start TensorBoard over one experiment (or all of them)."""
    logdir = Path(storage) / name if name else Path(storage)
    if not logdir.is_dir():
        raise GridrunError(f"no experiment folder {logdir}: run `gridrun launch SPEC` first, or pass --storage")
    exe = shutil.which("tensorboard") or os.path.join(os.path.dirname(sys.executable), "tensorboard")
    os.execv(exe, [exe, "--logdir", str(logdir), "--port", str(port)])


def add_parser(sub) -> None:
    p = sub.add_parser("launch", help="run a YAML grid as Ray Tune trials (resumes an existing one)")
    p.add_argument("spec", help="grid spec, e.g. grids/smoke.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the trials and the resource plan, run nothing")
    p.add_argument("--address", default=None, help="Ray cluster to join (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--name", default=None, help="experiment name (default: the spec's name)")
    p.add_argument("--storage", default=None, help="results root every node sees (default runs/)")
    p.add_argument("--max-concurrent", type=int, default=None, help="at most N trials at once")
    p.add_argument("--fresh", action="store_true",
                   help="start over instead of resuming (the old folder is kept as NAME.prev-N)")
    p.set_defaults(func=lambda a: launch(a.spec, a.dry_run, a.address, a.name, a.storage, a.max_concurrent,
                                         a.fresh))

    p = sub.add_parser("tensorboard", help="TensorBoard over runs/NAME (or all of runs/)")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--storage", default="runs")
    p.add_argument("--port", type=int, default=6006)
    p.set_defaults(func=lambda a: tensorboard(a.name, a.storage, a.port))
