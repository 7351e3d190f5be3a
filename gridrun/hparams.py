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
summary lives inside the first trial's run. Plain `tensorboard --logdir runs/NAME` works too;
TensorBoard then derives the columns from the sessions.
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


def hparam_fields(trials: list[dict]) -> list[str]:
    """The config fields the grid varies: axes named after a field, and fields of linked axes."""
    out: list[str] = []
    for t in trials:
        for axis, value in t["axes"].items():
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


def _write(folder: Path, summary) -> None:
    from tensorboard.compat.proto.event_pb2 import Event

    from .store import write_event_file

    now = time.time()
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

    from .store import TrialDir

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
    from .store import event_files

    for old in event_files(exp_dir, SUFFIX):
        old.unlink(missing_ok=True)


# ---------------------------------------------------------------- the view `gridrun tensorboard` shows

def experiment_summary(manifests: list[list[dict]]):
    """The experiment summary over every trial of the given manifests: each axis field with
    all its values, sorted; the validation metrics."""
    from tensorboard.plugins.hparams import metadata, summary_v2
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    trials = [t for m in manifests for t in m if isinstance(t.get("axes"), dict) and isinstance(t.get("train"), dict)]
    hps = []
    for name in hparam_fields(trials):
        values = {_value(t["train"].get(name)) for t in trials}
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


def view_dir(logdir: Path) -> Path:
    """Where the view of `logdir` is built: the user's cache, one folder per logdir."""
    return cache_dir("tensorboard", hashlib.sha256(str(logdir.resolve()).encode()).hexdigest()[:12])


def build_view(logdir: Path, experiments: list[Path], view: Path) -> int:
    """A fresh view: the experiment summary over `experiments`, in the first trial's run, and
    the links to every trial's files (sync_view). Returns the number of trials linked."""
    from .store import EVENTS, ExperimentDir

    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    n = sync_view(logdir, experiments, view)
    runs = sorted(p.parent for p in view.rglob(EVENTS))
    if runs:
        _write(runs[0], experiment_summary([ExperimentDir(e).read_manifest() for e in experiments]))
    return n


def sync_view(logdir: Path, experiments: list[Path], view: Path) -> int:
    """Link what the trials wrote since the last call (new trials, new event files), each
    trial's run named by its path under `logdir`."""
    from .store import ExperimentDir, TrialDir

    n = 0
    for exp in experiments:
        for d, _ in ExperimentDir(exp).trial_dirs().values():
            run = view / d.resolve().relative_to(logdir.resolve())
            run.mkdir(parents=True, exist_ok=True)
            n += 1
            for f in TrialDir(d).events():
                link = run / f.name
                if not link.is_symlink():
                    link.symlink_to(f.resolve())
    return n
