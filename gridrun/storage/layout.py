"""Every file an experiment or trial folder holds: its name, and a write/read pair each
(TrialDir, ExperimentDir). Writes go through safeio.atomic_save; reads are bounded (safeio).

An experiment folder (ExperimentDir):
  gridrun_trials.json      the manifest: every planned trial (name, id, axes, params, train, group, and the
                           checksums of the validation and test labels it is scored against, from the data)
  gridrun_launches.jsonl   one record per launch (command, cluster, wall time, exit, provenance)
  gridrun_launch_open.json the running launch's record from its start (command, start, provenance): a launch
                           killed with no record of its own is recorded from it by the next one
  gridrun_diff-N.patch     the uncommitted diff the N-th launch ran with
  spec.yaml                the effective spec as launched (overrides applied)
  reference.csv            the study's own table (the spec's report.reference), copied at launch
  gridrun.lock             the running launch (pid, host, token; touched every 20 s)
  gridrun_export.json      in a slim export: what the export says about itself (a restore removes it)
  gridrun_ray.log          a line per trial Ray completed or failed (progress.RayLog)
  TRIAL/ or GROUP/TRIAL/   trial folders; a fused group's folder holds fused_group.json
A trial folder (TrialDir; a checkpoint folder holds state.pt and state.json):
  config.json        the resolved config plus `_meta` (params, device, strategy, versions, ...)
  metrics.csv        one row per epoch (EPOCH_FIELDS)
  events.out.tfevents.*  TensorBoard scalars and HParams sessions
  state.pt           everything a group needs to resume after its last finished epoch
  model.pt           final weights of one member (state_dict; the weight average with `ema`)
  logits_{val,test}.npy   float16 (N, 10) logits of the final model
  labels_{val,test}.npy   uint8 labels they were scored against
  preds_{val,test}.npy    in a slim export, the predicted classes instead of the logits
  summary.json       status ("ok" | "diverged at epoch k") and final metrics
  stopped.json       early stopping (ASHA) ended it; error.txt (Ray's) it raised
  params.json, result.json (Ray's), node.json (where it ran)
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from ..config import FIELD_TYPES
from ..errors import GridrunError
from . import locks
from .safeio import (MAX_LARGE, MAX_TAIL, Unreadable, atomic_save, append_line, json_lines, load_torch,
                     present, read_bytes, read_json, read_npy, read_text)

# ---------------------------------------------------------------- the names

CONFIG, METRICS, SUMMARY, MODEL, STATE = "config.json", "metrics.csv", "summary.json", "model.pt", "state.pt"
STOPPED, ERROR, PARAMS, NODE, RESULT = "stopped.json", "error.txt", "params.json", "node.json", "result.json"
STATE_INFO, RESUME = "state.json", "resume.pt"   # a checkpoint's epoch; a worker's private copy of a state
GROUP_FILE = "fused_group.json"  # a fused trial's folder: its members' folders live inside
EVENTS = "events.out.tfevents.*"  # named by TensorBoard's SummaryWriter
SPLITS = ("val", "test")
MANIFEST, LAUNCHES, SPEC_COPY, LOCK = "gridrun_trials.json", "gridrun_launches.jsonl", "spec.yaml", "gridrun.lock"
REFERENCE, EXPORT_MARK, RAY_LOG, DIFFS = "reference.csv", "gridrun_export.json", "gridrun_ray.log", "gridrun_diff-*.patch"
OPEN_LAUNCH = "gridrun_launch_open.json"


def logits_file(split: str) -> str:
    return f"logits_{split}.npy"


def labels_file(split: str) -> str:
    return f"labels_{split}.npy"


def preds_file(split: str) -> str:
    return f"preds_{split}.npy"


def diff_file(n: int) -> str:
    return DIFFS.replace("*", str(n))


# What a trial, a fused group or an experiment leaves in its folder (`train --out` refuses one).
RESULT_FILES = (SUMMARY, CONFIG, METRICS, MODEL, STATE, *map(logits_file, SPLITS), ERROR, PARAMS, STOPPED)
TRIAL_MARKS = (CONFIG, PARAMS, ERROR, METRICS)  # any of them makes a folder a trial's
WHOLE_JSON = (SUMMARY, CONFIG, STOPPED, NODE, GROUP_FILE, STATE_INFO)  # JSON that is whole or useless
EPOCH_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr",
                "seconds", "images_per_s"]
N_CLASSES = 10  # MNIST's; another dataset's trials have `classes` columns (datasets.MAX_CLASSES at most)


class StateError(GridrunError):
    """A resume state that cannot be used (corrupt, foreign or from another config)."""



def read_history(path: Path) -> list[dict]:
    """metrics.csv: one dict of floats (None where empty) per epoch."""
    rows = []
    text = read_text(path, MAX_LARGE)
    try:
        for i, row in enumerate(csv.DictReader(io.StringIO(text, newline=""))):
            if None in row or None in row.values():
                raise Unreadable(f"{METRICS} row {i + 1} has another number of values than its header")
            try:
                rows.append({k: (float(v) if v not in ("", "None") else None) for k, v in row.items()})
            except ValueError:
                raise Unreadable(f"{METRICS} row {i + 1} holds a value that is not a number") from None
    except csv.Error as e:
        raise Unreadable(f"{METRICS} is not CSV ({str(e)[:80]})") from None
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



def read_state(path: str | os.PathLike, device="cpu") -> dict:
    """A state file's contents (state.pt, or a worker's copy of one), or StateError saying why it
    cannot be used. Plain tensors and containers only: a foreign folder runs no code here."""
    try:
        state = load_torch(path, device)
    except Exception as e:  # a truncated zip, a planted pickle, a stranger's file: all unusable
        raise StateError(f"resume state {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
            from None
    if not isinstance(state, dict) or "version" not in state:  # which versions it reads: engine/state.py
        raise StateError(f"resume state {path} is not a gridrun state")
    return state



# ---------------------------------------------------------------- a trial's folder

def finite_number(v) -> bool:
    """A real number (not a bool), neither NaN nor infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v) -> bool:
    """A whole number >= 0 (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _classes(path: Path, classes: int = N_CLASSES) -> np.ndarray:
    """A vector of class indices (predicted or true labels)."""
    arr = read_npy(path)
    if arr.ndim != 1 or arr.dtype.kind not in "ui" or (arr.size and (arr.min() < 0 or arr.max() >= classes)):
        raise Unreadable(f"{path.name} is not a vector of classes 0..{classes - 1} ({arr.dtype}, shape {arr.shape})")
    return arr.astype(np.int64)


class TrialDir:
    """One trial's folder (or a checkpoint's): each file it holds, written and read in pairs."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TrialDir({str(self.path)!r})"

    def has(self, name: str) -> bool:
        return present(self.path / name)

    def looks_like_trial(self) -> bool:
        return any(self.has(f) for f in TRIAL_MARKS)

    def finished(self) -> bool:
        """Whether it wrote its summary (finished or diverged)."""
        return (self.path / SUMMARY).exists()

    # config.json
    def write_config(self, cfg: dict, meta: dict) -> None:
        atomic_save(self.path / CONFIG, {**cfg, "_meta": meta})

    def read_config(self) -> tuple[dict, dict]:
        """(config, _meta), every known field of its type; _meta holds only what the report may quote."""
        cfg = read_json(self.path / CONFIG)
        if not isinstance(cfg, dict):
            raise Unreadable(f"{CONFIG} is not a JSON object")
        meta = cfg.pop("_meta", {})
        if not isinstance(meta, dict):
            raise Unreadable(f"{CONFIG}'s _meta is not a JSON object")
        bad = next((k for k, v in cfg.items() if k in FIELD_TYPES and not FIELD_TYPES[k].accepts(v)), None)
        if bad is not None:
            raise Unreadable(f"{CONFIG}: {bad}={str(cfg[bad])[:40]!r} is not {FIELD_TYPES[bad].words}")
        # the report quotes _meta: numbers where it computes, scalars elsewhere
        meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))}
        for k in ("params", "peak_gpu_mem_mb", "threads"):
            if k in meta and not (_count(meta[k]) or (k == "peak_gpu_mem_mb" and finite_number(meta[k]))):
                meta.pop(k)
        return cfg, meta

    # metrics.csv
    def write_metrics(self, rows: list[list]) -> None:
        """The whole table (header and one row of EPOCH_FIELDS values per epoch), atomically."""
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\r\n")  # csv's default line ends, as before
        w.writerow(EPOCH_FIELDS)
        w.writerows(rows)
        atomic_save(self.path / METRICS, text.getvalue())

    def read_history(self) -> list[dict]:
        return read_history(self.path / METRICS)

    # summary.json
    def write_summary(self, summary: dict) -> None:
        atomic_save(self.path / SUMMARY, summary)

    def read_summary(self) -> dict:
        summary = read_json(self.path / SUMMARY)
        if not isinstance(summary, dict):
            raise Unreadable(f"{SUMMARY} is not a JSON object")
        if not isinstance(summary.get("status"), str) or not (summary.get("params") is None or _count(summary["params"])):
            raise Unreadable(f"{SUMMARY}: its status is not text or its params not a whole number")
        return summary

    def summary_status(self, default: str = "failed") -> str:
        """What its summary says ("ok", "diverged at epoch k"), else `default` (none, or unreadable)."""
        try:
            return str(self.read_summary()["status"])
        except (Unreadable, OSError):
            return default

    # the final arrays: logits (or a slim export's predicted classes) and labels per split
    def write_logits(self, split: str, logits) -> None:
        atomic_save(self.path / logits_file(split), logits)

    def write_labels(self, split: str, labels) -> None:
        atomic_save(self.path / labels_file(split), labels)

    def write_preds(self, split: str, preds: np.ndarray) -> None:
        atomic_save(self.path / preds_file(split), preds.astype(np.uint8))

    def read_scores(self, split: str, classes: int = N_CLASSES) -> tuple[np.ndarray | None, np.ndarray]:
        """(logits or None, predicted classes) of one split: the logits when saved, else the
        predicted labels of a slim export. `classes`: the trial's dataset's (MNIST's 10)."""
        name = logits_file(split)
        if self.has(name):
            arr = read_npy(self.path / name)
            if arr.ndim != 2 or arr.shape[1] != classes or arr.dtype.kind != "f":
                raise Unreadable(f"{name} has shape {arr.shape} ({arr.dtype}) or non-finite values")
            # float16 widened (exactly): numpy's isfinite and argmax run several times slower on it
            wide = arr.astype(np.float32) if arr.dtype == np.float16 else arr
            if not np.isfinite(wide).all():
                raise Unreadable(f"{name} has shape {arr.shape} ({arr.dtype}) or non-finite values")
            return arr, wide.argmax(1)
        if not self.has(preds_file(split)):
            raise Unreadable(f"{name} is missing")
        return None, _classes(self.path / preds_file(split), classes)

    def read_labels(self, split: str, classes: int = N_CLASSES) -> np.ndarray:
        return _classes(self.path / labels_file(split), classes)

    def missing_scores(self) -> list[str]:
        """The final arrays it lacks (labels, and logits where no predicted labels stand for them)."""
        need = [labels_file(s) for s in SPLITS if not self.has(labels_file(s))]
        return need + [logits_file(s) for s in SPLITS if not self.has(logits_file(s)) and not self.has(preds_file(s))]

    # model.pt and state.pt
    def write_model(self, weights: dict) -> None:
        atomic_save(self.path / MODEL, weights)

    def read_model(self) -> dict:
        return load_torch(self.path / MODEL)

    def write_state(self, state: dict) -> Path:
        """The resumable state as plain tensors and containers (loadable with weights_only=True)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_save(self.path / STATE, state)
        return self.path / STATE

    def read_state(self, device="cpu") -> dict:
        return read_state(self.path / STATE, device)

    # state.json: which epoch a checkpoint folder's state.pt ended, and which launch wrote it
    def write_state_info(self, epoch: int, launch: str) -> None:
        atomic_save(self.path / STATE_INFO, json.dumps({"epoch": epoch, "launch": launch}))

    def read_state_info(self) -> dict:
        return parse_state_info(read_bytes(self.path / STATE_INFO))

    # stopped.json, error.txt, node.json, result.json
    def write_stopped(self, after_epoch: int, by: str = "ASHA") -> None:
        atomic_save(self.path / STOPPED, json.dumps({"after_epoch": after_epoch, "by": by}))

    def stopped(self) -> bool:
        return self.has(STOPPED)

    def failed(self) -> bool:
        return self.has(ERROR)

    def error_line(self) -> str:
        return error_line(self.path / ERROR)

    def write_node(self, node_id: str, host: str) -> None:
        atomic_save(self.path / NODE, json.dumps({"node_id": node_id, "host": host}))

    def read_node(self) -> dict:
        node = read_json(self.path / NODE)
        if not isinstance(node, dict):
            raise Unreadable(f"{NODE} is not a JSON object")
        return node

    def read_tune_results(self) -> list[dict]:
        """Ray's result.json: one dict per report (lines that are not one are skipped)."""
        return json_lines(read_bytes(self.path / RESULT, MAX_LARGE).decode("utf-8", "replace"))[0]

    # fused_group.json: marks the folder as a group; its members' folders are inside
    def write_group(self, members: list[str]) -> None:
        atomic_save(self.path / GROUP_FILE, json.dumps({"members": list(members)}))

    def is_group(self) -> bool:
        return self.has(GROUP_FILE)

    def events(self, suffix: str = "") -> list[Path]:
        return event_files(self.path, suffix)


def experiment_above(path: str | os.PathLike) -> Path | None:
    """The experiment (or fused group) folder that holds `path`, if any: outputs written there
    would be read as its trials (a folder with a manifest, a lock or a group file)."""
    for parent in Path(path).resolve().parents:
        if any((parent / f).exists() for f in (MANIFEST, GROUP_FILE, LOCK)):
            return parent
    return None


def event_files(folder: str | os.PathLike, suffix: str = "") -> list[Path]:
    """The TensorBoard event files in a folder (those named ...`suffix`)."""
    return sorted(Path(folder).glob(EVENTS + suffix))


def parse_state_info(data: bytes) -> dict:
    """state.json's bytes -> {"epoch": int, "launch": ...}; Unreadable when it is not that."""
    try:
        info = json.loads(data.decode())
        info["epoch"] = int(info["epoch"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise Unreadable(f"{STATE_INFO} does not name an epoch") from None
    return info


# ---------------------------------------------------------------- an experiment's folder

def _note(problems: list | None, line: str) -> None:
    if problems is not None:
        problems.append(line[:300])


def _typed(train) -> bool:
    """A manifest's train config: a JSON object whose known fields have their types."""
    return isinstance(train, dict) and all(FIELD_TYPES[k].accepts(v) for k, v in train.items() if k in FIELD_TYPES)


def _digests(labels) -> dict:
    """A manifest entry's label checksums ({"val": hex, "test": hex}), those of the wrong type dropped."""
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if k in SPLITS and isinstance(v, str) and 0 < len(v) <= 128}


def _clean_launch(rec: dict) -> dict:
    kinds = {"command": str, "cluster": str, "wall_s": (int, float), "exit": int, "finished_at": (int, float),
             "started_at": (int, float), "outcome": str, "provenance": dict}
    out = {k: v for k, v in rec.items() if k in kinds and isinstance(v, kinds[k]) and not isinstance(v, bool)}
    prov = out.get("provenance")
    if prov is not None:
        out["provenance"] = {k: v for k, v in prov.items()
                             if isinstance(v, dict if k == "git" else (str, int, float))}
        git = out["provenance"].get("git")
        if git is not None:
            out["provenance"]["git"] = {k: v for k, v in git.items() if isinstance(v, (str, bool, int))}
    return out


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


class ExperimentDir:
    """One experiment's folder: its own files, written and read in pairs, its trial folders, its lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ExperimentDir({str(self.path)!r})"

    def trial(self, name: str, group: str | None = None) -> TrialDir:
        """A trial's folder: NAME, or GROUP/NAME for a member of a fused group."""
        return TrialDir(self.path / group / name if group else self.path / name)

    def trial_dirs(self) -> dict[str, tuple[Path, str | None]]:
        """Trial folders by name: top-level ones, and the members inside fused groups' folders
        (name -> (folder, group or None)). A trial found twice (a member regrouped by a later
        launch) is read from the folder that finished, else the newer one."""
        out: dict[str, tuple[Path, str | None]] = {}

        def add(name: str, d: Path, group: str | None) -> None:
            if name in out:
                old = out[name][0]
                done_old, done_new = TrialDir(old).finished(), TrialDir(d).finished()
                if done_old > done_new or (done_old == done_new and old.stat().st_mtime >= d.stat().st_mtime):
                    return
            out[name] = (d, group)

        for c in sorted(self.path.iterdir()):
            if not c.is_dir() or c.name.startswith("."):
                continue
            if TrialDir(c).is_group() and not c.is_symlink():  # a linked folder is read as one (broken) trial
                for m in sorted(c.iterdir()):
                    if m.is_dir() and not m.name.startswith(".") and TrialDir(m).looks_like_trial():
                        add(m.name, m, c.name)
            elif TrialDir(c).looks_like_trial():
                add(c.name, c, None)
        return out

    def is_experiment(self) -> bool:
        try:
            return self.path.is_dir() and (present(self.path / MANIFEST) or bool(self.trial_dirs()))
        except OSError:  # a folder that cannot be listed is no experiment to read
            return False

    # gridrun_trials.json
    def write_manifest(self, entries: list[dict]) -> None:
        atomic_save(self.path / MANIFEST, json.dumps(list(entries), indent=1))

    def read_manifest(self, problems: list | None = None) -> list[dict]:
        """The manifest's entries (name, train config, group, params), each of its type; an
        unreadable manifest reads as none (and says why in `problems`)."""
        if not present(self.path / MANIFEST):
            return []
        try:
            data = read_json(self.path / MANIFEST, MAX_LARGE)
            if not isinstance(data, list):
                raise Unreadable(f"{MANIFEST} is not a JSON list")
        except (Unreadable, OSError) as e:
            _note(problems, f"{e} (its trials are read from their folders)")
            return []
        good = [e for e in data if isinstance(e, dict) and isinstance(e.get("name"), str)
                and _typed(e.get("train", {})) and isinstance(e.get("group"), (str, type(None)))]
        if len(good) < len(data):
            _note(problems, f"{MANIFEST}: {len(data) - len(good)} malformed entries skipped")
        return [{**{k: v for k, v in e.items() if k != "labels"}, "params": e.get("params") if _count(e.get("params"))
                 else None, **({"labels": _digests(e["labels"])} if _digests(e.get("labels")) else {})} for e in good]

    # gridrun_launches.jsonl (appended: one line per launch) and gridrun_diff-N.patch
    def append_launch(self, record: dict) -> None:
        append_line(self.path / LAUNCHES, json.dumps(record))

    def read_launches(self, problems: list | None = None) -> list[dict]:
        """The launch records, fields of the wrong type dropped (the report quotes them)."""
        if not present(self.path / LAUNCHES):
            return []
        try:
            text = read_bytes(self.path / LAUNCHES, MAX_LARGE).decode("utf-8", "replace")
        except (Unreadable, OSError) as e:
            _note(problems, str(e))
            return []
        records, bad = json_lines(text)
        if bad:
            _note(problems, f"{LAUNCHES}: {bad} unreadable lines skipped")
        return [_clean_launch(r) for r in records]

    def open_launch(self, record: dict) -> None:
        """The running launch's record from its start (closed by `close_launch` when it records itself)."""
        atomic_save(self.path / OPEN_LAUNCH, json.dumps(record))

    def close_launch(self) -> dict | None:
        """The open launch record, removed; None when there is none (or it cannot be read)."""
        path = self.path / OPEN_LAUNCH
        if not present(path):
            return None
        try:
            record = read_json(path)
        except (Unreadable, OSError, ValueError):
            record = None
        path.unlink(missing_ok=True)
        return _clean_launch(record) if isinstance(record, dict) else None

    def write_diff(self, n: int, diff: str) -> str:
        """The n-th launch's uncommitted diff; returns its file name (the launch record names it)."""
        atomic_save(self.path / diff_file(n), diff)
        return diff_file(n)

    def diffs(self) -> list[Path]:
        return sorted(self.path.glob(DIFFS))

    # spec.yaml
    def write_spec(self, raw: dict) -> None:
        import yaml

        atomic_save(self.path / SPEC_COPY, yaml.safe_dump(raw, sort_keys=False))

    def read_spec(self, problems: list | None = None) -> dict:
        """The effective spec (as launched, overrides applied), read without aliases."""
        from ..yamlsafe import MAX_SPEC_BYTES, SpecError, safe_yaml

        path = self.path / SPEC_COPY
        if not present(path):
            return {}
        try:
            raw = safe_yaml(read_text(path, MAX_SPEC_BYTES), str(path))
        except (Unreadable, OSError, SpecError, RecursionError) as e:
            why = str(e).removeprefix(f"{path}: ")  # the loader's lines name the file: name it once
            _note(problems, f"{SPEC_COPY} unreadable ({why[:150]}): reported without it")
            return {}
        if not isinstance(raw, dict):
            _note(problems, f"{SPEC_COPY} is not a mapping: reported without it")
            return {}
        return _clean_spec(raw, problems)

    # reference.csv
    def write_reference(self, src: str | os.PathLike) -> None:
        """A copy of the user's table (a link to it is followed: it is named in the spec, not planted)."""
        atomic_save(self.path / REFERENCE, read_bytes(Path(src).resolve(), MAX_LARGE))

    def read_reference(self) -> str | None:
        """The study's table as text, or None when the spec named none."""
        return read_text(self.path / REFERENCE) if present(self.path / REFERENCE) else None

    # gridrun_export.json
    def write_export_mark(self, mark: dict) -> None:
        atomic_save(self.path / EXPORT_MARK, json.dumps(mark, indent=1))

    def is_export(self) -> bool:
        return (self.path / EXPORT_MARK).is_file()

    def clear_export_mark(self) -> None:
        """A restored export is an experiment again: without the mark, no export replaces it."""
        (self.path / EXPORT_MARK).unlink(missing_ok=True)

    # gridrun.lock
    def lock(self, heartbeat_s: float = locks.HEARTBEAT_S):
        """One launch per experiment folder; a stale lock is taken over by exactly one process."""
        return locks.held(locks.FolderLock(self.path, LOCK), heartbeat_s)

    def lock_holder(self, stale_s: float = locks.STALE_S) -> dict | None:
        """The live launch holding the lock, or None (locks.folder_holder)."""
        return locks.folder_holder(self.path / LOCK, stale_s)
