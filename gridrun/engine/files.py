"""What a trial's training writes, through storage.layout.TrialDir (which names every file and says what
each holds): its config, one metrics row and TensorBoard's scalars per epoch, then its final
logits, labels, model and summary, and the group's resumable state after every epoch; `Folders`
is the sink a caller of train passes to say where they go.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..storage.layout import EPOCH_FIELDS, SPLITS, TrialDir


class Writer:
    """Files of one trial; every method is a no-op when there is no out_dir."""

    def __init__(self, out_dir: str | None, history: list[dict]):
        self.trial = TrialDir(out_dir) if out_dir else None
        self.tb = None
        if self.trial:
            self.trial.path.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.trial.path))
        # Rewritten from the resumed history, so a trial resumed on another node (empty folder)
        # or after a crash mid-epoch still has exactly one row per epoch; rewritten whole and
        # atomically every epoch (a few KB), so a full disk never leaves half a row.
        self.rows = [[m.get(k) for k in EPOCH_FIELDS] for m in history]
        if self.trial:
            self.trial.write_metrics(self.rows)

    def config(self, cfg: dict, meta: dict) -> None:
        if self.trial:
            self.trial.write_config(cfg, meta)

    def epoch(self, m: dict) -> None:
        if not self.trial:
            return
        self.rows.append([m.get(k) for k in EPOCH_FIELDS])
        self.trial.write_metrics(self.rows)
        for k in EPOCH_FIELDS[1:]:
            if m.get(k) is not None and not (isinstance(m[k], float) and math.isnan(m[k])):
                self.tb.add_scalar(k.replace("_", "/", 1) if "_" in k else k, m[k], m["epoch"])
        self.tb.flush()

    def close(self):
        if self.tb:
            self.tb.close()


def write_final(writer: Writer, device: torch.device, meta: dict, history: list, status: str,
                scores: dict | None, labels: dict, weights, finished_at: float | None = None) -> dict:
    """What every finished trial folder holds (logits, labels, model.pt when it has `scores`: it
    ended ok, or was pruned; always summary.json); `labels` maps split -> labels, `weights()` gives
    the state dict to save; `finished_at`: when it ended, if not now (files written again).
    Returns the result dict."""
    meta = dict(meta)
    if device.type == "cuda":
        meta["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result = {"status": status, "epochs": len(history), "final": history[-1] if history else None,
              "history": history, **meta}
    trial = writer.trial
    if trial is None:
        return result
    if scores is not None:  # ended ok, or pruned at a rung: the scores of its last epoch
        for split in SPLITS:
            trial.write_logits(split, scores[f"{split}_logits"].half().cpu().numpy())
        for split in SPLITS:
            trial.write_labels(split, labels[split].to(torch.uint8).cpu().numpy())
        trial.write_model(weights())
    trial.write_summary({**{k: v for k, v in result.items() if k != "history"},
                         "finished_at": finished_at or time.time(), "pid": os.getpid()})
    return result


def save_state(state_dir: Path | None, state: dict) -> str | None:
    """The resumable state in `state_dir` (storage.layout.TrialDir.write_state); None when there is none."""
    if state_dir is None:
        return None
    return str(TrialDir(state_dir).write_state(state))


@dataclass(frozen=True)
class Folders:
    """Where a run's records and arrays go: each member's files in its config's out_dir (Writer),
    the group's state in `state_dir`, each epoch's row to `on_epoch(row, state_path)`. `group_dir`:
    the fused group's folder, named in its members' config.json, and on_epoch gets the group's row;
    None with one member: a lone trial, whose own row on_epoch gets and whose state goes to its
    out_dir unless state_dir says otherwise."""

    state_dir: str | None = None
    on_epoch: Callable | None = None
    group_dir: str | None = None

    def lone(self, k: int) -> bool:
        return self.group_dir is None and k == 1

    def group_meta(self, k: int) -> dict:
        """What a member's config.json says of its group (nothing for a lone trial)."""
        return {} if self.lone(k) else {"fused": k, "fused_group": self.group_dir and Path(self.group_dir).name}

    def state_folder(self, k: int, out_dir: str | None) -> Path | None:
        folder = self.state_dir or (out_dir if self.lone(k) else None)
        return Path(folder) if folder else None
