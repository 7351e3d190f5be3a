"""What a trial leaves on disk: every file name a trial folder holds is written here, once.

  config.json        the resolved config plus `_meta` (params, device, strategy, versions, ...)
  metrics.csv        one row per epoch (EPOCH_FIELDS)
  events.out.tfevents.*  TensorBoard scalars
  state.pt           everything a group needs to resume after its last finished epoch
  model.pt           final weights of one member (state_dict; the weight average with `ema`)
  logits_val.npy, logits_test.npy   float16 (N, 10) logits of the final model
  labels_val.npy, labels_test.npy   uint8 labels they were scored against
  summary.json       status ("ok" | "diverged at epoch k") and final metrics
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import GridrunError, __version__

CONFIG, METRICS, STATE, MODEL, SUMMARY = "config.json", "metrics.csv", "state.pt", "model.pt", "summary.json"
EVENTS = "events.out.tfevents.*"  # named by TensorBoard's SummaryWriter
SPLITS = ("val", "test")


def logits_file(split: str) -> str:
    return f"logits_{split}.npy"


def labels_file(split: str) -> str:
    return f"labels_{split}.npy"


EPOCH_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr",
                "seconds", "images_per_s"]
STATE_VERSION = 3  # 3: one format for every group (K >= 1) of the engine


class StateError(GridrunError):
    """A resume state that cannot be used (corrupt, foreign or from another config)."""


def atomic_save(path: Path, obj) -> None:
    """Write .npy / .json / torch files via a temp file and rename: a killed trial never
    leaves half a file."""
    from ..diskio import atomic_write  # fsynced, and no temp file left when the disk is full

    path = Path(path)
    if path.suffix == ".npy":  # through bytes: np.save to a file drops the errno of a full disk
        buf = io.BytesIO()
        np.save(buf, obj)
        atomic_write(path, lambda f: f.write(buf.getbuffer()))
    elif path.suffix == ".json":
        atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode()))
    else:
        atomic_write(path, lambda f: torch.save(obj, f))


def versions() -> dict:
    """Versions a result depends on (the report's conditions line)."""
    out = {"gridrun": __version__, "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(0))
    return out


class Writer:
    """Files of one trial; every method is a no-op when there is no out_dir."""

    def __init__(self, out_dir: str | None, history: list[dict]):
        self.dir = Path(out_dir) if out_dir else None
        self.tb = None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir))
        # Rewritten from the resumed history, so a trial resumed on another node (empty folder)
        # or after a crash mid-epoch still has exactly one row per epoch; rewritten whole and
        # atomically every epoch (a few KB), so a full disk never leaves half a row.
        self.rows = [[m.get(k) for k in EPOCH_FIELDS] for m in history]
        self._write_metrics()

    def _write_metrics(self) -> None:
        if not self.dir:
            return
        from ..diskio import atomic_write_text

        text = io.StringIO()
        w = csv.writer(text, lineterminator="\r\n")  # csv's default line ends, as before
        w.writerow(EPOCH_FIELDS)
        w.writerows(self.rows)
        atomic_write_text(self.dir / METRICS, text.getvalue())

    def config(self, cfg: dict, meta: dict) -> None:
        self.save(CONFIG, {**cfg, "_meta": meta})

    def epoch(self, m: dict) -> None:
        if not self.dir:
            return
        self.rows.append([m.get(k) for k in EPOCH_FIELDS])
        self._write_metrics()
        for k in EPOCH_FIELDS[1:]:
            if m.get(k) is not None and not (isinstance(m[k], float) and math.isnan(m[k])):
                self.tb.add_scalar(k.replace("_", "/", 1) if "_" in k else k, m[k], m["epoch"])
        self.tb.flush()

    def save(self, name: str, obj) -> None:
        if self.dir:
            atomic_save(self.dir / name, obj)

    def close(self):
        if self.tb:
            self.tb.close()


def write_final(writer: Writer, device: torch.device, meta: dict, history: list, status: str,
                scores: dict | None, labels: dict, weights) -> dict:
    """What every finished trial folder holds (logits, labels, model.pt when it ended ok; always
    summary.json); `labels` maps split -> labels, `weights()` gives the state dict to save.
    Returns the result dict."""
    meta = dict(meta)
    if device.type == "cuda":
        meta["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result = {"status": status, "epochs": len(history), "final": history[-1] if history else None,
              "history": history, **meta}
    if status == "ok":
        for split in SPLITS:
            writer.save(logits_file(split), scores[f"{split}_logits"].half().cpu().numpy())
        for split in SPLITS:
            writer.save(labels_file(split), labels[split].to(torch.uint8).cpu().numpy())
        writer.save(MODEL, weights())
    writer.save(SUMMARY, {**{k: v for k, v in result.items() if k != "history"},
                          "finished_at": time.time(), "pid": os.getpid()})
    return result


def save_state(state_dir: Path | None, state: dict) -> str | None:
    """The resumable state as plain tensors and containers (loadable with
    torch.load(weights_only=True): resuming a foreign folder runs no code from it)."""
    if state_dir is None:
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATE
    atomic_save(path, {"version": STATE_VERSION, **state})
    return str(path)


def read_state(path: str | os.PathLike, device="cpu") -> dict:
    """A state file's contents, or StateError saying why it cannot be used."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated zip, a planted pickle, a stranger's file: all unusable
        raise StateError(f"resume state {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
            from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise StateError(f"resume state {path} is not a gridrun state of version {STATE_VERSION}")
    return state
