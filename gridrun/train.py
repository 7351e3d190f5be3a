"""train(config, on_epoch=None) -> result: one trial, start to finish: a group of one in the
engine (gridrun/engine/), which says what files it writes. Knows nothing of Ray."""
from __future__ import annotations

from .config import TrainConfig
from .engine import run
from .store import StateError  # what a resume refused raises: public with train
from .engine.group import fast_formats, prepare_splits  # noqa: F401  (public helpers)

__all__ = ["StateError", "train", "fast_formats", "prepare_splits"]


def train(config: TrainConfig | dict, on_epoch=None, resume_from: str | None = None,
          state_dir: str | None = None, arrays: dict | None = None) -> dict:
    """Train one config. `on_epoch(metrics, state_path)` is called after every epoch; state_path
    is the resumable state file in `state_dir` (default out_dir; None when neither is set).
    `resume_from` names a state.pt to continue from; `arrays` are MNIST arrays already in memory
    (load_arrays), used instead of reading files. Returns {"status", "epochs", "final", ...}."""
    cfg = TrainConfig.from_dict(config)
    return run([cfg], on_epoch, resume_from, state_dir, arrays, single=True)[0]
