"""gridrun: YAML grids of small PyTorch experiments on Ray Tune, reported honestly.

    import gridrun
    df = gridrun.load("tiny_best")        # one row per trial (config, status, final metrics)
    h = gridrun.history("tiny_best")      # one row per trial and epoch
"""
from __future__ import annotations

import difflib

__version__ = "0.2.0"


class GridrunError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""


def did_you_mean(key, valid, cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the nearest valid name, else ' (valid: a, b, ...)'."""
    valid = [str(v) for v in valid]
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=cutoff)
    return f" (did you mean {near[0]!r}?)" if near else f" (valid: {', '.join(valid)})"


def __getattr__(name):  # gridrun.load / gridrun.history without importing pandas at start-up
    if name in ("load", "history"):
        from . import results

        return getattr(results, name)
    raise AttributeError(f"module 'gridrun' has no attribute {name!r}")
