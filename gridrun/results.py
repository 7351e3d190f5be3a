"""What trials wrote, as records: trial and experiment records with their status, and the check
of every test accuracy against the test labels, on top of storage/layout.py (which names, writes and
reads every file, bounded).

Used by `gridrun report`, `gridrun status`, launch's summary, and gridrun.load()/history().
Reads files only: never starts Ray, never trains, never unpickles (JSON, CSV, .npy without
pickles, YAML without aliases), so a folder made by someone else runs no code here.

A trial's status, from its folder, decided here alone for every command (report, best, export,
status, load, history and the launch's plan, which reruns a broken trial):
  finished    summary.json says ok, its logits (or, in a slim export, its predicted labels) and
              true labels are readable and pass every check below
  diverged    summary.json says "diverged at epoch k"
  pruned      summary.json says "pruned at epoch k": a rung of its fused group retired it (its
              files hold epoch k's scores); never a finished run or seed, never rerun
  failed      Ray's error.txt and no summary: the trial raised (after its retries)
  stopped     stopped.json: early stopping (ASHA) ended it before its last epoch
  unfinished  a folder with some epochs and no summary: running, interrupted or killed
  pending     in the launch manifest, no folder yet
  broken      files that cannot be read, or a finished trial that fails a check: its config.json
              is not the config the manifest planned for it; an accuracy in metrics.csv outside
              [0, 1]; saved labels that are not the data's (the data files of its data folder when
              they are found here, else the checksums the launch recorded in the manifest, else,
              for an older folder with neither, the labels a strict majority of its trials saved);
              a test or validation accuracy its predictions do not reproduce

A malformed file (safeio.Unreadable) marks its trial broken (or is one of its experiment's
`problems`) with a reason; nothing read here raises on what a folder holds.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import GridrunError
from .config import FIELD_TYPES, NOT_CONFIG, PLUMBING, with_defaults
from .identity import OFF, config_label, varying_of
from .record import Trial, read_manifest
from .storage.layout import CONFIG, METRICS, SPLITS, SUMMARY, ExperimentDir, TrialDir, finite_number, labels_file
from .storage.safeio import Unreadable

STATUSES = ("finished", "diverged", "pruned", "failed", "stopped", "unfinished", "pending", "broken")
SETTLED = ("finished", "diverged", "pruned")  # what a launch leaves alone; a broken trial is rerun
AGREE_TOL = 5e-4  # float16 logits may flip a near-tie; more than 5 in 10,000 is a real mismatch
ACCURACIES = ("train_acc", "val_acc", "test_acc")  # metrics.csv's fields that must lie in [0, 1]
SOURCES = {  # where the test labels every finished trial was checked against came from (the report says)
    "mnist": "the MNIST test-label file (checksum verified)",
    "data": "the test-label file of the trials' data folder",
    "dataset": "the test labels of the dataset's own files, found here",
    "recorded": "the labels the trials saved, each matching the test-label checksum recorded at launch "
                "(the data files were not found here)",
    "saved": "the labels the trials saved (the data files were not found here)"}


@dataclass
class TrialRecord:
    name: str
    dir: Path | None
    config: dict
    status: str = "pending"
    reason: str = ""
    params: int | None = None
    history: list = field(default_factory=list)
    val_logits: np.ndarray | None = None
    test_logits: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    val_preds: np.ndarray | None = None         # predicted classes: argmax of the logits, or a slim export's
    test_preds: np.ndarray | None = None
    test_acc_recomputed: float | None = None
    val_acc_recomputed: float | None = None
    meta: dict = field(default_factory=dict)    # config.json's _meta: params, device, versions, ...
    summary: dict = field(default_factory=dict)
    group: str | None = None                    # the fused group it trained in, if any
    data_moved: bool = False                    # broken only because the data found here is not what it ran on

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def epoch_seconds(self) -> list[float]:
        """Seconds of each epoch that recorded them (a hand-made metrics.csv may have none)."""
        return [h["seconds"] for h in self.history if h.get("seconds") is not None]

    def spoil(self, reason: str) -> None:
        """A check failed: the trial is broken, and says why."""
        self.status, self.reason = "broken", reason[:300]

    @cached_property
    def trial(self) -> Trial:
        """Its config as it ran (config.json's, else the manifest's) as a record, so its canonical
        form, config key and id are resolved once; read after its files are (never before)."""
        return Trial.make(self.name, {}, self.config, self.params)

    def updated_at(self) -> float:
        """When its folder last changed (newest file), for `status`."""
        try:
            return max([p.lstat().st_mtime for p in self.dir.iterdir()] or [self.dir.lstat().st_mtime])
        except (OSError, AttributeError):
            return 0.0


@dataclass
class Experiment:
    name: str
    dir: Path
    spec: dict
    trials: list[TrialRecord]
    manifest: list[Trial] = field(default_factory=list)  # the trials the launches planned (record.Trial.read)
    launches: list[dict] = field(default_factory=list)
    label_source: str = ""
    test_labels: np.ndarray | None = None  # what every finished trial was scored against (one dataset)
    problems: list[str] = field(default_factory=list)  # experiment files that could not be read
    by_dataset: dict = field(default_factory=dict)  # dataset -> (test labels, where they came from)
    label_fields: list = field(default_factory=list)  # a study's view: label its configs by these (its searched axes)

    def datasets(self) -> list[str]:
        """The datasets its trials train on, in trial order (MNIST when a trial's config says none)."""
        return list(dict.fromkeys(dataset_of(t) for t in self.trials)) or ["mnist"]

    def view(self, dataset: str) -> "Experiment":
        """The experiment's trials of one dataset, with that dataset's test labels: what one
        section of the report, its ensemble and its chosen config are computed from."""
        labels, source = self.by_dataset.get(dataset, (None, ""))
        return Experiment(self.name, self.dir, self.spec, [t for t in self.trials if dataset_of(t) == dataset],
                          self.manifest, self.launches, source, labels, self.problems, self.by_dataset,
                          self.label_fields)

    @property
    def labels_only(self) -> bool:
        """Whether some finished trial has predicted labels but no logits (a slim export)."""
        return any(t.status == "finished" and t.test_logits is None for t in self.trials)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out


def dataset_of(t: TrialRecord) -> str:
    d = t.config.get("dataset")
    return d if isinstance(d, str) else "mnist"


# ---------------------------------------------------------------- reading one trial

def read_trial(d: Path | None, name: str, config: dict | None = None) -> TrialRecord:
    """One trial folder -> TrialRecord with its status and reason, as far as its own files tell
    (load_experiment adds the checks that need the experiment); a broken file never raises."""
    t = TrialRecord(name=name, dir=d, config=dict(config) if isinstance(config, dict) else {})
    if d is None or not d.is_dir():  # pending: its config as the manifest has it, filled as a trial's is
        t.config = {k: v for k, v in with_defaults(t.config).items() if k != "out_dir"} if t.config else {}
        return t
    if d.is_symlink():
        t.status, t.reason = "broken", "its folder is a symbolic link (not read)"
        return t
    try:
        _read_files(t, d)
    except (Unreadable, OSError) as e:
        t.status, t.reason = "broken", str(e)[:200]
    return t


def _read_files(t: TrialRecord, d: Path) -> None:
    trial = TrialDir(d)
    if trial.has(CONFIG):
        t.config, t.meta = trial.read_config()
        t.params = t.meta.get("params")
    t.config = {k: v for k, v in with_defaults(t.config).items() if k != "out_dir"} if t.config else {}
    if trial.has(METRICS):
        t.history = trial.read_history()
        _check_accuracies(t.history)
    if not trial.has(SUMMARY):
        if trial.failed():
            t.status, t.reason = "failed", trial.error_line()
        elif trial.stopped():
            t.status, t.reason = "stopped", f"stopped early by ASHA after epoch {len(t.history)}"
        else:
            epochs = t.config.get("epochs", "?")
            t.status, t.reason = "unfinished", f"epoch {len(t.history)} of {epochs} (running, stopped or interrupted)"
        return
    t.summary = summary = trial.read_summary()
    t.params = t.params if t.params is not None else summary.get("params")
    if summary.get("status") != "ok":
        pruned = str(summary.get("status")).startswith("pruned at epoch")
        t.status, t.reason = "pruned" if pruned else "diverged", str(summary.get("status", "unknown status"))[:200]
        return
    try:
        _read_scores(t, trial)
    except Unreadable as e:
        raise Unreadable(f"finished, but its logits/labels are missing or truncated ({str(e)[:120]})") from None
    t.status = "finished"


def _check_accuracies(history: list[dict]) -> None:
    """Every accuracy metrics.csv records lies in [0, 1] (or is missing: NaN without validation)."""
    for row in history:
        for k in ACCURACIES:
            v = row.get(k)
            if v is not None and not math.isnan(v) and not 0.0 <= v <= 1.0:
                e = row.get("epoch")
                at = f" at epoch {e:g}" if e is not None and math.isfinite(e) else ""
                raise Unreadable(f"{METRICS}: {k} {v:g}{at} is not an accuracy in [0, 1]")


def _classes(t: TrialRecord) -> int:
    """How many logits a trial's predictions hold: the MNIST family's 10, else what its metadata
    recorded (the data's classes), else its logits' width as long as they hold at least 2."""
    from .datasets import MAX_CLASSES, NAMES

    if dataset_of(t) in NAMES:
        return 10
    n = t.meta.get("classes")
    return n if isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= MAX_CLASSES else 10


def _read_scores(t: TrialRecord, trial: TrialDir) -> None:
    """Its predictions (logits or a slim export's classes) and labels, as many of each per split."""
    classes = _classes(t)
    t.val_logits, t.val_preds = trial.read_scores("val", classes)
    t.test_logits, t.test_preds = trial.read_scores("test", classes)
    t.val_labels, t.test_labels = trial.read_labels("val", classes), trial.read_labels("test", classes)
    for split, preds, labels in (("val", t.val_preds, t.val_labels), ("test", t.test_preds, t.test_labels)):
        if len(preds) != len(labels):
            raise Unreadable(f"{len(preds)} {split} predictions for {len(labels)} {split} labels")


# ---------------------------------------------------------------- reading an experiment

def load_experiment(path: Path) -> Experiment:
    """Every trial of an experiment folder with its status, as every command sees it: each
    finished trial checked (check_finished), its test and validation accuracy recomputed."""
    path = Path(path)
    problems: list[str] = []
    folder = ExperimentDir(path)
    manifest = read_manifest(folder.read_manifest(problems))
    dirs = folder.trial_dirs()
    trials = []
    for e in manifest:
        d, group = dirs.pop(e.name, (None, e.group))
        trials.append(read_trial(d, e.name, dict(e.train) or None))
        trials[-1].params = trials[-1].params if trials[-1].params is not None else e.params
        trials[-1].group = group
    for n, (d, group) in sorted(dirs.items()):
        trials.append(read_trial(d, n, None))
        trials[-1].group = group
    # Named by its folder, never by the name inside its spec: an old copy (NAME.prev-1) or a
    # foreign folder must not write its report over another experiment's.
    exp = Experiment(path.resolve().name, path, folder.read_spec(problems), trials, manifest,
                     folder.read_launches(problems), problems=problems)
    check_finished(exp)
    return exp


def settled(path: Path) -> dict[str, Path]:
    """The trials a launch leaves alone (finished or diverged, as load_experiment decides), name -> folder."""
    return {t.name: t.dir for t in load_experiment(path).trials if t.status in SETTLED and t.dir is not None}


def _finished(exp: Experiment, dataset: str | None = None) -> list[TrialRecord]:
    return [t for t in exp.trials if t.status == "finished" and dataset in (None, dataset_of(t))]


def check_finished(exp: Experiment) -> None:
    """The checks a finished trial must pass to stay finished, in turn: its config is the one the
    manifest planned, its saved labels are the data's, and its test and validation accuracies are
    what its predictions score; a trial that fails one is broken, with why."""
    planned = {e.name: e for e in exp.manifest}
    for t in _finished(exp):
        if why := _config_differs(t, planned.get(t.name)):
            t.spoil(why)
    for dataset in exp.datasets():  # each trial against its own dataset's labels, never another's
        exp.by_dataset[dataset] = true_test_labels(exp, planned, dataset)
        for t in _finished(exp, dataset):
            _recompute(t, exp.by_dataset[dataset][0])
    if len(exp.by_dataset) == 1:  # one dataset: the experiment's labels are its
        exp.test_labels, exp.label_source = next(iter(exp.by_dataset.values()))


def _config_differs(t: TrialRecord, planned: Trial | None) -> str:
    """'' when the trial's config.json holds the values the manifest planned for it (every field
    the entry sets, by value as identity.canonical resolves them, plumbing aside: a launch's entry
    sets them all), else why not."""
    if not t.config or planned is None or not planned.train:
        return ""
    a, b = t.trial.canonical, planned.canonical
    k = next((k for k in sorted(planned.train) if k not in PLUMBING and a.get(k) != b.get(k)), None)
    if k is None:
        return ""
    return (f"its {CONFIG} says {k}={a.get(k)!r} but the manifest planned {k}={b.get(k)!r}: not the trial the "
            f"grid planned")


def true_test_labels(exp: Experiment, planned: dict[str, Trial], dataset: str = "mnist") -> tuple:
    """(labels, where they come from) of one dataset's finished trials: each trial's saved
    validation and test labels must be the data's (the data files of its dataset when found here,
    else the checksums the launch recorded), and an older folder with neither goes by the labels
    most of its trials saved; a trial that saved others, or was scored on another test set, is broken."""
    cache: dict = {}
    sources: dict[str, str] = {}
    legacy = []
    for t in _finished(exp, dataset):
        expected = _data_labels(t, cache)
        recorded = getattr(planned.get(t.name), "labels", None) or {}
        if expected is None and not recorded:
            legacy.append(t)
        elif (differ := _labels_differ(t, expected, recorded))[0]:
            t.spoil(differ[0])
            t.data_moved = differ[1]
        else:
            sources[t.name] = ("recorded" if expected is None else "dataset" if dataset != "mnist" else
                               "mnist" if len(expected["test"]) == 10000 else "data")
    if legacy:
        sources.update((t.name, "saved") for t in _majority(exp, legacy))
    done = _finished(exp, dataset)
    if not done:
        return None, ""
    first = done[0]
    for t in done[1:]:
        if not np.array_equal(t.test_labels, first.test_labels):
            t.spoil(f"it was scored on another test set ({len(t.test_labels):,} labels) than {first.name} "
                    f"({len(first.test_labels):,})")
    return first.test_labels, SOURCES[sources[first.name]]


def _data_labels(t: TrialRecord, cache: dict) -> dict | None:
    """The validation and test labels of the trial's data folder and split, when its data files
    are found here (label files only, never downloaded), else None."""
    key = (dataset_of(t), t.config.get("data_dir"), t.config.get("val_size", 5000), t.config.get("split_seed", 0))
    if key not in cache:
        from .datasets import split_labels

        try:
            cache[key] = split_labels(*key)
        except (GridrunError, OSError, ValueError, TypeError):
            cache[key] = None
    return cache[key]


def _labels_differ(t: TrialRecord, expected: dict | None, recorded: dict) -> tuple[str, bool]:
    """('', False) when the trial's saved labels are the data's (`expected`), or, without the data,
    match the checksums the launch recorded; else (why not, whether its labels are the ones the
    launch recorded: the data found here moved, not the trial)."""
    from .data import label_digest

    for split in SPLITS:
        saved = t.val_labels if split == "val" else t.test_labels
        digest = label_digest(saved)
        if expected is not None and not np.array_equal(saved, expected[split]):
            hint = (f"; it matches the checksum recorded at launch: {NOT_THE_DATA} ({put_back(t.config)})"
                    if recorded.get(split) == digest else "")
            return (f"its {labels_file(split)} ({len(saved):,} labels) differs from the {split} labels of the data "
                    f"files found here{hint}"), bool(hint)
        if expected is None and recorded.get(split) not in (None, digest):
            return f"its {labels_file(split)} differs from the {split}-label checksum recorded at launch", False
    return "", False


NOT_THE_DATA = "the data files found here are not the ones the experiment ran on"  # plan refuses to rerun on them


def put_back(config: dict) -> str:
    """How to give the checks the data a trial ran on, for its kind of dataset."""
    from .datasets import kind

    dataset, folder = config.get("dataset") or "mnist", config.get("data_dir")
    if kind(dataset) == "mnist":
        return f"put the MNIST files it ran on back in {folder}" if folder else "set GRIDRUN_DATA to those"
    return (f"put {dataset}'s files back in torchvision's cache" if kind(dataset) == "torchvision"
            else f"put the data the experiment ran on back at {dataset}")


def _majority(exp: Experiment, legacy: list[TrialRecord]) -> list[TrialRecord]:
    """An older folder with neither the data nor recorded checksums: the test labels a strict
    majority of these trials saved count, and a trial that saved others is broken; returns the
    majority (no majority: the experiment cannot be checked, an error)."""
    saved: dict[bytes, list[TrialRecord]] = {}
    for t in legacy:
        saved.setdefault(t.test_labels.tobytes(), []).append(t)
    most = max(saved.values(), key=len)
    if 2 * len(most) <= len(legacy):
        raise GridrunError(f"{exp.dir}: trials saved different test labels and the data files are not here: "
                           f"set GRIDRUN_DATA so the report can check them against MNIST")
    for t in legacy:
        if not any(t is m for m in most):
            t.spoil(f"its {labels_file('test')} differs from the one {len(most)} of {len(legacy)} finished trials "
                    f"saved (set GRIDRUN_DATA to check against MNIST)")
    return most


def _recompute(t: TrialRecord, labels: np.ndarray) -> None:
    """Its test and validation accuracy from its predictions (the argmax of its logits, or a slim
    export's saved labels, which are that argmax); one metrics.csv disagrees with is broken."""
    scores = "logits" if t.test_logits is not None else "predicted labels"
    t.test_acc_recomputed = float((t.test_preds == labels).mean())
    said = t.final.get("test_acc")
    if said is None or not abs(said - t.test_acc_recomputed) <= AGREE_TOL:
        return t.spoil(f"reported test acc {said} but its {scores} score {t.test_acc_recomputed:.4f}")
    said = t.final.get("val_acc")
    if not len(t.val_labels):  # val_size: 0: no validation value may be claimed
        if finite_number(said):
            t.spoil(f"reported val acc {said} but it saved no validation labels (val_size: 0)")
        return
    t.val_acc_recomputed = float((t.val_preds == t.val_labels).mean())
    if said is None or not abs(said - t.val_acc_recomputed) <= AGREE_TOL:
        t.spoil(f"reported val acc {said} but its {scores} score {t.val_acc_recomputed:.4f} on the validation labels")


def find_experiments(targets: list[str], storage: str = "runs") -> list[Path]:
    """Experiment folders named by NAME (under storage) or PATH; all under storage when none."""
    if not targets:
        root = Path(storage)
        found = sorted(d for d in root.iterdir() if ExperimentDir(d).is_experiment()) if root.is_dir() else []
        if not found:
            raise GridrunError(f"no experiments under {root}/: run `gridrun launch SPEC` first or name a folder")
        return found
    paths = []
    for t in targets:
        bare = os.sep not in t and not t.startswith(".")  # a NAME: under storage first, then here
        for cand in ((Path(storage) / t, Path(t)) if bare else (Path(t), Path(storage) / t)):
            if cand.is_dir() and ExperimentDir(cand).is_experiment():
                paths.append(cand)
                break
        else:
            raise GridrunError(f"no experiment {t!r} (looked for {t} and {Path(storage) / t}): "
                               f"give a name under {storage}/ or an experiment folder")
    return paths


# ---------------------------------------------------------------- results as pandas

def resolve_experiment(name_or_path: str | os.PathLike, storage: str | None) -> Path:
    """An experiment by NAME under `storage` (None: $GRIDRUN_STORAGE, else runs/, as the CLI; an
    s3:// store is mirrored here first) or by its folder."""
    from .storage.backends import local_path, local_view

    storage = storage or os.environ.get("GRIDRUN_STORAGE") or "runs"
    if local_path(storage) is None:
        bare = os.sep not in str(name_or_path) and not Path(name_or_path).is_dir()
        storage = local_view(storage, [str(name_or_path)]) if bare else "runs"
    return find_experiments([str(name_or_path)], storage)[0]


ROW_COLUMNS = ("trial", "status", "reason", "config", "config_id")  # what no config key or metric may overwrite


def _config_columns(config: dict) -> dict:
    """Its config as columns; a field that is off (identity.OFF: rungs when empty) has none, so a
    grid without rungs reads as it always did."""
    return {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in config.items()
            if k not in ROW_COLUMNS and not (k in OFF and OFF[k](config))}


def _identity_columns(exp: Experiment) -> dict[str, dict]:
    """Per trial: `config`, a readable label of its config among the experiment's (model, then
    the fields the configs vary), and `config_id`, stable and shared by its seeds."""
    fields = varying_of([t.trial.canonical for t in exp.trials if t.config])
    return {t.name: {"config": config_label(t.config, fields) if t.config else None,
                     "config_id": t.trial.config_id if t.config else None} for t in exp.trials}


def _metric_name(name: str) -> str:
    """A metric's column: its own name, or epoch_NAME where a config field has that name (the
    epoch's scheduled `lr` must not overwrite the config's)."""
    return f"epoch_{name}" if name in FIELD_TYPES or name in ROW_COLUMNS else name


def load(name_or_path: str | os.PathLike, storage: str | None = None):
    """One row per trial of an experiment: trial, status, reason, config, config_id, the config's
    fields as the grid set them, params, epochs_done, final metrics (final_*), train seconds,
    the device it ran on. Metrics never overwrite a config column. Reads files only."""
    import pandas as pd

    exp = load_experiment(resolve_experiment(name_or_path, storage))
    ident = _identity_columns(exp)
    rows = []
    for t in exp.trials:
        final = t.final
        rows.append({"trial": t.name, "status": t.status, "reason": t.reason, **ident[t.name],
                     **_config_columns(t.config),
                     "params": t.params, "epochs_done": len(t.history),
                     **{f"final_{k}": final.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc",
                                                              "test_acc")},
                     "train_seconds": round(sum(t.epoch_seconds), 1),
                     "ran_on": t.meta.get("device"), "peak_gpu_mem_mb": t.meta.get("peak_gpu_mem_mb"),
                     "group": t.group})
    return pd.DataFrame(rows)


def history(name_or_path: str | os.PathLike, storage: str | None = None):
    """One row per trial and epoch: trial, status, config, config_id, its config fields (not
    plumbing) as the grid set them, and that epoch's metrics (`lr` as epoch_lr: see _metric_name)."""
    import pandas as pd

    exp = load_experiment(resolve_experiment(name_or_path, storage))
    ident = _identity_columns(exp)
    rows = []
    for t in exp.trials:
        cfg = _config_columns({k: v for k, v in t.config.items() if k not in NOT_CONFIG or k == "seed"})
        for h in t.history:
            rows.append({"trial": t.name, "status": t.status, **ident[t.name], **cfg,
                         **{_metric_name(k): (int(v) if k == "epoch" and v is not None and math.isfinite(v) else v)
                            for k, v in h.items()}})
    return pd.DataFrame(rows)
