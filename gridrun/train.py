"""train(configs, sink) -> results: K >= 1 trials of one architecture trained as one group in the
engine (gridrun/engine/), which says what files it writes; one config is a group of one. Knows
nothing of Ray."""
from __future__ import annotations

from .config import TrainConfig
from .engine import Folders, train as train_group
from .storage.layout import StateError
from .engine.group import fast_formats, prepare_splits  # noqa: F401  (public helpers)

__all__ = ["Folders", "StateError", "train", "fast_formats", "prepare_splits"]


def train(configs: list | TrainConfig | dict, sink: Folders | None = None, resume_from: str | None = None,
          arrays: dict | None = None, hooks=None) -> list[dict] | dict:
    """Train a group of configs (a list: their results, in order) or one config (its result).
    `sink`: where records and arrays go (engine.Folders: state folder, on_epoch(row, state_path),
    group folder); `resume_from` names a state.pt to continue from; `arrays` are the dataset's
    arrays already in memory (load_arrays), used instead of reading files."""
    if isinstance(configs, list):
        return train_group(configs, sink, resume_from, arrays, hooks)
    return train_group([configs], sink, resume_from, arrays, hooks)[0]
