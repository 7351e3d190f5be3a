"""The Ray worker: one Tune trial (a unit of the plan) trains, reports, checkpoints and resumes.

Everything a trial needs from the launch that started it (where its folder is in storage, the
launch's id, the HParams columns, the arrays of each dataset, whether it runs on
CPUs for want of a GPU) comes as one `LaunchContext` through `tune.with_parameters`; the
trial's config is only its unit. Imports ray (as launch.py does).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ray import tune

from .storage import layout
from .storage.safeio import Unreadable
from .plan import Unit
from .record import Trial
from .storage.layout import TrialDir


@dataclass(frozen=True)
class LaunchContext:
    """What every trial of one launch shares, shipped once through Ray's object store."""
    storage: str                   # the experiment in storage: a folder, or a URI without its options
    launch: str                    # this launch's id, recorded in each checkpoint
    hparams: tuple = ()            # the grid's HParams columns (hparams.hparam_fields)
    cpu_only: bool = False         # the spec asks for GPUs but the cluster has none
    query: str = ""                # the object store's options (?endpoint_override=...), for workers
    arrays: dict = field(default_factory=dict, repr=False)  # (dataset, data_dir) -> its four arrays

    def storage_of(self, unit: str) -> str:
        """Where a unit's folder (and Ray's checkpoints of it) lives in storage."""
        return f"{self.storage}/{unit}" + (f"?{self.query}" if self.query else "")

    def train_config(self, trial: Trial, out_dir: str) -> dict:
        """The trial's TrainConfig dict as it runs here (the engine's input: the record's config with
        its folder, and no GPU memory cap on CPUs)."""
        return {**trial.train, "out_dir": out_dir, **({"gpu_memory_fraction": None} if self.cpu_only else {})}


def run_trial(config: dict, context: LaunchContext) -> None:
    """One Tune trial: train one config, or a fused group of them, reporting metrics and a
    checkpoint every epoch. The data arrays were verified once by the driver."""
    import ray

    unit = Unit.from_tune(config["unit"])
    trial_dir = tune.get_context().get_trial_dir()
    node = ray.get_runtime_context().get_node_id()
    dirs = [str(d) for d in unit.member_dirs(trial_dir)]
    _start_sessions(unit, trial_dir, dirs, context)
    report = _Reporter(unit, context.launch, node, dirs)
    res = _train(unit, context, trial_dir, report)
    TrialDir(trial_dir).write_node(node, os.uname().nodename)
    end_sessions(dirs, report.ended)  # diverged, or resumed after its last epoch
    bad = [r["status"] for r in res if r["status"] != "ok"]
    if len(bad) == len(res) or not report.epochs:
        # Every member diverged (end the trial with its reason, not an error), or it resumed
        # from a state saved after its last epoch and trained nothing: say how it ended, or the
        # driver would see a trial with no result and take it for one stopped early.
        val = [r["final"]["val_acc"] for r in res if r["status"] == "ok" and (r.get("final") or {}).get("val_acc")
               is not None]
        tune.report({"status": bad[0] if len(bad) == len(res) else "ok", "node_id": node,
                     "epoch": max(r["epochs"] for r in res), **({"val_acc": max(val)} if val else {})})


def _start_sessions(unit: Unit, trial_dir: str, dirs: list[str], context: LaunchContext) -> None:
    """The group marker (a fused folder holds its members' folders) and each member's HParams start."""
    from . import hparams

    if unit.fused:  # marks the folder as a group for the reader
        TrialDir(trial_dir).write_group([m.name for m in unit.members])
    for m, d in zip(unit.members, dirs):
        hparams.write_session_start(d, m.train, list(context.hparams))


class _Reporter:
    """The trainer's on_epoch: the epoch's metrics and state go to Tune as one report and
    checkpoint (a member's last epoch ends its HParams session first: ASHA may stop it there)."""

    def __init__(self, unit: Unit, launch: str, node: str, dirs: list[str]):
        self.unit, self.launch, self.node, self.dirs = unit, launch, node, dirs
        self.epochs: list[int] = []         # the epochs reported by this process
        self.ended: set = set()             # the member folders whose session has ended
        self.notice: list[str] = []         # a line for the driver, sent with the next report
        self.state_dir = ""

    def __call__(self, m: dict, state_path) -> None:
        self.epochs.append(m["epoch"])
        if m["epoch"] >= self.unit.epochs:  # its final files are written: its status goes before
            end_sessions(self.dirs, self.ended)  # the last report, at which ASHA may stop it
        # The state folder holds only the state, and report() copies it to storage before it
        # returns, so it is the checkpoint as it stands (no second copy per epoch).
        TrialDir(self.state_dir).write_state_info(m["epoch"], self.launch)
        extra = {"notice": self.notice.pop()} if self.notice else {}
        if not self.unit.fused:  # what ASHA watches (launch.py): never a fused group's best member
            extra["trial_val_acc"] = m["val_acc"]
        tune.report({**m, "node_id": self.node, "status": "running", **extra},
                    checkpoint=tune.Checkpoint.from_directory(self.state_dir))


def _train(unit: Unit, context: LaunchContext, trial_dir: str, report: _Reporter) -> list[dict]:
    """Train the unit in a scratch state folder, from the newest checkpoint there is; a corrupt
    or foreign checkpoint starts it over, and says so."""
    sweep_stale_state()
    work = tempfile.mkdtemp(prefix=f"gridrun-state-{os.getpid()}-")
    report.state_dir = os.path.join(work, "state")
    try:
        try:
            return _go(unit, context, trial_dir, report, _resume_state(context.storage_of(unit.name), work))
        except layout.StateError as e:
            report.notice.append(f"{e}; the trial starts again from epoch 1")
            print(f"gridrun: notice: {report.notice[-1]}", file=sys.stderr)
            shutil.rmtree(report.state_dir, ignore_errors=True)
            return _go(unit, context, trial_dir, report, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _go(unit: Unit, context: LaunchContext, trial_dir: str, report: _Reporter, resume_from: str | None) -> list:
    arrays = context.arrays.get(unit.data)  # this unit's dataset (shipped per dataset): never another's
    from .train import Folders, train

    configs = [context.train_config(m, os.path.join(trial_dir, m.name) if unit.fused else trial_dir)
               for m in unit.members]
    return train(configs, Folders(report.state_dir, report, trial_dir if unit.fused else None), resume_from, arrays)


def end_sessions(dirs: list, ended: set, status: str | None = None) -> None:
    """TensorBoard's session end for each trial folder not yet ended: `status`, else what its
    summary says ("ok", "diverged at epoch k"), else failed."""
    from . import hparams

    for d in dirs:
        if d in ended:
            continue
        hparams.write_session_end(d, status or TrialDir(d).summary_status("failed"))
        ended.add(d)


def sweep_stale_state() -> None:
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



def _resume_state(where: str, work: str) -> str | None:
    """The state to continue from: Ray's checkpoint on a retry within this launch, else the
    newest checkpoint a previous launch left in the unit's folder in storage (`where`), else None."""
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if os.path.exists(os.path.join(d, layout.STATE)):
                shutil.copy(os.path.join(d, layout.STATE), os.path.join(work, layout.RESUME))
                return os.path.join(work, layout.RESUME)
    best = _newest_checkpoint(where)
    if best is None:
        return None
    import pyarrow.fs as pafs

    fs, path = best
    dst = os.path.join(work, layout.RESUME)
    try:
        pafs.copy_files(f"{path}/{layout.STATE}", dst, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError:
        return None
    return dst


def _newest_checkpoint(where: str):
    """(filesystem, path) of the checkpoint folder under `where` with the latest epoch, or None."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(where) if "://" in where else (pafs.LocalFileSystem(), where)
    best, best_epoch = None, 0
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not os.path.basename(info.path).startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{layout.STATE_INFO}") as f:
                epoch = layout.parse_state_info(f.read())["epoch"]
        except (OSError, Unreadable):
            continue
        if epoch > best_epoch:
            best, best_epoch = info.path, epoch
    return (fs, best) if best is not None else None
