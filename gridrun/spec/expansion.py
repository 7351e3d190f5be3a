"""The grid expanded into trials: readable names from axis values and seeds, each config
validated as a TrainConfig, no config twice; `load_trials` is load, expand and budget-check."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ..errors import GridrunError
from ..record import Trial
from ..config import DEFAULTS, ConfigError, TrainConfig
from .schema import CONFIG_KEYS, Spec, SpecError, load, rung_fields
from .sampling import points
from .preflight import _check_unfused_rungs, check_budget, check_models


def name_part(v) -> str:
    """An axis value as a part of a trial's folder name."""
    if isinstance(v, dict):
        return "-".join(name_part(x) for x in v.values())
    return re.sub(r"[^A-Za-z0-9._-]", "", str(v).replace("+", "-"))[:24] or "x"


def _point(axes: dict) -> str:
    """A grid point in words for a message: 'model=vgg, lr=0.1', or 'base'."""
    return ", ".join(f"{k}={name_part(v)}" for k, v in axes.items()) or "base"


def expand(spec: Spec) -> list[Trial]:
    """Every trial as a record (name, id, axes, its TrainConfig as a dict), validated, in a fixed
    order. Names are readable (axis values and seed) and do not depend on a trial's position, so a
    grown grid keeps every existing trial's name."""
    trials = []
    users = user_models(spec)
    for label in points(spec):
        for seed in spec.seed_list:
            tc = _train_config(spec, label, seed, users, len(trials))
            # a dataset named by its path reads as its file or folder name
            parts = [p for p in (name_part(Path(v).name if a == "dataset" and isinstance(v, str) else v)
                                 for a, v in label.items()) if p]
            if "model" not in label and not any(isinstance(v, dict) and "model" in v for v in label.values()):
                parts.insert(0, name_part(tc.model))
            trials.append(Trial.make("_".join(parts + [f"s{seed}"]), dict(label), tc.to_dict()))
    trials = _check_trials(spec, trials)
    _check_unfused_rungs(spec, trials)
    check_models(trials)
    return trials


def _train_config(spec: Spec, label: dict, seed: int, users: dict, i: int) -> TrainConfig:
    """The TrainConfig of grid point `label` with `seed` (trial `i`, for the message)."""
    cfg = {**spec.data.model_dump(), **spec.base}
    for axis, value in label.items():
        if axis in CONFIG_KEYS:
            cfg[axis] = value
        else:
            cfg.update(value)
    if cfg.get("model") in users:
        cfg["model"] = users[cfg["model"]]
    cfg.update(rung_fields(spec, cfg.get("epochs", DEFAULTS["epochs"])))
    cfg["seed"] = seed
    cfg.setdefault("threads", max(1, int(spec.resources.cpu)))
    if 0 < spec.resources.gpu < 1:
        cfg.setdefault("gpu_memory_fraction", spec.resources.gpu)
    try:
        return TrainConfig.from_dict(cfg)
    except ConfigError as e:
        raise SpecError(f"trial {i} ({_point(label)}, seed {seed}): {e}") from None


def user_models(spec: Spec) -> dict[str, str]:
    """The nets the spec's modules register, name -> import path (module:name): a config names
    its module, so a worker, `gridrun train --config` and a restore know what to import."""
    from ..models._registry import module_models

    try:
        return {n: f"{mod}:{n}" for mod in spec.modules for n in module_models(mod)}
    except GridrunError as e:
        raise SpecError(str(e)) from None



def _check_trials(spec: Spec, trials: list[Trial]) -> list[Trial]:
    """No config twice (copies would be reported as independent seeds); unique, safe names.
    Datasets may differ (each trial is scored against its own dataset's test set), but MNIST is
    one dataset wherever it lies: its trials name one data folder (data_dir is plumbing)."""
    dirs = {t.train["data_dir"] for t in trials if t.train["dataset"] == "mnist"}
    if len(dirs) > 1:
        raise SpecError(f"trials name different data_dir values ({', '.join(sorted(map(str, dirs)))}): "
                        f"set it once under data: (MNIST's test set is one; another image set is a dataset: PATH)")
    seen: dict[str, Trial] = {}
    for t in trials:
        if t.id in seen:
            first = seen[t.id]
            raise SpecError(f"the grid holds one config twice ({_point(first.axes)} and {_point(t.axes)}, seed "
                            f"{t.train['seed']}): copies would be reported as independent runs; remove the repeat")
        seen[t.id] = t
    count = Counter(t.name for t in trials)
    # different configs whose labels read alike: add the config's hash
    return [t.relabel(name=_safe_name(f"{t.name}_{t.id[:6]}" if count[t.name] > 1 else t.name, t.id)) for t in trials]


def _safe_name(name: str, tid: str) -> str:
    """Names are built from [A-Za-z0-9._-] only; keep them short and not hidden."""
    if len(name) > 120:
        name = f"{name[:100]}_{tid[:6]}"
    return name if name[0].isalnum() else "t" + name


def load_trials(path: str | Path, overrides: list[str] | None = None) -> tuple[Spec, list[Trial]]:
    """Load, validate, expand and budget-check a spec file (with command-line overrides)."""
    spec = load(path, overrides)
    if spec.search is not None:  # a study's trials are asked, not expanded (study.py)
        return spec, []
    return spec, check_budget(spec, expand(spec))
