"""The one reader of what trials wrote: trial and experiment records, their status, error
lines and the check of every test accuracy against the test labels.

Used by `gridrun report`, `gridrun status`, launch's summary, and gridrun.load()/history().
Reads files only: never starts Ray, never trains, never unpickles (JSON, CSV, .npy without
pickles, YAML without aliases), so a folder made by someone else runs no code here.

A trial's status, from its folder:
  finished    summary.json says ok and its logits (or, in a slim export, its predicted labels)
              and true labels are readable
  diverged    summary.json says "diverged at epoch k"
  failed      Ray's error.txt and no summary: the trial raised (after its retries)
  stopped     stopped.json: early stopping (ASHA) ended it before its last epoch
  unfinished  a folder with some epochs and no summary: running, interrupted or killed
  pending     in the launch manifest, no folder yet
  broken      files that cannot be read, or a test accuracy its logits do not reproduce

Every file is read bounded: regular files only (never a symlink, FIFO, device or folder), at
most a size fixed per kind of file, .npy headers checked against the bytes before any array is
made. A malformed file marks its trial broken (or is one of its experiment's `problems`) with
a reason; nothing read here raises on what a folder holds.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GridrunError
from .config import FIELD_TYPES, NOT_CONFIG, with_defaults
from .identity import config_id, config_key, config_label, varying_fields

STATUSES = ("finished", "diverged", "failed", "stopped", "unfinished", "pending", "broken")
AGREE_TOL = 5e-4  # float16 logits may flip a near-tie; more than 5 in 10,000 is a real mismatch
MANIFEST, LAUNCHES, SPEC_COPY, LOCK = "gridrun_trials.json", "gridrun_launches.jsonl", "spec.yaml", "gridrun.lock"
GROUP_FILE = "fused_group.json"  # a fused trial's folder: its members' folders live inside
# What a file may cost to read: a trial's JSON is small; tables and arrays grow with the grid or
# the split (a 5,000-trial manifest is ~5 MB, 10,000 float16 logits 200 KB); of error.txt only
# its end is read (the exception line is the last one).
MAX_SMALL, MAX_LARGE, MAX_TAIL = 1 << 20, 64 << 20, 64 << 10
N_CLASSES = 10


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
    meta: dict = field(default_factory=dict)    # config.json's _meta: params, device, versions, ...
    summary: dict = field(default_factory=dict)
    group: str | None = None                    # the fused group it trained in, if any

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def epoch_seconds(self) -> list[float]:
        """Seconds of each epoch that recorded them (a hand-made metrics.csv may have none)."""
        return [h["seconds"] for h in self.history if h.get("seconds") is not None]

    def group_key(self) -> str:
        """The config without seed and plumbing: trials with the same key are seeds of one config."""
        return config_key(self.config)

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
    manifest: list[dict] = field(default_factory=list)
    launches: list[dict] = field(default_factory=list)
    label_source: str = ""
    test_labels: np.ndarray | None = None  # what every finished trial was scored against
    problems: list[str] = field(default_factory=list)  # experiment files that could not be read

    @property
    def labels_only(self) -> bool:
        """Whether some finished trial has predicted labels but no logits (a slim export)."""
        return any(t.status == "finished" and t.test_logits is None for t in self.trials)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out


# ---------------------------------------------------------------- reading files, bounded

class Unreadable(ValueError):
    """A file that is not what it should be; its message names the file and why."""


def present(path: Path) -> bool:
    """Whether a name exists in the folder (a dangling symlink too: it is a bad file, not no file)."""
    return os.path.lexists(path)


def read_bytes(path: Path, limit: int = MAX_SMALL, tail: bool = False) -> bytes:
    """A regular file's bytes (with tail=True only its last `limit`), never more than `limit`:
    a symlink, FIFO, device or folder raises Unreadable, and opening never blocks."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        why = "is a symbolic link" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
        raise Unreadable(f"{path.name} {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise Unreadable(f"{path.name} is {what}")
        if st.st_size > limit and not tail:
            raise Unreadable(f"{path.name} is {st.st_size:,} bytes (at most {limit:,} expected)")
        if tail and st.st_size > limit:
            os.lseek(fd, st.st_size - limit, os.SEEK_SET)
        chunks, got = [], 0
        while got <= limit and (chunk := os.read(fd, limit + 1 - got)):
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise Unreadable(f"{path.name} cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Unreadable(f"{path.name} grew past {limit:,} bytes while read")
    return data


def read_text(path: Path, limit: int = MAX_SMALL) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable(f"{Path(path).name} is not UTF-8 text") from None


def read_json(path: Path, limit: int = MAX_SMALL):
    try:
        return json.loads(read_text(path, limit))
    except RecursionError:  # brackets nested deeper than Python's stack: no gridrun file is
        raise Unreadable(f"{Path(path).name} nests too deep to be a gridrun file") from None
    except ValueError as e:
        if isinstance(e, Unreadable):
            raise
        raise Unreadable(f"{Path(path).name} is not JSON ({str(e)[:80]})") from None


def read_npy(path: Path, limit: int = MAX_LARGE) -> np.ndarray:
    """A .npy array without pickles, its header checked against the file's bytes first (a header
    that claims a huge shape costs nothing)."""
    name, data = Path(path).name, read_bytes(path, limit)
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, fortran, dtype = header[version](f)
    except Exception as e:  # numpy parses the header with ast.literal_eval: any of its errors (a
        # TokenError, a RecursionError from nested brackets, ...) means the header is not one
        raise Unreadable(f"{name} is not a .npy array ({type(e).__name__})") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise Unreadable(f"{name} holds {dtype} (numbers expected)")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(data) - f.tell() != count * dtype.itemsize:
        raise Unreadable(f"{name} is truncated ({len(data) - f.tell():,} bytes of data for shape {shape})")
    arr = np.frombuffer(data, dtype, count, offset=f.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def read_history(path: Path) -> list[dict]:
    """metrics.csv: one dict of floats (None where empty) per epoch."""
    rows = []
    text = read_text(path, MAX_LARGE)
    try:
        for i, row in enumerate(csv.DictReader(io.StringIO(text, newline=""))):
            if None in row or None in row.values():
                raise Unreadable(f"metrics.csv row {i + 1} has another number of values than its header")
            try:
                rows.append({k: (float(v) if v not in ("", "None") else None) for k, v in row.items()})
            except ValueError:
                raise Unreadable(f"metrics.csv row {i + 1} holds a value that is not a number") from None
    except csv.Error as e:
        raise Unreadable(f"metrics.csv is not CSV ({str(e)[:80]})") from None
    return rows


def error_line(path: Path) -> str:
    """The last line of a traceback: the exception and its message."""
    try:
        text = read_bytes(path, MAX_TAIL, tail=True).decode("utf-8", "replace")
    except Unreadable as e:
        return f"failed ({e})"
    lines = [l for l in text.splitlines() if l.strip()]
    last = next((l for l in reversed(lines) if not l.startswith((" ", "\t"))), lines[-1] if lines else "error")
    return last.strip()[:200]


# ---------------------------------------------------------------- reading one trial

# What may stand for each split: the logits (N, 10), or in a slim export the predicted classes (N,).
SCORES = {split: (f"logits_{split}.npy", f"preds_{split}.npy") for split in ("val", "test")}


def _check_config(cfg) -> tuple[dict, dict]:
    """config.json -> (config, _meta), every known field of its type."""
    if not isinstance(cfg, dict):
        raise Unreadable("config.json is not a JSON object")
    meta = cfg.pop("_meta", {})
    if not isinstance(meta, dict):
        raise Unreadable("config.json's _meta is not a JSON object")
    bad = next((k for k, v in cfg.items() if k in FIELD_TYPES and not FIELD_TYPES[k].accepts(v)), None)
    if bad is not None:
        raise Unreadable(f"config.json: {bad}={str(cfg[bad])[:40]!r} is not {FIELD_TYPES[bad].words}")
    # the report quotes _meta: numbers where it computes, scalars elsewhere
    meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))}
    for k in ("params", "peak_gpu_mem_mb", "threads"):
        if k in meta and not (_count(meta[k]) or (k == "peak_gpu_mem_mb" and finite_number(meta[k]))):
            meta.pop(k)
    return cfg, meta


def finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _load_scores(d: Path, split: str) -> tuple[np.ndarray | None, np.ndarray]:
    """(logits or None, predicted classes) of one split: the logits when saved, else the
    predicted labels of a slim export."""
    logits_file, preds_file = SCORES[split]
    if present(d / logits_file):
        arr = read_npy(d / logits_file)
        if arr.ndim != 2 or arr.shape[1] != N_CLASSES or arr.dtype.kind != "f" or not np.isfinite(arr).all():
            raise Unreadable(f"{logits_file} has shape {arr.shape} ({arr.dtype}) or non-finite values")
        return arr, arr.argmax(1)
    if not present(d / preds_file):
        raise Unreadable(f"{logits_file} is missing")
    return None, _classes(d / preds_file)


def _classes(path: Path) -> np.ndarray:
    """A vector of class indices (predicted or true labels)."""
    arr = read_npy(path)
    if arr.ndim != 1 or arr.dtype.kind not in "ui" or (arr.size and (arr.min() < 0 or arr.max() >= N_CLASSES)):
        raise Unreadable(f"{path.name} is not a vector of classes 0..{N_CLASSES - 1} ({arr.dtype}, shape {arr.shape})")
    return arr.astype(np.int64)


def read_trial(d: Path | None, name: str, config: dict | None = None, logits: bool = True) -> TrialRecord:
    """One trial folder -> TrialRecord with its status and reason; a broken file never raises.
    With logits=False the scores are not loaded (status and metrics only)."""
    t = TrialRecord(name=name, dir=d, config=dict(config) if isinstance(config, dict) else {})
    if d is None or not d.is_dir():  # pending: its config as the manifest has it, filled as a trial's is
        t.config = {k: v for k, v in with_defaults(t.config).items() if k != "out_dir"} if t.config else {}
        return t
    if d.is_symlink():
        t.status, t.reason = "broken", "its folder is a symbolic link (not read)"
        return t
    try:
        _read_files(t, d, logits)
    except (Unreadable, OSError) as e:
        t.status, t.reason = "broken", str(e)[:200]
    return t


def _read_files(t: TrialRecord, d: Path, logits: bool) -> None:
    if present(d / "config.json"):
        t.config, t.meta = _check_config(read_json(d / "config.json"))
        t.params = t.meta.get("params")
    t.config = {k: v for k, v in with_defaults(t.config).items() if k != "out_dir"} if t.config else {}
    if present(d / "metrics.csv"):
        t.history = read_history(d / "metrics.csv")
    if not present(d / "summary.json"):
        if present(d / "error.txt"):
            t.status, t.reason = "failed", error_line(d / "error.txt")
        elif present(d / "stopped.json"):
            t.status, t.reason = "stopped", f"stopped early by ASHA after epoch {len(t.history)}"
        else:
            epochs = t.config.get("epochs", "?")
            t.status, t.reason = "unfinished", f"epoch {len(t.history)} of {epochs} (running, stopped or interrupted)"
        return
    summary = read_json(d / "summary.json")
    if not isinstance(summary, dict):
        raise Unreadable("summary.json is not a JSON object")
    if not isinstance(summary.get("status"), str) or not (summary.get("params") is None or _count(summary["params"])):
        raise Unreadable("summary.json: its status is not text or its params not a whole number")
    t.summary = summary
    t.params = t.params if t.params is not None else summary.get("params")
    if summary.get("status") != "ok":
        t.status, t.reason = "diverged", str(summary.get("status", "unknown status"))[:200]
        return
    try:
        if logits:
            t.val_logits, t.val_preds = _load_scores(d, "val")
            t.test_logits, t.test_preds = _load_scores(d, "test")
            t.val_labels, t.test_labels = _classes(d / "labels_val.npy"), _classes(d / "labels_test.npy")
            for split, preds, labels in (("val", t.val_preds, t.val_labels), ("test", t.test_preds, t.test_labels)):
                if len(preds) != len(labels):
                    raise Unreadable(f"{len(preds)} {split} predictions for {len(labels)} {split} labels")
        else:
            need = [f for f in ("labels_val.npy", "labels_test.npy") if not present(d / f)]
            need += [a for a, b in SCORES.values() if not present(d / a) and not present(d / b)]
            if need:
                raise Unreadable(f"{need[0]} is missing")
    except Unreadable as e:
        raise Unreadable(f"finished, but its logits/labels are missing or truncated ({str(e)[:120]})") from None
    t.status = "finished"


# ---------------------------------------------------------------- reading an experiment

def trial_dirs(path: Path) -> dict[str, tuple[Path, str | None]]:
    """Trial folders of an experiment by name: top-level ones, and the members inside fused
    groups' folders (name -> (folder, group or None)). A trial found twice (a member regrouped
    by a later launch) is read from the folder that finished, else the newer one."""
    out: dict[str, tuple[Path, str | None]] = {}

    def add(name: str, d: Path, group: str | None) -> None:
        if name in out:
            old = out[name][0]
            done_old, done_new = (old / "summary.json").exists(), (d / "summary.json").exists()
            if done_old > done_new or (done_old == done_new and old.stat().st_mtime >= d.stat().st_mtime):
                return
        out[name] = (d, group)

    for c in sorted(path.iterdir()):
        if not c.is_dir() or c.name.startswith("."):
            continue
        if present(c / GROUP_FILE) and not c.is_symlink():  # a linked folder is read as one (broken) trial
            for m in sorted(c.iterdir()):
                if m.is_dir() and not m.name.startswith(".") and _looks_like_trial(m):
                    add(m.name, m, c.name)
        elif _looks_like_trial(c):
            add(c.name, c, None)
    return out


def settled(path: Path) -> dict[str, Path]:
    """The trials a launch leaves alone (finished or diverged), name -> folder."""
    return {n: d for n, (d, _) in trial_dirs(path).items()
            if read_trial(d, n, logits=False).status in ("finished", "diverged")}


def _looks_like_trial(d: Path) -> bool:
    return any(present(d / f) for f in ("config.json", "params.json", "error.txt", "metrics.csv"))


def is_experiment(d: Path) -> bool:
    try:
        return d.is_dir() and (present(d / MANIFEST) or bool(trial_dirs(d)))
    except OSError:  # a folder that cannot be listed is no experiment to read
        return False


def read_manifest(path: Path, problems: list | None = None) -> list[dict]:
    """The launch manifest's entries (name, train config, group, params), each of its type; an
    unreadable manifest reads as none (and says why in `problems`)."""
    if not present(path / MANIFEST):
        return []
    try:
        data = read_json(path / MANIFEST, MAX_LARGE)
        if not isinstance(data, list):
            raise Unreadable(f"{MANIFEST} is not a JSON list")
    except (Unreadable, OSError) as e:
        _note(problems, f"{e} (its trials are read from their folders)")
        return []
    good = [e for e in data if isinstance(e, dict) and isinstance(e.get("name"), str) and _typed(e.get("train", {}))
            and isinstance(e.get("group"), (str, type(None)))]
    if len(good) < len(data):
        _note(problems, f"{MANIFEST}: {len(data) - len(good)} malformed entries skipped")
    return [{**e, "params": e.get("params") if _count(e.get("params")) else None} for e in good]


def _typed(train) -> bool:
    """A manifest's train config: a JSON object whose known fields have their types."""
    return isinstance(train, dict) and all(FIELD_TYPES[k].accepts(v) for k, v in train.items() if k in FIELD_TYPES)


def _note(problems: list | None, line: str) -> None:
    if problems is not None:
        problems.append(line[:300])


def read_launches(path: Path, problems: list | None = None) -> list[dict]:
    """The launch records, fields of the wrong type dropped (the report quotes them)."""
    if not present(path / LAUNCHES):
        return []
    try:
        text = read_bytes(path / LAUNCHES, MAX_LARGE).decode("utf-8", "replace")
    except (Unreadable, OSError) as e:
        _note(problems, str(e))
        return []
    out, bad = [], 0
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = None
        if isinstance(rec, dict):
            out.append(_clean_launch(rec))
        elif line.strip():
            bad += 1
    if bad:
        _note(problems, f"{LAUNCHES}: {bad} unreadable lines skipped")
    return out


def _clean_launch(rec: dict) -> dict:
    kinds = {"command": str, "cluster": str, "wall_s": (int, float), "exit": int, "finished_at": (int, float),
             "provenance": dict}
    out = {k: v for k, v in rec.items() if k in kinds and isinstance(v, kinds[k]) and not isinstance(v, bool)}
    prov = out.get("provenance")
    if prov is not None:
        out["provenance"] = {k: v for k, v in prov.items()
                             if isinstance(v, dict if k == "git" else (str, int, float))}
        git = out["provenance"].get("git")
        if git is not None:
            out["provenance"]["git"] = {k: v for k, v in git.items() if isinstance(v, (str, bool, int))}
    return out


def read_spec(path: Path, problems: list | None = None) -> dict:
    """The experiment's effective spec (as launched, overrides applied), read without aliases."""
    from .spec import MAX_SPEC_BYTES, SpecError, safe_yaml

    if not present(path / SPEC_COPY):
        return {}
    try:
        raw = safe_yaml(read_text(path / SPEC_COPY, MAX_SPEC_BYTES), str(path / SPEC_COPY))
    except (Unreadable, OSError, SpecError, RecursionError) as e:
        _note(problems, f"{SPEC_COPY} unreadable ({str(e)[:150]}): reported without it")
        return {}
    if not isinstance(raw, dict):
        _note(problems, f"{SPEC_COPY} is not a mapping: reported without it")
        return {}
    return _clean_spec(raw, problems)


def _clean_spec(raw: dict, problems: list | None) -> dict:
    """The parts of the spec the report reads, each of its type (a wrong one is dropped and said)."""
    kinds = {"description": str, "constraints": dict, "report": dict, "data": dict, "name": str}
    out = {}
    for k, v in raw.items():
        if k in kinds and not isinstance(v, kinds[k]):
            _note(problems, f"{SPEC_COPY}: {k} is not a {kinds[k].__name__}: ignored")
            continue
        out[k] = v
    cons = out.get("constraints")
    if cons:
        want = {"max_params": int, "max_epochs": int, "target_test_acc": (int, float)}
        keep = {k: v for k, v in cons.items() if k in want and isinstance(v, want[k]) and not isinstance(v, bool)}
        if len(keep) < len(cons):
            _note(problems, f"{SPEC_COPY}: constraints of the wrong type ignored")
        out["constraints"] = keep
    return out


def load_experiment(path: Path, logits: bool = True, check_labels: bool = True) -> Experiment:
    """Every trial of an experiment folder, with statuses; finished trials' test accuracies are
    recomputed from their logits or predicted labels (check_labels, needs logits=True)."""
    path = Path(path)
    problems: list[str] = []
    manifest = read_manifest(path, problems)
    dirs = trial_dirs(path)
    trials = []
    for e in manifest:
        d, group = dirs.pop(e["name"], (None, e.get("group")))
        trials.append(read_trial(d, e["name"], e.get("train"), logits))
        trials[-1].params = trials[-1].params if trials[-1].params is not None else e.get("params")
        trials[-1].group = group
    for n, (d, group) in sorted(dirs.items()):
        trials.append(read_trial(d, n, None, logits))
        trials[-1].group = group
    # Named by its folder, never by the name inside its spec: an old copy (NAME.prev-1) or a
    # foreign folder must not write its report over another experiment's.
    exp = Experiment(path.resolve().name, path, read_spec(path, problems), trials, manifest,
                     read_launches(path, problems), problems=problems)
    if logits and check_labels:
        check_test_accuracy(exp)
    return exp


def true_test_labels(exp: Experiment) -> np.ndarray | None:
    """The MNIST test labels from the data files when they can be found, else the labels a strict
    majority of the finished trials saved (a trial that saved others is broken)."""
    done = [t for t in exp.trials if t.status == "finished"]
    if not done:
        return None
    try:
        from .data import load_arrays

        data_dir = done[0].config.get("data_dir")
        labels = load_arrays(data_dir if isinstance(data_dir, str) else None)["test_labels"].astype(np.int64)
        if len(labels) == len(done[0].test_labels):
            exp.label_source = "the MNIST test-label file (checksum verified)" if len(labels) == 10000 \
                else "the test-label file of the trials' data folder"
            return labels
    except (GridrunError, OSError, ValueError):
        pass
    saved: dict[bytes, list[TrialRecord]] = {}
    for t in done:
        saved.setdefault(t.test_labels.tobytes(), []).append(t)
    most = max(saved.values(), key=len)
    if 2 * len(most) <= len(done):
        raise GridrunError(f"{exp.dir}: trials saved different test labels and the data files are not here: "
                           f"set GRIDRUN_DATA so the report can check them against MNIST")
    for t in done:
        if not any(t is m for m in most):
            t.status = "broken"
            t.reason = (f"its labels_test.npy differs from the one {len(most)} of {len(done)} finished trials saved "
                        f"(set GRIDRUN_DATA to check against MNIST)")
    exp.label_source = "the labels the trials saved (the data files were not found here)"
    return most[0].test_labels


def check_test_accuracy(exp: Experiment) -> None:
    """Recompute each finished trial's test accuracy from its predictions (the argmax of its
    logits, or a slim export's saved labels, which are that argmax); a disagreement with what the
    trial reported marks it broken."""
    labels = exp.test_labels = true_test_labels(exp)
    for t in exp.trials:
        if t.status != "finished":
            continue
        if len(t.test_preds) != len(labels):
            t.status, t.reason = "broken", f"{len(t.test_preds)} test predictions for {len(labels)} test labels"
            continue
        t.test_acc_recomputed = float((t.test_preds == labels).mean())
        said = t.final.get("test_acc")
        if said is None or not abs(said - t.test_acc_recomputed) <= AGREE_TOL:
            t.status = "broken"
            scores = "logits" if t.test_logits is not None else "predicted labels"
            t.reason = f"reported test acc {said} but its {scores} score {t.test_acc_recomputed:.4f}"


def find_experiments(targets: list[str], storage: str = "runs") -> list[Path]:
    """Experiment folders named by NAME (under storage) or PATH; all under storage when none."""
    if not targets:
        root = Path(storage)
        found = sorted(d for d in root.iterdir() if is_experiment(d)) if root.is_dir() else []
        if not found:
            raise GridrunError(f"no experiments under {root}/: run `gridrun launch SPEC` first or name a folder")
        return found
    paths = []
    for t in targets:
        for cand in (Path(t), Path(storage) / t):
            if cand.is_dir() and is_experiment(cand):
                paths.append(cand)
                break
        else:
            raise GridrunError(f"no experiment {t!r} (looked for {t} and {Path(storage) / t}): "
                               f"give a name under {storage}/ or an experiment folder")
    return paths


# ---------------------------------------------------------------- the launch lock (read side)

def lock_holder(path: Path, stale_s: float = 120.0) -> dict | None:
    """The live launch holding an experiment's lock, or None. A lock whose process is gone
    (same host) or whose heartbeat is older than `stale_s` (another host) is not held."""
    f = Path(path) / LOCK
    try:
        info = read_json(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if info.get("host") == os.uname().nodename:
        try:
            os.kill(int(info.get("pid", -1)), 0)
        except (ProcessLookupError, ValueError, OverflowError, TypeError):
            return None
        except PermissionError:
            pass
        return info
    try:
        fresh = time.time() - f.stat().st_mtime < stale_s
    except OSError:
        return None
    return info if fresh else None


# ---------------------------------------------------------------- results as pandas

def resolve_experiment(name_or_path: str | os.PathLike, storage: str) -> Path:
    p = Path(name_or_path)
    if p.is_dir() and is_experiment(p):
        return p
    return find_experiments([str(name_or_path)], storage)[0]


ROW_COLUMNS = ("trial", "status", "reason", "config", "config_id")  # what no config key or metric may overwrite


def _config_columns(config: dict) -> dict:
    return {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in config.items()
            if k not in ROW_COLUMNS}


def _identity_columns(exp: Experiment) -> dict[str, dict]:
    """Per trial: `config`, a readable label of its config among the experiment's (model, then
    the fields the configs vary), and `config_id`, stable and shared by its seeds."""
    configs = [t.config for t in exp.trials if t.config]
    varying = varying_fields(configs)
    return {t.name: {"config": config_label(t.config, varying) if t.config else None,
                     "config_id": config_id(t.config) if t.config else None} for t in exp.trials}


def _metric_name(name: str) -> str:
    """A metric's column: its own name, or epoch_NAME where a config field has that name (the
    epoch's scheduled `lr` must not overwrite the config's)."""
    return f"epoch_{name}" if name in FIELD_TYPES or name in ROW_COLUMNS else name


def load(name_or_path: str | os.PathLike, storage: str = "runs"):
    """One row per trial of an experiment: trial, status, reason, config, config_id, the config's
    fields as the grid set them, params, epochs_done, final metrics (final_*), train seconds,
    the device it ran on. Metrics never overwrite a config column. Reads files only (no logits)."""
    import pandas as pd

    exp = load_experiment(resolve_experiment(name_or_path, storage), logits=False)
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


def history(name_or_path: str | os.PathLike, storage: str = "runs"):
    """One row per trial and epoch: trial, status, config, config_id, its config fields (not
    plumbing) as the grid set them, and that epoch's metrics (`lr` as epoch_lr: see _metric_name)."""
    import pandas as pd

    exp = load_experiment(resolve_experiment(name_or_path, storage), logits=False)
    ident = _identity_columns(exp)
    rows = []
    for t in exp.trials:
        cfg = _config_columns({k: v for k, v in t.config.items() if k not in NOT_CONFIG or k == "seed"})
        for h in t.history:
            rows.append({"trial": t.name, "status": t.status, **ident[t.name], **cfg,
                         **{_metric_name(k): (int(v) if k == "epoch" and v is not None and math.isfinite(v) else v)
                            for k, v in h.items()}})
    return pd.DataFrame(rows)
