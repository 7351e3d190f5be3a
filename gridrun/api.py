"""gridrun from Python (a notebook): launch a grid or a study, get a handle on its results.

    import gridrun
    exp = gridrun.launch("grids/smoke.yaml", seeds=3, base__epochs=2)   # overrides as CLI's key=value
    exp.load(); exp.history(); exp.best()
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import GridrunError

LAUNCH_OPTIONS = ("name", "storage", "fuse", "max_concurrent", "address", "fresh", "dry_run")


class Experiment:
    """An experiment launched (or found) under a storage: its tables, read from its folder."""

    def __init__(self, name: str, storage: str | None = None, exit_code: int | None = None):
        self.name, self.exit_code = name, exit_code
        self.storage = storage or os.environ.get("GRIDRUN_STORAGE") or "runs"

    def __repr__(self) -> str:
        code = f", exit_code={self.exit_code}" if self.exit_code is not None else ""
        return f"gridrun.Experiment({self.name!r}, storage={self.storage!r}{code})"

    def load(self):
        """One row per trial (gridrun.load)."""
        from .results import load

        return load(self.name, self.storage)

    def history(self):
        """One row per trial and epoch (gridrun.history)."""
        from .results import history

        return history(self.name, self.storage)

    def best(self) -> dict:
        """The config the report chooses on validation (a study's: among its confirmed configs,
        with test accuracy from the confirmation runs alone): label, config, val and test
        accuracy (mean, std, n) and its trials."""
        from .best import chosen_config

        return chosen_config(self.name, self.storage)


def overrides_of(options: dict) -> list[str]:
    """Keyword overrides as the CLI's key=value: `base__epochs=2` or {"base.epochs": 2}; values as JSON
    (which YAML reads as written)."""
    return [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in options.items()]


def launch(spec, **options) -> Experiment:
    """Run (or resume, or grow) a grid or a study from a spec file or a spec dict, as `gridrun launch`
    does; any keyword not a launch option (name, storage, fuse, max_concurrent, address, fresh,
    dry_run) is a spec override. Returns the experiment's handle (exit_code: the launch's)."""
    from .launch import launch as run

    from .experiment import PY_CALL

    said = call_text(spec, options)
    kw = {k: options.pop(k) for k in LAUNCH_OPTIONS if k in options}
    kw.setdefault("storage", os.environ.get("GRIDRUN_STORAGE") or "runs")
    for k in ("name", "storage", "address"):  # a number here was a raw TypeError from deep inside
        if kw.get(k) is not None and not isinstance(kw[k], (str, os.PathLike)):
            raise GridrunError(f"gridrun.launch: {k}={kw[k]!r} must be a string (a {'name' if k == 'name' else 'path or URI'})")
    with tempfile.TemporaryDirectory(prefix="gridrun-spec-") as tmp:
        path = _spec_file(spec, Path(tmp))
        from .spec import load

        token = PY_CALL.set(said)
        try:
            name = kw.get("name") or load(path, overrides_of(options)).name
            code = run(path, overrides=overrides_of(options), **kw)
        except GridrunError as e:  # a spec dict's errors named the temporary file it was written to
            if path == str(spec) or path not in str(e):
                raise
            raise type(e)(str(e).replace(path, f"spec dict {spec.get('name', '?')!r}")) from None
        finally:
            PY_CALL.reset(token)
    return Experiment(name, kw["storage"], code)


def call_text(spec, options: dict) -> str:
    """The call as the launch record says it: a spec dict by its name (the spec as run is the
    experiment's spec.yaml), every keyword as given."""
    what = repr(str(spec)) if isinstance(spec, (str, os.PathLike)) else \
        f"<spec dict {spec.get('name', '?')!r}: as run in the experiment's spec.yaml>" if isinstance(spec, dict) else "?"
    return f"gridrun.launch({', '.join([what, *(f'{k}={v!r}' for k, v in options.items())])})"


def _spec_file(spec, tmp: Path) -> str:
    """A spec path as given, or a spec dict written as YAML (its report.reference: a path as the
    process sees it)."""
    if isinstance(spec, (str, os.PathLike)):
        return str(spec)
    if not isinstance(spec, dict):
        raise GridrunError(f"gridrun.launch: give a spec file's path or a spec dict; got {type(spec).__name__}")
    import yaml

    path = tmp / f"{spec.get('name', 'spec')}.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(spec)), sort_keys=False))
    return str(path)
