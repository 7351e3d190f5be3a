"""The one reader of what trials wrote: trial and experiment records, their status, error
lines and the check of every test accuracy against the test labels.

Used by `gridrun report`, `gridrun status`, launch's summary, and gridrun.load()/history().
Reads files only: never starts Ray, never trains, never unpickles (JSON, CSV, .npy without
pickles, YAML without aliases), so a folder made by someone else runs no code here.

A trial's status, from its folder:
  finished    summary.json says ok and its logits and labels are readable
  diverged    summary.json says "diverged at epoch k"
  failed      Ray's error.txt and no summary: the trial raised (after its retries)
  stopped     stopped.json: early stopping (ASHA) ended it before its last epoch
  unfinished  a folder with some epochs and no summary: running, interrupted or killed
  pending     in the launch manifest, no folder yet
  broken      files that cannot be read, or a test accuracy its logits do not reproduce
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GridrunError
from .config import NOT_CONFIG, with_defaults
from .identity import config_key

STATUSES = ("finished", "diverged", "failed", "stopped", "unfinished", "pending", "broken")
AGREE_TOL = 5e-4  # float16 logits may flip a near-tie; more than 5 in 10,000 is a real mismatch
MANIFEST, LAUNCHES, SPEC_COPY, LOCK = "gridrun_trials.json", "gridrun_launches.jsonl", "spec.yaml", "gridrun.lock"
GROUP_FILE = "fused_group.json"  # a fused trial's folder: its members' folders live inside


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
        if self.dir is None or not self.dir.is_dir():
            return 0.0
        return max([p.stat().st_mtime for p in self.dir.iterdir() if p.is_file()] or [self.dir.stat().st_mtime])


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

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out


# ---------------------------------------------------------------- reading one trial

def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_history(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None, "None") else None) for k, v in row.items()})
    return rows


def error_line(path: Path) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = [l for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
    last = next((l for l in reversed(lines) if not l.startswith((" ", "\t"))), lines[-1] if lines else "error")
    return last.strip()[:200]


def _load_logits(d: Path, split: str) -> np.ndarray:
    arr = np.load(d / f"logits_{split}.npy", allow_pickle=False)
    if arr.ndim != 2 or arr.shape[1] != 10 or not np.isfinite(arr).all():
        raise ValueError(f"logits_{split}.npy has shape {arr.shape} or non-finite values")
    return arr


def read_trial(d: Path | None, name: str, config: dict | None = None, logits: bool = True) -> TrialRecord:
    """One trial folder -> TrialRecord with its status and reason; a broken file never raises.
    With logits=False the logits are not loaded (status and metrics only)."""
    t = TrialRecord(name=name, dir=d, config=dict(config or {}))
    if d is None or not d.is_dir():
        return t
    try:
        cfg = read_json(d / "config.json")
        t.meta = cfg.pop("_meta", {}) if isinstance(cfg, dict) else {}
        t.params = t.meta.get("params")
        t.config = cfg if isinstance(cfg, dict) else t.config
    except (OSError, ValueError):
        pass
    t.config = {k: v for k, v in with_defaults(t.config).items() if k != "out_dir"} if t.config else {}
    if (d / "metrics.csv").exists():
        try:
            t.history = read_history(d / "metrics.csv")
        except (OSError, ValueError, csv.Error) as e:
            t.status, t.reason = "broken", f"metrics.csv unreadable ({str(e)[:100]})"
            return t
    summary = None
    if (d / "summary.json").exists():
        try:
            summary = read_json(d / "summary.json")
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            t.status, t.reason = "broken", f"summary.json unreadable ({str(e)[:100]})"
            return t
    if summary is None:
        if (d / "error.txt").exists():
            t.status, t.reason = "failed", error_line(d / "error.txt")
        elif (d / "stopped.json").exists():
            t.status, t.reason = "stopped", f"stopped early by ASHA after epoch {len(t.history)}"
        else:
            epochs = t.config.get("epochs", "?")
            t.status, t.reason = "unfinished", f"epoch {len(t.history)} of {epochs} (running, stopped or interrupted)"
        return t
    t.summary = summary
    t.params = t.params or summary.get("params")
    if summary.get("status") != "ok":
        t.status, t.reason = "diverged", str(summary.get("status", "unknown status"))[:200]
        return t
    try:
        if logits:
            t.val_logits, t.test_logits = _load_logits(d, "val"), _load_logits(d, "test")
            t.val_labels = np.load(d / "labels_val.npy", allow_pickle=False).astype(np.int64)
            t.test_labels = np.load(d / "labels_test.npy", allow_pickle=False).astype(np.int64)
        else:
            missing = [f for f in ("logits_val.npy", "logits_test.npy", "labels_val.npy", "labels_test.npy")
                       if not (d / f).is_file()]
            if missing:
                raise ValueError(f"{missing[0]} is missing")
    except (OSError, ValueError, EOFError) as e:
        t.status, t.reason = "broken", f"finished, but its logits/labels are missing or truncated ({str(e)[:120]})"
        return t
    t.status = "finished"
    return t


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
        if (c / GROUP_FILE).exists():
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
    return any((d / f).exists() for f in ("config.json", "params.json", "error.txt", "metrics.csv"))


def is_experiment(d: Path) -> bool:
    return d.is_dir() and ((d / MANIFEST).exists() or bool(trial_dirs(d)))


def read_manifest(path: Path) -> list[dict]:
    try:
        data = read_json(path / MANIFEST) if (path / MANIFEST).exists() else []
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict) and isinstance(e.get("name"), str)] if isinstance(data, list) else []


def read_launches(path: Path) -> list[dict]:
    out = []
    if (path / LAUNCHES).exists():
        for line in (path / LAUNCHES).read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def read_spec(path: Path) -> dict:
    """The experiment's effective spec (as launched, overrides applied), read without aliases."""
    from .spec import SpecError, safe_yaml

    if not (path / SPEC_COPY).exists():
        return {}
    try:
        raw = safe_yaml((path / SPEC_COPY).read_text(errors="replace"), str(path / SPEC_COPY))
    except SpecError:
        return {}
    return raw if isinstance(raw, dict) else {}


def load_experiment(path: Path, logits: bool = True, check_labels: bool = True) -> Experiment:
    """Every trial of an experiment folder, with statuses; finished trials' test accuracies are
    recomputed from their logits (check_labels, needs logits)."""
    path = Path(path)
    manifest = read_manifest(path)
    dirs = trial_dirs(path)
    trials = []
    for e in manifest:
        d, group = dirs.pop(e["name"], (None, e.get("group")))
        trials.append(read_trial(d, e["name"], e.get("train"), logits))
        trials[-1].params = trials[-1].params or e.get("params")
        trials[-1].group = group
    for n, (d, group) in sorted(dirs.items()):
        trials.append(read_trial(d, n, None, logits))
        trials[-1].group = group
    # Named by its folder, never by the name inside its spec: an old copy (NAME.prev-1) or a
    # foreign folder must not write its report over another experiment's.
    exp = Experiment(path.resolve().name, path, read_spec(path), trials, manifest, read_launches(path))
    if logits and check_labels:
        check_test_accuracy(exp)
    return exp


def true_test_labels(exp: Experiment) -> np.ndarray | None:
    """The MNIST test labels from the data files when they can be found, else the trials' own
    (which must then agree with each other)."""
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
    except GridrunError:
        pass
    first = done[0].test_labels
    if all(np.array_equal(t.test_labels, first) for t in done):
        exp.label_source = "the labels the trials saved (the data files were not found here)"
        return first
    raise GridrunError(f"{exp.dir}: trials saved different test labels and the data files are not here: "
                       f"set GRIDRUN_DATA so the report can check them against MNIST")


def check_test_accuracy(exp: Experiment) -> None:
    """Recompute each finished trial's test accuracy from its logits; a disagreement with what
    the trial reported marks it broken."""
    labels = exp.test_labels = true_test_labels(exp)
    for t in exp.trials:
        if t.status != "finished":
            continue
        if t.test_logits.shape[0] != len(labels):
            t.status, t.reason = "broken", f"logits_test.npy has {t.test_logits.shape[0]} rows for {len(labels)} labels"
            continue
        t.test_acc_recomputed = float((t.test_logits.argmax(1) == labels).mean())
        said = t.final.get("test_acc")
        if said is None or abs(said - t.test_acc_recomputed) > AGREE_TOL:
            t.status = "broken"
            t.reason = f"reported test acc {said} but its logits score {t.test_acc_recomputed:.4f}"


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
        except (ProcessLookupError, ValueError, OverflowError):
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

def _resolve(name_or_path: str | os.PathLike, storage: str) -> Path:
    p = Path(name_or_path)
    if p.is_dir() and is_experiment(p):
        return p
    return find_experiments([str(name_or_path)], storage)[0]


def _config_columns(config: dict) -> dict:
    return {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in config.items()}


def load(name_or_path: str | os.PathLike, storage: str = "runs"):
    """One row per trial of an experiment: trial, status, reason, config fields, params, final
    metrics, epochs, train seconds, device. Reads files only (no logits)."""
    import pandas as pd

    exp = load_experiment(_resolve(name_or_path, storage), logits=False)
    rows = []
    for t in exp.trials:
        final = t.final
        rows.append({"trial": t.name, "status": t.status, "reason": t.reason, **_config_columns(t.config),
                     "params": t.params, "epochs": len(t.history),
                     **{f"final_{k}": final.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc",
                                                              "test_acc")},
                     "train_seconds": round(sum(t.epoch_seconds), 1),
                     "device": t.meta.get("device"), "peak_gpu_mem_mb": t.meta.get("peak_gpu_mem_mb"),
                     "group": t.group})
    return pd.DataFrame(rows)


def history(name_or_path: str | os.PathLike, storage: str = "runs"):
    """One row per trial and epoch: trial, its config fields, and that epoch's metrics."""
    import pandas as pd

    exp = load_experiment(_resolve(name_or_path, storage), logits=False)
    rows = []
    for t in exp.trials:
        cfg = _config_columns({k: v for k, v in t.config.items() if k not in NOT_CONFIG or k == "seed"})
        for h in t.history:
            rows.append({"trial": t.name, "status": t.status, **cfg,
                         **{k: (int(v) if k == "epoch" and v is not None and not math.isnan(v) else v)
                            for k, v in h.items()}})
    return pd.DataFrame(rows)
