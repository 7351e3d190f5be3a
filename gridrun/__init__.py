"""gridrun: YAML grids of small PyTorch experiments on Ray Tune, reported honestly.

    import gridrun
    df = gridrun.load("tiny_best")        # one row per trial (config, status, final metrics)
    h = gridrun.history("tiny_best")      # one row per trial and epoch
"""
from __future__ import annotations

from .errors import GridrunError, __version__, did_you_mean  # noqa: F401  (the public names)


def __getattr__(name):  # gridrun.load / gridrun.history without importing pandas at start-up
    if name in ("load", "history"):
        from . import results

        return getattr(results, name)
    raise AttributeError(f"module 'gridrun' has no attribute {name!r}")
