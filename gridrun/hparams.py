"""TensorBoard's HParams dashboard for a grid, written as protos (no TensorFlow needed).

The experiment's summary (the grid's axes with their discrete values; the metrics val/acc and
val/loss, never test accuracy, which chooses nothing) goes once into the experiment folder.
Each trial's folder gets a session-start summary with its values and a group name shared by
the seeds of one config, so TensorBoard shows a config's seeds together, and a session-end
summary with its status. Not SummaryWriter.add_hparams: that makes a subfolder per call.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

METRICS = ("val/acc", "val/loss")


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


def group_name(train: dict) -> str:
    """One name for all seeds of a config (every field but seed and plumbing)."""
    from .identity import config_id

    return config_id(train)


def _summary(tag: str, plugin_data):
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = HParamsPluginData(version=PLUGIN_DATA_VERSION, **plugin_data)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                  content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def _struct_value(v):
    from google.protobuf import struct_pb2

    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, (int, float)):
        return struct_pb2.Value(number_value=float(v))
    return struct_pb2.Value(string_value=str(v))


def _write(folder: Path, summary) -> None:
    from torch.utils.tensorboard.writer import FileWriter

    w = FileWriter(str(folder), filename_suffix=".hparams")
    w.add_summary(summary)
    w.flush()
    w.close()


def write_experiment(exp_dir: str | Path, trials: list[dict]) -> None:
    """The experiment-level summary, replacing the one a previous launch wrote."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams.metadata import EXPERIMENT_TAG

    names = hparam_fields(trials)
    infos = []
    for n in names:
        values = []
        for t in trials:
            v = _value(t["train"].get(n))
            if v not in values:
                values.append(v)
        kind = ("DATA_TYPE_BOOL" if all(isinstance(v, bool) for v in values) else "DATA_TYPE_FLOAT64"
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) else "DATA_TYPE_STRING")
        if kind == "DATA_TYPE_STRING":
            values = [str(v) for v in values]
        infos.append(api_pb2.HParamInfo(name=n, type=api_pb2.DataType.Value(kind),
                                        domain_discrete=struct_pb2.ListValue(values=[_struct_value(v) for v in values])))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m), display_name=m,
                                  dataset_type=api_pb2.DatasetType.Value("DATASET_VALIDATION")) for m in METRICS]
    exp = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    folder = Path(exp_dir)
    for old in folder.glob("events.out.tfevents.*.hparams"):
        old.unlink()
    _write(folder, _summary(EXPERIMENT_TAG, {"experiment": exp}))


def write_session_start(trial_dir: str | Path, train: dict, names: list[str]) -> None:
    from tensorboard.plugins.hparams.metadata import SESSION_START_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionStartInfo

    ssi = SessionStartInfo(group_name=group_name(train), start_time_secs=time.time())
    for k, v in trial_hparams(train, names).items():
        ssi.hparams[k].CopyFrom(_struct_value(v))
    Path(trial_dir).mkdir(parents=True, exist_ok=True)
    _write(Path(trial_dir), _summary(SESSION_START_INFO_TAG, {"session_start_info": ssi}))


def write_session_end(trial_dir: str | Path, ok: bool) -> None:
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams.metadata import SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionEndInfo

    sei = SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS" if ok else "STATUS_FAILURE"),
                         end_time_secs=time.time())
    _write(Path(trial_dir), _summary(SESSION_END_INFO_TAG, {"session_end_info": sei}))
