"""train_fused(configs) -> results: K trials of one architecture trained as one group in the
engine (gridrun/engine/; `fuse_strategy` picks how the K members are computed). Each member
writes an ordinary trial folder. Knows nothing of Ray."""
from __future__ import annotations

from .engine import run


def train_fused(configs: list, on_epoch=None, resume_from: str | None = None, state_dir: str | None = None,
                arrays: dict | None = None, group_dir: str | None = None) -> list[dict]:
    """Train K configs as one group; returns their results (as train.train would, in order).
    `on_epoch(metrics, state_path)` gets the group's epoch with its members' mean and best
    validation accuracy."""
    return run(configs, on_epoch, resume_from, state_dir, arrays, group_dir)
