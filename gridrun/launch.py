"""`gridrun launch SPEC`: a validated grid becomes Ray Tune trials. The driver: plan -> lock ->
record -> Tuner -> fit -> summary. Imports ray (as worker.py does). Where the experiment lives
is its storage object's business (storage/backends.py): no branch on it here.

One Tune trial per planned unit (plan.py): a single config or a fused group of configs.
gridrun owns the experiment folder (experiment.py): every launch runs a new Tuner over the
units that have not finished, and each unit resumes from the newest checkpoint a previous
launch left in its folder (worker.py). So a grid can grow (more seeds, more axis values)
without touching finished trials, which Ray's own Tuner.restore cannot do.
"""
from __future__ import annotations

import os
import time

from ray import tune
from ray.tune.progress_reporter import TrialProgressCallback

from . import diskio, hooks, study
from .errors import GridrunError
from .experiment import (Terminated, launch_opened, open_experiment, record_launch, record_plan, reference_file,
                         said_holder)
from .plan import arrays, check_cuda, check_data, load, plan_table, ray_nodes, remaining, user_modules
from .progress import Progress, RayLog, exit_code, live_stream, quiet_tune, summarize
from .spec import asha
from .storage.backends import Storage
from .storage.layout import LAUNCHES, ExperimentDir
from .worker import LaunchContext, run_trial


def launch(spec_path: str, *, overrides: list[str] | None = None, dry_run: bool = False, address: str | None = None,
           name: str | None = None, storage: str | None = None, max_concurrent: int | None = None,
           fresh: bool = False, fuse: int | None = None, out=print) -> int:
    """Run (or resume, or grow) a grid; returns the process exit code (1 when any trial
    failed, 130 when interrupted by Ctrl-C, 143 when stopped by SIGTERM, which is handled as
    Ctrl-C: trials stopped, summary printed, launch recorded). Storage is a folder, file:///folder
    or s3://bucket/prefix."""
    spec, grid = load(spec_path, [*(overrides or []), *([f"fuse={fuse}"] if fuse is not None else [])])
    folder = open_experiment(name or spec.name, storage)
    reference = reference_file(spec, spec_path)
    check_data(grid, dry_run, out)  # before any folder is touched or Ray started
    if dry_run:
        with folder.mirror() as view:
            said_holder(view, fresh, folder.shown, out)
            grid = study.next_grid(spec, None if fresh else view, study.slots(spec, max_concurrent), out)[0] \
                if spec.search else grid  # a study's: what its next batch would ask and run
            return _dry_run(spec, grid, None if fresh else view, folder, address or os.environ.get("RAY_ADDRESS"), out,
                            max_concurrent)
    term = Terminated()
    try:
        with folder.claim(fresh, out), term:
            with folder.mirror() as view:
                run = lambda g: _run(spec, spec_path, g, view, folder, reference, address, max_concurrent, out, term)  # noqa
                return study.drive(spec, view, max_concurrent, out, run) if spec.search else run(grid)
    except KeyboardInterrupt:
        if not term.received:
            raise
        out(f"{folder.shown}: stopped by SIGTERM before any trial ran (the lock is released)")
        return 143
    except OSError as e:
        if diskio.disk_error(e) is None:
            raise
        raise GridrunError(diskio.disk_line(folder.shown, diskio.disk_error(e))) from None


def _dry_run(spec, grid, view, folder: Storage, address, out, max_concurrent=None) -> int:
    """What a launch would run (the trials an existing experiment lacks) and how it packs."""
    nodes: list = []  # filled (and said) only when something is left to run
    plan = remaining(spec, grid, view, out, folder.shown, nodes=lambda: nodes.extend(_nodes(address, out)) or nodes,
                     max_concurrent=max_concurrent)
    if not plan.units:
        out(plan.nothing_left(folder.shown))
        return 0
    if plan.done:
        out(f"{folder.shown}: {plan.settled()}; the launch would run the other {len(plan.todo)}:")
    check_cuda(plan.units, spec.resources.gpu if sum(g for _, g in nodes) else 0)
    plan_table(spec, list(plan.todo), list(plan.units), sum(c for c, _ in nodes), sum(g for _, g in nodes), out,
               max_concurrent)
    return 0



def _nodes(address, out) -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each node a dry run plans for: the cluster's nodes when joined, else this machine."""
    if address:
        ray = _connect(address)
        out(_cluster_line(ray, per_node=True))
        return ray_nodes(ray)
    import torch

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    out(f"local: {cpus} CPU(s), {gpus} GPU(s)")
    return [(cpus, gpus)]


def _run(spec, spec_path, grid, view, folder: Storage, reference, address, max_concurrent, out, term) -> int:
    """Under the lock: match, check and record the grid, run what is left, count and record it."""
    modules = user_modules(grid)  # whichever call starts Ray ships them
    plan = remaining(spec, grid, view, out, folder.shown, nodes=lambda: ray_nodes(_connect(address, modules)),
                     max_concurrent=max_concurrent)
    if plan.done:
        out(f"{folder.shown}: {plan.settled()} (kept untouched); {len(plan.todo)} to run")
    record_plan(view, spec, plan, reference)
    folder.push(view)
    if not plan.units:
        out(plan.nothing_left(folder.shown))
        return 0
    with launch_opened(view, spec_path, folder):  # a launch killed from here on is recorded by the next
        ray = _connect(address, modules)
        term.install()  # again: ray.init replaces the SIGTERM handler with its own sys.exit
        t0 = time.time()
        from .hparams import hparam_fields

        context, resources = _context(ray, spec, plan.units, folder, hparam_fields([t.axes for t in grid]), out)
        progress = _Progress(list(plan.units), out, folder.here, live=live_stream(out), early_stop=bool(asha(spec)))
        with quiet_tune():
            tuner = _build_tuner(spec, plan.units, context, resources, folder, max_concurrent, progress)
            fitted, twice, full = _fit(tuner, progress, folder, out)
        folder.pull(view)  # an object store's: the trials' files, as the nodes wrote them there
        folder.push(view, progress.mark_mirror(view))  # and its stopped or failed trials marked there too
        counted = summarize(fitted, plan.units, time.time() - t0, str(view), out, shown=folder.shown)
        code = exit_code(counted, term.received, twice, full, folder.shown, out)
        folder.make_room()  # for the record, should the disk be full
        record_launch(str(view), _cluster_line(ray), spec_path, time.time() - t0, code)
        folder.push(view, [LAUNCHES, *(p.name for p in ExperimentDir(view).diffs())])
    if full is not None:
        raise GridrunError(diskio.disk_line(folder.shown, full))
    return code


def _connect(address: str | None, modules: list[str] = ()):
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kw = dict(log_to_driver=False, logging_level="ERROR", configure_logging=True)
    if hooks.forwarded():  # a test's hooks (gridrun/hooks.py), handed to the trials of a joined Ray too
        kw["runtime_env"] = {"env_vars": hooks.forwarded()}
    if modules:  # the user's nets: Ray uploads them to every node, local or joined
        kw["runtime_env"] = {**kw.get("runtime_env", {}), "py_modules": list(modules)}
    try:
        ray.init(address=address, **kw) if address else ray.init(include_dashboard=False, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise GridrunError(f"cannot start or join Ray at {address or 'a local Ray'} ({str(e).splitlines()[0][:160]}): "
                           f"check --address / RAY_ADDRESS (`ray status` on the head node prints it)") from None
    return ray


def _cluster_line(ray, per_node: bool = False) -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    line = f"cluster: {len(nodes)} node(s), {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s)"
    for n in nodes if per_node else []:
        r = n.get("Resources", {})
        line += (f"\n  node {n['NodeID'][:12]} at {n.get('NodeManagerAddress')}: {r.get('CPU', 0):g} CPU(s), "
                 f"{r.get('GPU', 0):g} GPU(s)")
    return line


def _context(ray, spec, units, folder: Storage, hparams: list[str], out) -> tuple[LaunchContext, dict]:
    """What every trial of this launch is given (tune.with_parameters) and the resources each asks."""
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if resources["gpu"] and not ray.cluster_resources().get("GPU"):
        out(f"notice: the spec asks {resources['gpu']:g} GPU per trial but this Ray has none: running on CPUs")
        resources["gpu"] = 0
    check_cuda(units, resources["gpu"])
    n = sum(len(u.members) for u in units)
    out(f"{_cluster_line(ray)}; {n} trials" + (f" in {len(units)} Tune trials" if n != len(units) else "")
        + f" -> {folder.shown}")
    # The driver reads and checks each data folder once; Ray ships its arrays to each node's object
    # store, so a trial finds its data whatever that node's disk holds (about 55 MB per folder).
    return LaunchContext(folder.uri, f"{time.time():.0f}-{os.getpid()}", tuple(hparams), cpu_only=resources["gpu"] == 0
                         and spec.resources.gpu > 0, query=folder.query, arrays=arrays(units)), resources


def _build_tuner(spec, units, context: LaunchContext, resources: dict, folder: Storage, max_concurrent, progress):
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
    run_config = tune.RunConfig(
        **folder.ray_storage(), verbose=0,
        # Trial files (metrics, TensorBoard, logits) go to storage at every epoch's checkpoint,
        # from whichever node ran the trial: live reports and TensorBoard, and nothing left
        # behind on a node that dies. (Ray 2.60 syncs no artifacts by default.)
        sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True), log_to_file=True,
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[progress, _RayLog(folder.here), *_loggers()])
    scheduler, halving = None, asha(spec)
    if halving and not all(u.fused for u in units):  # a fused group cuts at its own rungs (engine/run.py)
        from ray.tune.schedulers import ASHAScheduler

        # on `trial_val_acc`, which only unfused trials report: ASHA leaves a fused group alone
        scheduler = ASHAScheduler(metric="trial_val_acc", mode="max", time_attr="training_iteration",
                                  max_t=max(u.epochs for u in units), grace_period=halving[0],
                                  reduction_factor=halving[1])
    import logging

    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # failures get our one-line [failed]
    return tune.Tuner(trainable, param_space={"unit": tune.grid_search([u.to_tune() for u in units])},
                      tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=max_concurrent,
                                                  trial_dirname_creator=lambda t: t.config["unit"]["name"],
                                                  trial_name_creator=lambda t: t.config["unit"]["name"]),
                      run_config=run_config)


class _Progress(Progress, tune.Callback):
    """progress.Progress as the Tune callback it is written to be."""


class _RayLog(RayLog, TrialProgressCallback):
    """progress.RayLog as the TrialProgressCallback that keeps Ray from adding its own, which
    prints (ray.tune.utils.callback._create_default_callbacks); only Callback's public hooks."""


def _loggers():
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _fit(tuner, progress, folder: Storage, out):
    """Run the Tuner: (its results, whether a second Ctrl-C or SIGTERM stopped it at once, the
    full-disk error or None). A first signal lets Tune stop the trials and save its state; the
    storage then cleans up after it (folder.after_fit: a full disk's half-written files)."""
    fitted, twice, full = [], False, None
    try:
        fitted = tuner.fit()
    except KeyboardInterrupt:
        out("interrupted twice: stopped at once")
        twice = True
    except Exception as e:  # Ray's writes on a full disk, or its reader choking on what they left
        full = diskio.disk_error(e) or folder.full()
        if full is None:
            raise
    finally:
        progress.close()
    return fitted, twice, folder.after_fit(full)
