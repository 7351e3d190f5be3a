"""What a caller may hook into a run, and the one way a test hooks a process it does not call.

Tests need what users never do: nets that crash on cue, trials held after an epoch, a step
recorded off CUDA. None of it ships: a caller passes `Hooks` to train, and a process that
only runs gridrun (a CLI subprocess, a Ray trial) imports the Python file named by
$GRIDRUN_HOOKS, when set, as the zoo is loaded. A launch hands $GRIDRUN_HOOKS and its
$GRIDRUN_HOOKS_* settings to its trials in Ray's runtime_env, so they reach the trials of a Ray
it joins too. Unset (every user), nothing is imported.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable

ENV = "GRIDRUN_HOOKS"
MODULE = "gridrun_test_hooks"  # the file's name in sys.modules: imported once per process


@dataclass(frozen=True)
class Hooks:
    """recorder(step) runs `step` once, recorded, and returns its replay (None: CUDA graphs on
    CUDA, eager elsewhere); timed: time the fuse strategies for `auto` (None: on CUDA only);
    after_epoch(epoch, out_dir) runs after each epoch's state is saved and reported."""
    recorder: Callable | None = None
    timed: bool | None = None
    after_epoch: Callable | None = None


def load():
    """The hooks module named by $GRIDRUN_HOOKS (imported on first use), or None when unset."""
    path = os.environ.get(ENV)
    if not path:
        return None
    if MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(MODULE, path)
        if spec is None:
            raise ImportError(f"${ENV}={path!r} is not a Python file")
        module = sys.modules[MODULE] = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[MODULE]
            raise
    return sys.modules[MODULE]


def from_env() -> Hooks:
    """The hooks of this process: the $GRIDRUN_HOOKS module's `after_epoch`, else none."""
    module = load()
    return Hooks(after_epoch=getattr(module, "after_epoch", None))


def forwarded() -> dict:
    """$GRIDRUN_HOOKS and its $GRIDRUN_HOOKS_* settings, for a launch's trials."""
    return {k: v for k, v in os.environ.items() if k == ENV or k.startswith(ENV + "_")}
