"""TensorBoard's HParams dashboard for grids, written as protos with tensorboard's own
summary_v2 helpers (no TensorFlow needed).

Each trial's folder gets a session-start summary (its values, and a group name shared by the
seeds of one config: the config's readable label) and a session-end summary with its status,
written before the trial's last report, since a scheduler may stop a trial at that report
(the driver writes it for trials that ASHA stopped early or that failed).

The experiment summary (the axes with their sorted values; the metrics val/acc and val/loss,
never test accuracy, which chooses nothing) is not written into the experiment folder:
every folder holding events is a run to TensorBoard, so it would show as a run named ".",
and over all of runs/ the plugin takes the first experiment summary it finds, with that one
experiment's values. The plugin reads it from any run, so `gridrun tensorboard` writes one
for everything it shows into a view: a folder of links to the trials' files in which the
summary lives inside the first trial's run. In the view each run is EXPERIMENT/TRIAL and gets
the view's own session start: grouped by experiment and config (over all of runs/ a row once held
runs of three experiments), an `experiment` column, and every column's value for every trial.
Plain `tensorboard --logdir runs/NAME` works too; TensorBoard then derives the columns from the
sessions.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from .diskio import cache_dir

METRICS = ("val/acc", "val/loss")
SUFFIX = ".hparams"  # the file name ending of the HParams summaries gridrun writes


def hparam_fields(points: list[dict]) -> list[str]:
    """The config fields a grid varies, from its trials' axes: axes named after a field, fields of linked axes."""
    out: list[str] = []
    for axes in points:
        for axis, value in axes.items():
            for f in (value.keys() if isinstance(value, dict) else [axis]):
                if f not in out:
                    out.append(f)
    return out


def _value(v):
    if isinstance(v, bool) or isinstance(v, (int, float, str)):
        return v
    return json.dumps(v, sort_keys=True)  # dicts, lists, None: their JSON text


def trial_hparams(train: dict, names: list[str]) -> dict:
    return {n: _value(train.get(n)) for n in names}


def group_name(train: dict, names: list[str]) -> str:
    """One name for all seeds of a config: its readable label over the grid's axes (the
    HParams columns), which stay the same when a grid grows more values."""
    from .identity import config_label

    return config_label(train, names)


def _write(folder: Path, summary, at: float | None = None) -> None:
    from tensorboard.compat.proto.event_pb2 import Event

    from .storage.events import write_event_file

    now = time.time() if at is None else at
    write_event_file(folder, [Event(wall_time=now, file_version="brain.Event:2").SerializeToString(),
                              Event(wall_time=now, summary=summary).SerializeToString()], SUFFIX)


def write_session_start(trial_dir: str | Path, train: dict, names: list[str]) -> None:
    from tensorboard.plugins.hparams import summary_v2

    Path(trial_dir).mkdir(parents=True, exist_ok=True)
    _write(Path(trial_dir), summary_v2.hparams_pb(trial_hparams(train, names), trial_id=group_name(train, names)))


def write_session_end(trial_dir: str | Path, status: str) -> None:
    """status: "ok" (a finished trial) or anything else: diverged, failed, stopped early.
    TensorBoard knows no "stopped": a trial that did not finish reads as a failure."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    sei = SessionEndInfo(status=api_pb2.STATUS_SUCCESS if status == "ok" else api_pb2.STATUS_FAILURE,
                         end_time_secs=time.time())
    meta = metadata.create_summary_metadata(HParamsPluginData(session_end_info=sei))
    _write(Path(trial_dir), Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta,
                                                         tensor=metadata.NULL_TENSOR)]))


def has_session_end(trial_dir: str | Path) -> bool:
    """Whether a session end was written into the folder (read back from its summaries)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    from .storage.layout import TrialDir

    for f in TrialDir(trial_dir).events(SUFFIX):
        try:
            if any(v.tag == metadata.SESSION_END_INFO_TAG for e in EventFileLoader(str(f)).Load()
                   for v in e.summary.value):
                return True
        except Exception:  # a truncated file is no end
            continue
    return False


def remove_experiment_summary(exp_dir: str | Path) -> None:
    """Earlier versions wrote the experiment summary into the experiment folder itself (the
    run "."): remove it."""
    from .storage.layout import event_files

    for old in event_files(exp_dir, SUFFIX):
        old.unlink(missing_ok=True)


# ---------------------------------------------------------------- the view `gridrun tensorboard` shows

def experiment_summary(manifests: list[list[dict]], experiments: list[str] | None = None):
    """The experiment summary over every trial of the given manifests: each axis field with
    all its values (a trial's own value where its experiment did not vary the field), sorted;
    with `experiments` (their names) an `experiment` column first; the validation metrics."""
    from tensorboard.plugins.hparams import metadata, summary_v2
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    trials = [t for m in manifests for t in m if isinstance(t.get("axes"), dict) and isinstance(t.get("train"), dict)]
    hps = [summary_v2.HParam(EXPERIMENT, summary_v2.Discrete(sorted(set(experiments))))] if experiments else []
    for name in hparam_fields([t["axes"] for t in trials]):
        values = {_value(_resolved(t["train"]).get(name)) for t in trials}
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        bools = all(isinstance(v, bool) for v in values)
        values = values if numbers or bools else {str(v) for v in values}
        hps.append(summary_v2.HParam(name, summary_v2.Discrete(sorted(values))))
    metrics = [summary_v2.Metric(m, display_name=m, dataset_type=summary_v2.Metric.VALIDATION) for m in METRICS]
    pb = summary_v2.hparams_config_pb(hps, metrics, time_created_secs=time.time())
    experiment = metadata.parse_experiment_plugin_data(pb.value[0].metadata.plugin_data.content)
    for info in experiment.hparam_infos:  # a column whose values differ is shown first
        info.differs = len(info.domain_discrete.values) > 1
    data = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, experiment=experiment)
    pb.value[0].metadata.plugin_data.content = data.SerializeToString()
    return pb


EXPERIMENT = "experiment"  # the view's column naming the experiment a session comes from


def _resolved(train: dict) -> dict:
    """A stored config with every field filled in: a field its experiment did not vary shows the
    value it ran with, not a blank."""
    from .config import with_defaults

    return with_defaults(train)


def view_session_start(run: Path, experiment: str, train: dict, own: list[str], names: list[str],
                       started: float | None = None) -> None:
    """The view's session start of one trial: grouped by experiment and config (one row never
    holds runs of two experiments; the config labelled over its experiment's own axes, `own`),
    with the experiment as a column and every field's value (`names`: the view's columns), dated
    when the trial started (`started`), not when the view was built: after the trial's end."""
    from tensorboard.plugins.hparams import summary_v2

    values = {EXPERIMENT: experiment, **trial_hparams(_resolved(train), names)}
    _write(run, summary_v2.hparams_pb(values, trial_id=f"{experiment}: {group_name(train, own)}",
                                      start_time_secs=started), at=started)


def view_dir(logdir: Path) -> Path:
    """Where the view of `logdir` is built: the user's cache, one folder per logdir."""
    return cache_dir("tensorboard", hashlib.sha256(str(logdir.resolve()).encode()).hexdigest()[:12])


def build_view(root: Path, experiments: list[Path], view: Path) -> int:
    """A fresh view: the experiment summary over `experiments`, in the first trial's run, and
    the links to every trial's files (sync_view). Returns the number of trials linked."""
    from .storage.layout import EVENTS, ExperimentDir

    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    n = sync_view(root, experiments, view)
    runs = sorted(p.parent for p in view.rglob(EVENTS))
    if runs:
        _write(runs[0], experiment_summary([ExperimentDir(e).read_manifest() for e in experiments],
                                           [_name(root, e) for e in experiments]))
    return n


def _name(root: Path, exp: Path) -> str:
    """An experiment's name in the view: its path under `root` (the storage folder), else its name."""
    try:
        return exp.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # a linked experiment from elsewhere
        return exp.name


def sync_view(root: Path, experiments: list[Path], view: Path) -> int:
    """Link what the trials wrote since the last call (new trials, new event files), each
    trial's run named by its path under `root`, the experiment first. A trial of the manifest gets
    the view's own session start (view_session_start) in place of the one it wrote."""
    from .storage.layout import ExperimentDir

    manifests = {e: ExperimentDir(e).read_manifest() for e in experiments}
    names = hparam_fields([t["axes"] for m in manifests.values() for t in m if isinstance(t.get("axes"), dict)])
    n = 0
    for exp, manifest in manifests.items():
        trains = {t.get("name"): t["train"] for t in manifest if isinstance(t.get("train"), dict)}
        own = hparam_fields([t["axes"] for t in manifest if isinstance(t.get("axes"), dict)])
        for name, (d, _) in ExperimentDir(exp).trial_dirs().items():
            run = view / _name(root, exp) / d.relative_to(exp)
            n += 1
            if not run.is_dir() and name in trains:
                run.mkdir(parents=True)
                view_session_start(run, _name(root, exp), trains[name], own, names, _started(d))
            run.mkdir(parents=True, exist_ok=True)
            _link(d, run, own_start=name not in trains)
    return n


def _link(trial: Path, run: Path, own_start: bool) -> None:
    """Link the trial's event files into its run; its own session starts only when the view
    writes none (two starts in one run would be two groups' claim on one session)."""
    from .storage.layout import TrialDir

    for f in TrialDir(trial).events():
        link = run / f.name
        if not link.is_symlink() and (own_start or not f.name.endswith(SUFFIX) or not _is_start(f)):
            link.symlink_to(f.resolve())


def _started(trial: Path) -> float | None:
    """When the trial started: its own session-start file was written then and never again."""
    from .storage.layout import TrialDir

    starts = [f.stat().st_mtime for f in TrialDir(trial).events() if f.name.endswith(SUFFIX) and _is_start(f)]
    return min(starts) if starts else None


def _is_start(f: Path) -> bool:
    """Whether an HParams file of gridrun's holds a session start."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    try:
        return any(v.tag == metadata.SESSION_START_INFO_TAG for e in EventFileLoader(str(f)).Load()
                   for v in e.summary.value)
    except Exception:  # a truncated file: not linked
        return True
