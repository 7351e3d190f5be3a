"""`gridrun launch SPEC`: a validated grid becomes Ray Tune trials. The only module importing ray.

One Tune trial per planned unit: a single config (train.train) or a fused group of configs
(fused.train_fused). gridrun owns the experiment folder: every launch runs a new Tuner over the
units that have not finished, and each unit resumes from the newest checkpoint a previous
launch left in its folder. So a grid can grow (more seeds, more axis values) without touching
finished trials, which Ray's own Tuner.restore cannot do.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

# Ray's own TensorBoard/JSON/CSV loggers would duplicate the trainer's files; its banners and
# tables would bury ours. Set before ray is imported anywhere in this process.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")

from ray import tune  # noqa: E402

from . import diskio, results, store  # noqa: E402
from .remote import Remote, local_path  # noqa: E402
from .errors import GridrunError  # noqa: E402
from .spec import SpecError, load_trials, plan_units  # noqa: E402

RAY_LOG = "gridrun_ray.log"  # Ray's per-trial lines, kept out of the terminal


# ---------------------------------------------------------------- inside a trial (a Ray worker)

def run_trial(config: dict, mnist: dict | None = None) -> None:
    """One Tune trial: train one config, or a fused group of them, reporting metrics and a
    checkpoint every epoch. `mnist` holds the four arrays, verified once by the driver and
    shipped through Ray's object store."""
    import ray

    from .train import StateError

    unit = config["unit"]
    ctx = tune.get_context()
    trial_dir = ctx.get_trial_dir()
    node = ray.get_runtime_context().get_node_id()
    _sweep_stale_state()
    work = tempfile.mkdtemp(prefix=f"gridrun-state-{os.getpid()}-")
    state_dir = os.path.join(work, "state")
    notice, reported, ended = [], [], set()
    from . import hparams

    member_dirs = [os.path.join(trial_dir, t["name"]) if unit["fused"] else trial_dir for t in unit["members"]]
    if unit["fused"]:  # marks the folder as a group for the reader: its members' folders are inside
        Path(trial_dir, store.GROUP_FILE).write_text(json.dumps({"members": [t["name"] for t in unit["members"]]}))
    for t, d in zip(unit["members"], member_dirs):
        hparams.write_session_start(d, t["train"], unit.get("hparams", []))
    try:
        resume = _resume_state(unit, work)

        def on_epoch(m, state_path):
            reported.append(m["epoch"])
            if m["epoch"] >= _epochs(unit):  # its final files are written: its status goes before
                _end_sessions(member_dirs, ended)  # the last report, at which ASHA may stop it
            # The state folder holds only the state, and report() copies it to storage before
            # it returns, so it is the checkpoint as it stands (no second copy per epoch).
            Path(state_dir, "state.json").write_text(json.dumps({"epoch": m["epoch"], "launch": unit["launch"]}))
            extra = {"notice": notice.pop()} if notice else {}
            tune.report({**m, "node_id": node, "status": "running", **extra},
                        checkpoint=tune.Checkpoint.from_directory(state_dir))

        def go(resume_from):
            if unit["fused"]:
                from .fused import train_fused

                return train_fused([dict(t["train"], out_dir=os.path.join(trial_dir, t["name"]))
                                    for t in unit["members"]], on_epoch=on_epoch, resume_from=resume_from,
                                   state_dir=state_dir, arrays=mnist, group_dir=trial_dir)
            from .train import train

            return [train(dict(unit["members"][0]["train"], out_dir=trial_dir), on_epoch=on_epoch,
                          resume_from=resume_from, state_dir=state_dir, arrays=mnist)]

        try:
            res = go(resume)
        except StateError as e:  # a corrupt or foreign checkpoint: start over, say so
            notice.append(f"{e}; the trial starts again from epoch 1")
            print(f"gridrun: notice: {notice[-1]}", file=sys.stderr)
            shutil.rmtree(state_dir, ignore_errors=True)
            res = go(None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(trial_dir, "node.json").write_text(json.dumps({"node_id": node, "host": os.uname().nodename}))
    _end_sessions(member_dirs, ended)  # diverged, or resumed after its last epoch
    bad = [r["status"] for r in res if r["status"] != "ok"]
    if len(bad) == len(res) or not reported:
        # Every member diverged (end the trial with its reason, not an error), or it resumed
        # from a state saved after its last epoch and trained nothing: say how it ended, or the
        # driver would see a trial with no result and take it for one stopped early.
        val = [r["final"]["val_acc"] for r in res if r["status"] == "ok" and (r.get("final") or {}).get("val_acc")
               is not None]
        tune.report({"status": bad[0] if len(bad) == len(res) else "ok", "node_id": node,
                     "epoch": max(r["epochs"] for r in res), **({"val_acc": max(val)} if val else {})})


def _end_sessions(dirs: list, ended: set, status: str | None = None) -> None:
    """TensorBoard's session end for each trial folder not yet ended: `status`, else what its
    summary.json says ("ok", "diverged at epoch k"), else failed."""
    from . import hparams

    for d in dirs:
        if d in ended:
            continue
        try:
            s = status or json.loads(Path(d, "summary.json").read_text()).get("status", "failed")
        except (OSError, ValueError, AttributeError):
            s = "failed"
        hparams.write_session_end(d, s)
        ended.add(d)


def _sweep_stale_state() -> None:
    """Remove the scratch folders of trial processes that died without their `finally` (a
    killed worker or node): each is named after its process, so a dead pid marks it stale."""
    for d in Path(tempfile.gettempdir()).glob("gridrun-state-*-*"):
        pid = d.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # alive, another user's: not ours to touch
            pass


def _resume_state(unit: dict, work: str) -> str | None:
    """The state to continue from: Ray's checkpoint on a retry within this launch, else the
    newest checkpoint a previous launch left in the unit's folder in storage, else None."""
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if os.path.exists(os.path.join(d, "state.pt")):
                shutil.copy(os.path.join(d, "state.pt"), os.path.join(work, "resume.pt"))
                return os.path.join(work, "resume.pt")
    import pyarrow.fs as pafs

    where = unit["storage"]
    fs, root = pafs.FileSystem.from_uri(where) if "://" in where else (pafs.LocalFileSystem(), where)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    best, best_epoch = None, 0
    for info in infos:
        if info.type != pafs.FileType.Directory or not os.path.basename(info.path).startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/state.json") as f:
                epoch = int(json.loads(f.read().decode())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if epoch > best_epoch:
            best, best_epoch = info.path, epoch
    if best is None:
        return None
    dst = os.path.join(work, "resume.pt")
    try:
        pafs.copy_files(f"{best}/state.pt", dst, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError:
        return None
    return dst


# ---------------------------------------------------------------- the driver

class _Progress(tune.Callback):
    """The launch's voice: one line per finished or failed trial, and one live progress line
    (done/total, running, failed, elapsed, ETA). On a terminal (`live`, a stream) the line is
    redrawn in place; in a log it is printed when a count changes, or every `every_s`."""

    def __init__(self, units: list[dict], out, exp_dir: str, live=None, every_s: float = 30.0,
                 early_stop: bool = False, clock=time.time):
        self.units = {u["name"]: u for u in units}
        self.n = sum(len(u["members"]) for u in units)
        self.out, self.exp_dir, self.live, self.every, self.early_stop, self.clock = \
            out, exp_dir, live, every_s, early_stop, clock
        self.t0 = clock()
        self.last: dict = {}                      # trial id -> its last result
        self.started: dict = {}                   # trial id -> when Tune started it
        self.reported_at: dict = {}               # trial id -> when its last result came
        self.first_s: list[float] = []            # start to first report, per trial (start-up + one epoch)
        self.gaps_s: list[float] = []             # a slot freeing to the next trial's start
        self.freed: list[float] = []              # when trials ended, not yet followed by a start
        self.epoch_s: list[float] = []            # between two reports of one trial
        self.ended: set = set()                   # names of the units that completed or failed
        self.done = self.failed = self.slots = 0
        self.shown, self.shown_at, self.drawn = None, 0.0, False

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = self.clock()
        if self.freed:
            self.gaps_s.append(self.clock() - self.freed.pop(0))
        self.update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now, tid = self.clock(), trial.trial_id
        if tid in self.reported_at:
            self.epoch_s.append(now - self.reported_at[tid])
        elif tid in self.started and result.get("status") == "running":
            self.first_s.append(now - self.started[tid])
        self.reported_at[tid], self.last[tid] = now, result
        if result.get("notice"):
            self.say(f"[notice] {_tname(trial)}: {result['notice']}")
        self.update(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = self.last.get(trial.trial_id, {})
        unit = trial.config.get("unit", {})
        status = {"running": "finished", "ok": "finished"}.get(r.get("status", "ok"), r.get("status"))
        epochs = _epochs(unit)
        if self.early_stop and status == "finished" and isinstance(r.get("epoch"), int) and r["epoch"] < epochs:
            status = "stopped early"  # ASHA ended it before its last epoch: mark its folders
            if "://" not in self.exp_dir:
                stopped = [d for d in _member_dirs(self.exp_dir, unit) if d.is_dir() and not (d / "summary.json").exists()]
                for d in stopped:
                    (d / "stopped.json").write_text(json.dumps({"after_epoch": r["epoch"], "by": "ASHA"}))
                _end_sessions(stopped, set(), "stopped early")
        self.ended.add(_tname(trial))
        self.freed.append(self.clock())
        self.done += len(unit.get("members", [])) or 1
        self.say(f"[done {self.done}/{self.n}] {_tname(trial)}: {status}, epoch {r.get('epoch', '?')}, "
                 f"val acc {_fmt(r.get('val_acc'))}")
        self.update(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        unit = trial.config.get("unit")
        if unit and "://" not in self.exp_dir:  # its TensorBoard session ends as failed
            _end_sessions([d for d in _member_dirs(self.exp_dir, unit)
                           if d.is_dir() and not (d / "summary.json").exists()], set(), "failed")
        self.ended.add(_tname(trial))
        self.freed.append(self.clock())
        self.failed += len(trial.config.get("unit", {}).get("members", [])) or 1
        self.say(f"[failed {self.failed}] {_tname(trial)}: {_error_line(trial)}")
        self.update(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = self.clock()  # it starts again: its start-up counts again
        self.reported_at.pop(trial.trial_id, None)
        self.say(f"[retry] {_tname(trial)}: {_error_line(trial)}; resuming from its last checkpoint")

    def on_step_end(self, iteration, trials, **info):
        self.update(trials)

    def on_experiment_end(self, trials, **info):
        self.close()

    def say(self, text: str) -> None:
        """An event line, printed above the live line (which is redrawn after it)."""
        self._clear()
        self.out(text)
        self.shown = None

    def update(self, trials) -> None:
        running = [t for t in trials if t.status == "RUNNING"]
        self.slots = max(self.slots, len(running))
        line = self.line(running, self.clock())
        key = line.split(", elapsed")[0]
        now = self.clock()
        if self.live is not None:
            if key != self.shown or now - self.shown_at >= 1.0:
                self.live.write("\r\x1b[K" + line)
                self.live.flush()
                self.shown, self.shown_at, self.drawn = key, now, True
        elif key != self.shown or now - self.shown_at >= self.every:
            self.out(line)
            self.shown, self.shown_at = key, now

    def line(self, running: list, now: float) -> str:
        text = (f"progress: {self.done}/{self.n} done, "
                f"{sum(len(t.config.get('unit', {}).get('members', [])) or 1 for t in running)} running, "
                f"{self.failed} failed, elapsed {_dur(now - self.t0)}")
        eta = self.eta(running, now)
        if eta is not None and eta[2]:
            text += f", ETA {_dur(eta[0])} (start-up {eta[1]:.0f}s, {eta[2]:.1f}s per epoch, as measured)"
        elif eta is not None:  # one epoch a trial: no time between reports to tell the two apart
            text += f", ETA {_dur(eta[0])} ({eta[1]:.0f}s per trial with its start-up, as measured)"
        return text

    def eta(self, running: list, now: float) -> tuple[float, float, float] | None:
        """Seconds left, from what this launch measured: the start-up of a trial (from a slot
        freeing, or its start, to its first report, less one epoch) and the time between two
        reports of a trial (an epoch with its evaluation and checkpoint); the work left is
        shared by the most trials seen running at once. None until these were measured."""
        most = max([_epochs(u) for u in self.units.values()] or [1])
        if not self.first_s or (most > 1 and not self.epoch_s):
            return None
        epoch = statistics.median(self.epoch_s) if self.epoch_s else 0.0
        first = statistics.median(self.first_s)  # start-up and one epoch
        wait = statistics.median(self.gaps_s) if self.gaps_s else 0.0
        left = 0.0
        for t in running:
            epochs = _epochs(t.config.get("unit", {}))
            if t.trial_id in self.reported_at:
                left += max(0, epochs - (self.last.get(t.trial_id, {}).get("epoch") or 0)) * epoch
            else:  # still starting, or in its first epoch
                left += max(0.0, first + (epochs - 1) * epoch - (now - self.started.get(t.trial_id, now)))
        busy = self.ended | {_tname(t) for t in running}
        left += sum(wait + first + (_epochs(u) - 1) * epoch for name, u in self.units.items() if name not in busy)
        return left / max(1, self.slots), wait + max(0.0, first - epoch), epoch

    def _clear(self) -> None:
        if self.live is not None and self.drawn:
            self.live.write("\r\x1b[K")
            self.live.flush()
            self.drawn = False

    def close(self) -> None:
        """End the live line, leaving the last state of the launch as an ordinary line."""
        if self.live is not None and self.drawn:
            self._clear()
            self.out(self.line([], self.clock()).split(", ETA")[0])


def _epochs(unit: dict) -> int:
    return max((m["train"]["epochs"] for m in unit.get("members", [])), default=0)


def _dur(seconds: float) -> str:
    from .status import _dur as dur

    return dur(seconds)


def _member_dirs(exp_dir: str, unit: dict) -> list[Path]:
    base = Path(exp_dir, unit["name"])
    return [base / m["name"] for m in unit["members"]] if unit.get("fused") else [base]


def _tname(trial) -> str:
    return trial.config.get("unit", {}).get("name", str(trial))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        return store.error_line(Path(path))[:300] if path else "error"
    except OSError:
        return "error"


def _connect(address: str | None):
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    kw = dict(log_to_driver=False, logging_level="ERROR", configure_logging=True)
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(include_dashboard=False, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray"
        raise GridrunError(f"cannot start or join Ray at {where} ({str(e).splitlines()[0][:160]}): check --address / "
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


def plan_table(spec, trials: list[dict], units: list[dict], cpus: float, gpus: float, out=print) -> None:
    """The trial table, the fused groups and how the grid packs onto `cpus`/`gpus`."""
    import pandas as pd

    group_of = {m["name"]: u["name"] for u in units if u["fused"] for m in u["members"]}
    rows = [{"trial": t["name"], **{k: (v if not isinstance(v, dict) else json.dumps(v)) for k, v in t["axes"].items()},
             "seed": t["train"]["seed"], "epochs": t["train"]["epochs"], "params": t["params"],
             **({"fused group": group_of.get(t["name"], "-")} if group_of else {})} for t in trials]
    out(pd.DataFrame(rows).fillna("").to_markdown(index=False, intfmt=","))
    r = spec.resources
    n_units = len(units)
    what = f"{len(trials)} trials" + (f" in {n_units} Tune trials ({sum(u['fused'] for u in units)} fused groups "
                                      f"of up to {spec.fuse})" if group_of else "")
    by_cpu = int(cpus // r.cpu) if r.cpu else n_units
    if r.gpu and gpus:
        per_gpu = int(1 // r.gpu) if r.gpu <= 1 else 0
        by_gpu = int(gpus * per_gpu) if r.gpu <= 1 else int(gpus // r.gpu)
        at_once = min(by_cpu, by_gpu, n_units)
        out(f"plan: {what}; {r.cpu:g} CPU + {r.gpu:g} GPU each -> {per_gpu or 1} trial(s) per GPU; "
            f"{gpus:g} GPU(s), {cpus:g} CPU(s) -> {at_once} trial(s) at once")
    else:
        note = " (GPU spec: no GPU here, trials run on CPUs)" if r.gpu else ""
        out(f"plan: {what}; {r.cpu:g} CPU each; {cpus:g} CPU(s) -> {min(by_cpu, n_units)} trial(s) at once{note}")


def launch(spec_path: str, *, overrides: list[str] | None = None, dry_run: bool = False, address: str | None = None,
           name: str | None = None, storage: str | None = None, max_concurrent: int | None = None,
           fresh: bool = False, fuse: int | None = None, out=print) -> int:
    """Run (or resume, or grow) a grid; returns the process exit code (1 when any trial
    failed, 130 when interrupted by Ctrl-C, 143 when stopped by SIGTERM, which is handled as
    Ctrl-C: trials stopped, summary printed, launch recorded). Storage is a folder, file:///folder
    or s3://bucket/prefix."""
    spec, trials = load_trials(spec_path, [*(overrides or []), *([f"fuse={fuse}"] if fuse is not None else [])])
    name = name or spec.name
    _check_name(name)
    where = local_path(storage or "runs")
    remote = None if where is not None else Remote(storage, name)
    exp_dir = os.path.join(where, name) if remote is None else remote.uri
    reference = _reference_file(spec, spec_path)
    _check_data(trials, dry_run, out)  # before any folder is touched or Ray started
    if dry_run:
        with _mirror(remote, exp_dir) as view:
            return _dry_run(spec, trials, None if fresh else view, exp_dir, address or os.environ.get("RAY_ADDRESS"), out)
    if fresh and remote is None and os.path.exists(exp_dir):
        _set_aside(exp_dir, out)
    term, local = _Terminated(), remote is None
    try:
        with store.ExperimentDir(exp_dir).lock() if local else remote.lock(), term, _reserved(exp_dir, local):
            if fresh and remote is not None:
                remote.set_aside(out)
            with _mirror(remote, exp_dir) as view:
                return _run(spec, spec_path, trials, view, remote, exp_dir, reference, address, max_concurrent,
                            out, term)
    except KeyboardInterrupt:
        if not term.received:
            raise
        out(f"{exp_dir}: stopped by SIGTERM before any trial ran (the lock is released)")
        return 143
    except OSError as e:
        if diskio.disk_error(e) is None:
            raise
        raise GridrunError(diskio.disk_line(exp_dir, diskio.disk_error(e))) from None


@contextmanager
def _mirror(remote, exp_dir: str):
    """The experiment as a folder here: itself, or a private mirror of the object store's copy."""
    if remote is None:
        yield Path(exp_dir)
        return
    tmp = tempfile.mkdtemp(prefix="gridrun-mirror-")
    try:
        yield remote.pull(Path(tmp, remote.name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(spec, spec_path, trials, view: Path, remote, exp_dir: str, reference, address, max_concurrent, out,
         term: "_Terminated") -> int:
    """Under the lock: match, check and record the grid, run what is left, count and record it."""
    _adopt_names(view, trials, out, exp_dir)
    todo = _prepare_experiment(str(view), spec, trials, reference, out, exp_dir)
    if remote is not None:
        remote.push(view, [p.name for p in view.iterdir() if p.is_file() and p.name != store.LOCK])
    if not todo:
        out(f"{exp_dir}: all {len(trials)} trials have finished: nothing to run (--fresh starts over)")
        return 0
    ray = _connect(address)
    term.install()  # again: ray.init replaces the SIGTERM handler with its own sys.exit
    t0 = time.time()
    from .hparams import hparam_fields

    progress = _Progress(todo, out, exp_dir, live=_live_stream(out), early_stop=bool(spec.early_stop))
    tuner = _build_tuner(ray, spec, todo, exp_dir, max_concurrent, hparam_fields(trials), out, progress, remote)
    grid, twice, full = _fit(tuner, progress, exp_dir if remote is None else None, out)
    if remote is not None:
        remote.pull(view)  # the trials' files, as the nodes wrote them to the store
    code = _exit_code(_summarize(grid, todo, time.time() - t0, str(view), True, out, shown=exp_dir), term, twice,
                      full, exp_dir, out)
    if remote is None:
        diskio.release(exp_dir)  # room for the record
    _record_launch(str(view), ray, spec_path, time.time() - t0, code)
    if remote is not None:
        remote.push(view, [store.LAUNCHES, *(p.name for p in view.glob("gridrun_diff-*.patch"))])
    if full is not None:
        raise GridrunError(diskio.disk_line(exp_dir, full))
    return code


@contextmanager
def _reserved(exp_dir: str, local: bool):
    """Room for the launch record should the disk fill up (diskio.reserve), held while the launch
    runs; no room to begin with is a full disk before anything else is written."""
    if local:
        diskio.reserve(exp_dir)
    try:
        yield
    finally:
        if local:
            diskio.release(exp_dir)


class _Terminated:
    """SIGTERM handled as Ctrl-C while a launch runs (a context manager): the handler calls whatever
    handles SIGINT at that moment (Tune's during fit: stop the trials, save its state; else
    Python's: KeyboardInterrupt) and remembers it, so the launch ends as an interrupted one does
    (summary, launch record), with exit code 143 (128 + SIGTERM) instead of 130."""

    def __init__(self):
        self.received, self.before = False, None

    def handle(self, signum, frame):
        self.received = True
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIGINT ignored or default: stop as Python's Ctrl-C does
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signals go to the main thread only
            previous = signal.signal(signal.SIGTERM, self.handle)
            self.before = previous if self.before is None else self.before

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            signal.signal(signal.SIGTERM, self.before)
        return False


def _fit(tuner, progress, local_dir: str | None, out):
    """Run the Tuner: (its results, whether a second Ctrl-C or SIGTERM stopped it at once, the
    full-disk error or None). A first signal lets Tune stop the trials and save its state. A disk
    that filled up (`local_dir` only) gets its half-written files removed before they are counted."""
    grid, twice, full = [], False, None
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        out("interrupted twice: stopped at once")
        twice = True
    except Exception as e:  # Ray's writes on a full disk, or its reader choking on what they left
        full = diskio.disk_error(e) or (_storage_full(local_dir) if local_dir else None)
        if full is None:
            raise
    finally:
        progress.close()
    if full is None and local_dir:
        full = _storage_full(local_dir)
    if full is not None and local_dir:
        diskio.release(local_dir)
        _sweep_half_files(Path(local_dir))
    return grid, twice, full


def _exit_code(code: int, term: _Terminated, twice: bool, full, exp_dir: str, out) -> int:
    """1 when a trial failed; else 130 after Ctrl-C, 143 after SIGTERM; 2 (the CLI's code for the
    one line it prints) when the disk filled up."""
    if full is not None:
        return 2
    if code == 1 or not (term.received or twice):
        return code
    if term.received:
        out(f"{exp_dir}: stopped by SIGTERM: run the same command again to resume it")
    return 143 if term.received else 130


def _storage_full(exp_dir: str) -> OSError | None:
    """ENOSPC when the experiment's disk has under 1 MiB left for anyone but root (its reserve still
    held): trials there fail to write or sync their files, whatever error Ray shows for them."""
    free = diskio.free_bytes(exp_dir)
    if free is not None and free < 2**20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), exp_dir)
    return None


# Files that are whole or useless: JSON that must parse, arrays and torch zips that must open.
_JSON_FILES = ("summary.json", "config.json", "stopped.json", "node.json", store.GROUP_FILE, "state.json")


def _sweep_half_files(exp: Path) -> None:
    """After a full disk: remove the files a failed write or sync left empty or cut short (ours, and
    Ray's pickles, which its result reader would choke on), and checkpoints that cannot be
    resumed, so every trial reads as unfinished (resumable) or as what it really was."""
    import zipfile

    for d in [p for p in exp.rglob("*") if p.is_dir() and not p.is_symlink()]:
        if d.name.startswith("checkpoint_"):
            st, js = d / "state.pt", d / "state.json"
            if not (st.is_file() and zipfile.is_zipfile(st) and _json_ok(js)):
                shutil.rmtree(d, ignore_errors=True)
            continue
        for f in d.iterdir():
            if not f.is_file() or f.is_symlink():
                continue
            bad = (f.suffix == ".tmp" or (f.name in _JSON_FILES and not _json_ok(f))
                   or (f.suffix == ".npy" and not _npy_ok(f)) or (f.name == "model.pt" and not zipfile.is_zipfile(f))
                   or (f.suffix == ".pkl" and f.stat().st_size == 0)
                   or (f.name in ("error.txt", "result.json") and f.stat().st_size == 0))
            if bad:
                f.unlink(missing_ok=True)


def _json_ok(f: Path) -> bool:
    try:
        json.loads(f.read_text())
        return True
    except (OSError, ValueError):
        return False


def _npy_ok(f: Path) -> bool:
    import numpy as np

    try:
        np.load(f, allow_pickle=False, mmap_mode="r")  # a short file fails to map its declared shape
        return True
    except (OSError, ValueError, EOFError):
        return False


def _check_name(name: str) -> None:
    import re

    from .spec import NAME_RE

    if not re.match(NAME_RE, name):
        raise SpecError(f"experiment name {name!r} is not a safe folder name: use letters, digits, '.', '_' and '-', "
                        f"starting with a letter or digit")


def _reference_file(spec, spec_path: str) -> Path | None:
    if not spec.report.reference:
        return None
    ref = Path(spec_path).resolve().parent / spec.report.reference
    if not ref.is_file() or ref.suffix != ".csv":
        raise SpecError(f"{spec_path}: report.reference {spec.report.reference!r} is not a CSV file beside the spec "
                        f"({ref}): give the file name of the study's table")
    return ref


def _check_data(trials: list[dict], dry_run: bool, out) -> None:
    """Every data folder the grid names, found and read (headers only for a dry run, which never
    downloads); the arrays stay cached for the launch, which ships them to the trials."""
    from .data import DataError, check_files, load_arrays, search_dirs

    for data_dir in sorted({t["train"]["data_dir"] for t in trials}, key=str):
        if not dry_run:
            load_arrays(data_dir)
            continue
        try:
            check_files(data_dir, download=False)
        except DataError as e:
            if search_dirs(data_dir)[0][0] != "cache":  # a folder the user named is wrong: refuse now
                raise
            # Nothing named and nothing cached: the plan is still worth showing (it is often made on
            # another machine than the one that trains), and the launch will say the same or download.
            if os.environ.get("GRIDRUN_NO_DOWNLOAD", "") not in ("", "0"):
                out(f"notice: a launch here would stop: {e}")
            else:
                out("data: MNIST is not in the cache yet: the launch will download it first")


def _dry_run(spec, trials, view: Path | None, exp_dir: str, address, out) -> int:
    """What a launch would run (the trials an existing experiment lacks) and how it packs."""
    old = store.ExperimentDir(view).read_manifest() if view is not None else []
    if view is not None:
        _adopt_names(view, trials, out, exp_dir)
    units = plan_units(spec, trials)
    if old:
        _check_growth(exp_dir, old, trials)  # refuse what the launch would refuse
        done = results.settled(view)
        if todo := [t for t in trials if t["name"] not in done]:
            if len(todo) < len(trials):
                out(f"{exp_dir}: {len(trials) - len(todo)} of {len(trials)} trials already finished; "
                    f"the launch would run the other {len(todo)}:")
            trials, units = todo, _plan(spec, todo, old, view, out)
        else:
            out(f"{exp_dir}: all {len(trials)} trials have finished: nothing to run (--fresh starts over)")
            return 0
    if address:
        ray = _connect(address)
        out(_cluster_line(ray, per_node=True))
        res = ray.cluster_resources()
        cpus, gpus = res.get("CPU", 0), res.get("GPU", 0)
    else:
        import torch

        cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        out(f"local: {cpus} CPU(s), {gpus} GPU(s)")
    plan_table(spec, trials, units, cpus, gpus, out)
    return 0


def _set_aside(exp_dir: str, out) -> None:
    """--fresh: start over, but never delete results (the old folder becomes NAME.prev-N)."""
    holder = store.ExperimentDir(exp_dir).lock_holder()
    if holder:
        raise GridrunError(f"{exp_dir} is being launched by pid {holder.get('pid')} on {holder.get('host')}: "
                           f"--fresh cannot move it away while it runs")
    k = 1
    while os.path.exists(f"{exp_dir}.prev-{k}"):
        k += 1
    os.rename(exp_dir, f"{exp_dir}.prev-{k}")
    out(f"--fresh: the previous experiment is kept as {exp_dir}.prev-{k}")


def _prepare_experiment(exp_dir: str, spec, trials: list[dict], reference: Path | None, out,
                        shown: str | None = None) -> list[dict]:
    """Check the grid against what the folder already holds, record the effective spec and the
    manifest (with the fused group each trial runs in), and return the units still to run.
    `shown` names the experiment in messages (its URI when `exp_dir` is a mirror)."""
    exp = Path(exp_dir)
    exp_dir = shown or exp_dir
    old = store.ExperimentDir(exp).read_manifest()
    if old:
        _check_growth(exp_dir, old, trials)
    exp.mkdir(parents=True, exist_ok=True)
    done = results.settled(exp)
    todo_trials = [t for t in trials if t["name"] not in done]
    if len(todo_trials) < len(trials):
        out(f"{exp_dir}: {len(trials) - len(todo_trials)} of {len(trials)} trials already finished (kept untouched); "
            f"{len(todo_trials)} to run")
    todo = _plan(spec, todo_trials, old, exp, out)
    merged = {e["name"]: e for e in old}
    group_of = {m["name"]: u["name"] for u in todo if u["fused"] for m in u["members"]}
    for t in trials:
        group = group_of.get(t["name"]) if t["name"] not in done else (merged.get(t["name"]) or {}).get("group")
        merged[t["name"]] = {"name": t["name"], "id": t["id"], "axes": t["axes"], "params": t["params"],
                             "train": t["train"], "group": group}
    store.ExperimentDir(exp).write_manifest(list(merged.values()))
    store.ExperimentDir(exp).write_spec(spec.raw)
    if reference is not None:
        shutil.copy(reference, exp / "reference.csv")
    from . import hparams

    hparams.remove_experiment_summary(exp)  # `gridrun tensorboard` writes it into its view
    return todo


def _adopt_names(exp_dir, trials: list[dict], out, shown: str | None = None) -> None:
    """A planned trial that the experiment already holds under another name (the same values
    written another way: an axis instead of base, a default written out, 5e-4 for 0.0005)
    takes that name, so it is found finished, or resumed from its own folder, never run twice."""
    from .identity import trial_id

    held: dict[str, str] = {}
    for e in store.ExperimentDir(exp_dir).read_manifest():
        if isinstance(e.get("train"), dict):
            held.setdefault(trial_id(e["train"]), e["name"])
    if not held:
        return
    matched = []
    for t in trials:
        old = held.get(t["id"])
        if old and old != t["name"]:
            matched.append((t["name"], old))
            t["name"] = old
    from collections import Counter

    count = Counter(t["name"] for t in trials)
    for t in trials:  # a new trial whose label reads like an adopted one: its hash tells them apart
        if count[t["name"]] > 1 and held.get(t["id"]) != t["name"]:
            t["name"] = f"{t['name']}_{t['id'][:6]}"
    if matched:
        pairs = ", ".join(f"{new} = {old}" for new, old in matched[:5]) + (", ..." if len(matched) > 5 else "")
        out(f"{shown or exp_dir}: {len(matched)} trial(s) of this grid are already in the experiment under another "
            f"name (the same values, written differently), matched by value and kept under their names: {pairs}")


def _plan(spec, todo: list[dict], old: list[dict], exp: Path, out) -> list[dict]:
    """The units to run: a fused group interrupted by an earlier launch keeps its members
    together under its name, so they resume from its checkpoint, even when the grid has grown
    (regrouping would restart them from epoch 1); the dry run says when one cannot."""
    prior = {e["name"]: e["group"] for e in old if e.get("group")}
    has_state = {g for g in set(prior.values()) if any((exp / g).glob("checkpoint_*"))}
    units = plan_units(spec, todo, keep={n: g for n, g in prior.items() if g in has_state})
    kept, names = {u["name"] for u in units}, {t["name"] for t in todo}
    for g in sorted(has_state - kept):
        members = [n for n, gg in prior.items() if gg == g and n in names]
        if members:
            out(f"notice: fused group {g} was interrupted, but its unfinished members {', '.join(members[:4])} are "
                f"regrouped (fuse or the fused fields changed): they start again from epoch 1")
    return units


def _check_growth(exp_dir: str, old: list[dict], trials: list[dict]) -> None:
    """A relaunch may add trials (more seeds, more axis values) but not change or drop one that
    the folder already holds: that would mix results of two different grids."""
    from .config import with_defaults
    from .spec import config_id

    new_ids = {t["id"] for t in trials}
    new_by_name = {t["name"]: t for t in trials}
    for e in old:
        # Its identity from its config as this version fills it (a field added since it ran at
        # the default that reproduces it), not the id an older version hashed.
        oid = config_id(with_defaults(e.get("train") or {})) if e.get("train") else e.get("id")
        if oid in new_ids:
            continue
        mate = new_by_name.get(e["name"])  # only a trial of the same name is this one changed
        diff = ""
        if mate is not None:
            a, b = with_defaults(e.get("train") or {}), mate["train"]
            from .config import PLUMBING

            changed = sorted(k for k in set(a) | set(b) if k not in PLUMBING and a.get(k) != b.get(k))
            if changed:
                k = changed[0]
                diff = f": {k} was {a.get(k)!r}, now {b.get(k)!r}" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
        more = [x["name"] for x in old if x is not e and x["name"] not in new_by_name]
        lacks = f" and {len(more)} more ({', '.join(more[:3])}{', ...' if len(more) > 3 else ''})" if more else ""
        what = f"trial {e['name']} of a different grid{diff or f': this spec lacks it{lacks}'}"
        rel = os.path.relpath(exp_dir) if not os.path.relpath(exp_dir).startswith("..") else exp_dir
        again = f"gridrun launch {rel}/spec.yaml --name {os.path.basename(rel)} --storage {os.path.dirname(rel) or '.'}"
        copy = ""
        if "://" in exp_dir:  # the spec as launched is in the object store: it must be copied here first
            again = f"gridrun launch spec.yaml --name {os.path.basename(exp_dir)} --storage {os.path.dirname(exp_dir)}"
            copy = f" with spec.yaml copied from {exp_dir}/spec.yaml"
        raise SpecError(f"{exp_dir} holds {what}: a relaunch may only add trials; to go on with the experiment as it "
                        f"was launched, `{again}`{copy} (overrides added to it grow it), or launch with --name NEW, or "
                        f"--fresh to start over")


def _build_tuner(ray, spec, units: list[dict], exp_dir: str, max_concurrent, hparam_names: list[str], out,
                 progress: "_Progress", remote=None):
    res = ray.cluster_resources()
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if resources["gpu"] and not res.get("GPU"):
        out(f"notice: the spec asks {resources['gpu']:g} GPU per trial but this Ray has none: running on CPUs")
        resources["gpu"] = 0
        for u in units:
            for m in u["members"]:
                m["train"]["gpu_memory_fraction"] = None
    n = sum(len(u["members"]) for u in units)
    out(f"{_cluster_line(ray)}; {n} trials" + (f" in {len(units)} Tune trials" if n != len(units) else "")
        + f" -> {exp_dir}")
    # The driver reads and checks MNIST once; Ray ships the arrays to each node's object store,
    # so a trial finds its data whatever that node's disk holds (about 55 MB per node).
    from .data import load_arrays

    mnist = load_arrays(units[0]["members"][0]["train"]["data_dir"])
    launch_id = f"{time.time():.0f}-{os.getpid()}"
    for u in units:
        u["storage"] = f"{exp_dir}/{u['name']}" if remote is None else remote.child(u["name"])
        u["launch"], u["hparams"] = launch_id, hparam_names
    trainable = tune.with_resources(tune.with_parameters(run_trial, mnist=mnist), resources)
    # On an object store Ray writes through gridrun's pyarrow filesystem (endpoint and options
    # from the URI), which it ships to every node with the trials.
    where = dict(storage_path=os.path.dirname(exp_dir)) if remote is None else \
        dict(storage_path=remote.root, storage_filesystem=remote.fs)
    run_config = tune.RunConfig(
        name=os.path.basename(exp_dir) if remote is None else remote.name, **where, verbose=0, log_to_file=True,
        # Trial files (metrics, TensorBoard, logits) go to storage at every epoch's checkpoint,
        # from whichever node ran the trial: live reports and TensorBoard, and nothing left
        # behind on a node that dies. (Ray 2.60 syncs no artifacts by default.)
        sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True),
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[progress, _ray_trial_log(exp_dir), *_loggers()],
    )
    scheduler = None
    if spec.early_stop:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric="val_acc", mode="max", time_attr="training_iteration",
                                  max_t=max(u["members"][0]["train"]["epochs"] for u in units),
                                  grace_period=spec.early_stop.grace_period,
                                  reduction_factor=spec.early_stop.reduction_factor)
    import logging

    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # failures get our one-line [failed]
    return tune.Tuner(trainable, param_space={"unit": tune.grid_search(units)},
                      tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=max_concurrent,
                                                  trial_dirname_creator=lambda t: t.config["unit"]["name"],
                                                  trial_name_creator=lambda t: t.config["unit"]["name"]),
                      run_config=run_config)


def _live_stream(out):
    """Where the live progress line is redrawn: the terminal, when launch prints to one."""
    return sys.stdout if out is print and sys.stdout.isatty() else None


def _ray_trial_log(exp_dir: str):
    """Ray's own per-trial lines ("Trial ... completed. Last result: ...") go to the experiment
    folder's gridrun_ray.log, not to the terminal, where _Progress speaks. Passing Ray a
    TrialProgressCallback is what keeps it from adding its own, which prints."""
    from ray.tune.progress_reporter import TrialProgressCallback

    path = os.path.join(exp_dir, RAY_LOG) if "://" not in exp_dir else None

    class ToLog(TrialProgressCallback):
        def _print(self, msg: str):
            if path:
                with open(path, "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    return ToLog()


def _loggers():
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _summarize(grid, units: list[dict], seconds: float, exp_dir: str, local: bool, out, shown: str | None = None) -> int:
    """Count this launch's trials by what their folders say (Ray's ResultGrid for errors, and
    for everything when storage is not a local path)."""
    counts = {"finished": 0, "diverged": 0, "failed": 0, "stopped": 0, "interrupted": 0}
    by_name = {}
    for result in _readable_results(grid):
        unit = (result.config or {}).get("unit") or {}
        by_name[unit.get("name")] = result
    for u in units:
        result = by_name.get(u["name"])
        if result is not None and _result_error(result) is not None:
            counts["failed"] += len(u["members"])
            continue
        m = (result.metrics or {}) if result is not None else {}
        for t in u["members"]:
            if local:
                d = Path(exp_dir, u["name"], t["name"]) if u["fused"] else Path(exp_dir, u["name"])
                status = results.read_trial(d, t["name"], logits=False).status
                key = {"finished": "finished", "diverged": "diverged", "failed": "failed", "stopped": "stopped",
                       "broken": "failed"}.get(status, "interrupted")
            elif str(m.get("status", "")).startswith("diverged"):
                key = "diverged"
            else:
                key = "finished" if m.get("epoch", 0) >= t["train"]["epochs"] else "interrupted"
            counts[key] += 1
    n = sum(len(u["members"]) for u in units)
    words = f"{counts['finished']} finished, {counts['diverged']} diverged, {counts['failed']} failed"
    if counts["stopped"]:
        words += f", {counts['stopped']} stopped early"
    if counts["interrupted"]:
        words += f", {counts['interrupted']} interrupted (run the same command again to resume them)"
    out(f"{shown or exp_dir}: {n} trials in {seconds:.0f}s: {words}"
        + (" (see the [failed] lines above; rerun the same command to retry them)" if counts["failed"] else ""))
    return 1 if counts["failed"] else 130 if counts["interrupted"] else 0


def _readable_results(grid) -> list:
    """Ray's results that can be read: one whose files a full disk cut short (an empty error.pkl
    raises UnpicklingError) is left out and counted from its folder instead."""
    out = []
    for i in range(len(grid) if hasattr(grid, "__len__") else 0):
        try:
            out.append(grid[i])
        except Exception:  # noqa: BLE001  (any unpickling or I/O error of Ray's reader)
            continue
    return out


def _result_error(result):
    try:
        return result.error
    except Exception as e:  # noqa: BLE001  (an unreadable error is still an error)
        return e


def _record_launch(exp_dir: str, ray, spec_path: str, wall_s: float, code: int) -> None:
    """Append how and where this launch ran, and the code that ran it (the report quotes it)."""
    prov = store.provenance()
    diff = prov.get("git", {}).pop("diff", None)
    n = len(store.ExperimentDir(exp_dir).read_launches()) + 1
    if diff:
        try:
            prov["git"]["diff_file"] = store.ExperimentDir(exp_dir).write_diff(n, diff)
        except OSError as e:  # a full disk: the record itself matters more than the patch
            prov["git"]["diff_file"] = f"not saved ({e.strerror})"
    argv = sys.argv[1:] if sys.argv and os.path.basename(sys.argv[0]) in ("gridrun", "cli.py", "__main__.py") else None
    command = " ".join(["gridrun", *argv]) if argv else f"launch({spec_path!r})"
    store.ExperimentDir(exp_dir).append_launch({"command": command, "cluster": _cluster_line(ray), "wall_s": round(wall_s, 1),
                                                "exit": code, "finished_at": time.time(), "provenance": prov})

