"""gridrun: YAML grids of small PyTorch experiments on Ray Tune, reported honestly.

    import gridrun
    df = gridrun.load("tiny_best")        # one row per trial (config, status, final metrics)
    h = gridrun.history("tiny_best")      # one row per trial and epoch
    exp = gridrun.launch("grids/smoke.yaml", seeds=3)   # run (or resume) a grid or a study: a handle
    exp.load(); exp.history(); exp.best()
"""
from __future__ import annotations

import importlib
import sys
import types

from .errors import GridrunError, __version__, did_you_mean  # noqa: F401  (the public names)


def __getattr__(name):  # gridrun.load / gridrun.history without importing pandas at start-up
    if name in ("load", "history"):
        from . import results

        return getattr(results, name)
    if name == "launch":  # imports Ray: only when asked for
        return importlib.import_module(".launch", __name__)
    if name == "Experiment":
        from .api import Experiment

        return Experiment
    raise AttributeError(f"module 'gridrun' has no attribute {name!r}")


class _LaunchModule(types.ModuleType):
    """gridrun.launch is the driver module (gridrun/launch.py) and, called, the notebook's
    gridrun.launch(spec, **overrides) (api.launch): Python binds the submodule to the package's
    name `launch` on import, so the module itself answers the call."""

    def __call__(self, spec, **options):
        from .api import launch

        return launch(spec, **options)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name == "launch" and isinstance(value, types.ModuleType):  # the import system binding the submodule
            value.__class__ = _LaunchModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
