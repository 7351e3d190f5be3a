"""YAML grid spec -> validated trial configs. The only module that knows the YAML shape.

    name: smoke                       # experiment name: runs/<name>/, reports/<name>.md
    data: {val_size: 5000, subset: null, split_seed: 0, data_dir: null}
    base: {epochs: 20, batch_size: 64}   # TrainConfig fields every trial shares
    grid:                             # axes; trials are their cross product
      model: [vanilla, dropout]       #   an axis named after a TrainConfig field takes values
      scheduler: [none, step]
      variant:                        #   any other name: each value is a dict of fields
        - {model: resnet20, batch_size: 128}
    seeds: 3                          # n -> seeds 0..n-1, or a list
    resources: {cpu: 1, gpu: 0.125}   # per trial; gpu a fraction in (0, 1] or a whole number
    retries: 2                        # a trial that raises is retried from its checkpoint
    early_stop: {grace_period: 5, reduction_factor: 3}   # optional ASHA on val_acc
    constraints: {max_params: 20000, max_epochs: 20, target_test_acc: 0.994}
    report: {top_k: 5}
"""
from __future__ import annotations

import difflib
import itertools
import json
from dataclasses import fields
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import GridrunError
from .config import ConfigError, TrainConfig

CONFIG_KEYS = [f.name for f in fields(TrainConfig)]


class SpecError(GridrunError):
    """A spec that cannot be launched; nothing was started."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Data(_Strict):
    val_size: int = Field(5000, ge=0, lt=60000)
    subset: int | None = Field(None, ge=1)
    split_seed: int = 0
    data_dir: str | None = None


class Resources(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = 0

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: float) -> float:
        if v < 0 or (v > 1 and v != int(v)):
            raise ValueError(f"gpu must be 0, a fraction in (0, 1] such as 0.125, or a whole number; got {v}")
        return v


class EarlyStop(_Strict):
    grace_period: int = Field(3, ge=1)     # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(3, gt=1)


class Constraints(_Strict):
    max_params: int | None = Field(None, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    target_test_acc: float | None = Field(None, gt=0, le=1)


class ReportOpts(_Strict):
    top_k: int = Field(5, ge=1)


class Spec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    data: Data = Data()
    base: dict = {}
    grid: dict[str, list] = {}
    seeds: int | list[int] = 1
    resources: Resources = Resources()
    retries: int = Field(1, ge=0)
    early_stop: EarlyStop | None = None
    constraints: Constraints = Constraints()
    report: ReportOpts = ReportOpts()

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def _nearest(key: str, valid) -> str:
    near = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    return f" (did you mean {near[0]!r}?)" if near else f" (valid: {', '.join(valid)})"


def _pydantic_line(src: str, e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        parent = err["loc"][:-1]
        model = Spec
        for p in parent:
            model = model.model_fields[p].annotation
            model = next((a for a in getattr(model, "__args__", (model,)) if isinstance(a, type)), model)
        valid = list(getattr(model, "model_fields", {}))
        return f"{src}: unknown key {loc!r}{_nearest(err['loc'][-1], valid)}{more}"
    return f"{src}: {loc}: {err['msg']}{more}"


def parse(raw: dict, src: str = "spec") -> Spec:
    """Validate the spec's shape; config keys in base/grid are checked here too."""
    if not isinstance(raw, dict):
        raise SpecError(f"{src}: a spec is a YAML mapping with at least 'name'; got {type(raw).__name__}")
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_pydantic_line(src, e)) from None
    for key in spec.base:
        if key not in CONFIG_KEYS or key == "out_dir":
            raise SpecError(f"{src}: unknown key 'base.{key}'{_nearest(key, CONFIG_KEYS)}")
    for axis, values in spec.grid.items():
        if not values:
            raise SpecError(f"{src}: grid.{axis} is empty: give it at least one value")
        if axis not in CONFIG_KEYS:
            for v in values:
                if not isinstance(v, dict):
                    raise SpecError(f"{src}: unknown key 'grid.{axis}'{_nearest(axis, CONFIG_KEYS)}; an axis "
                                    f"with another name must list dicts of config fields")
                for key in v:
                    if key not in CONFIG_KEYS:
                        raise SpecError(f"{src}: unknown key 'grid.{axis}[].{key}'{_nearest(key, CONFIG_KEYS)}")
    return spec


def load(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} not found: give the path of a YAML grid such as grids/smoke.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    return parse(raw, str(path))


def _short(v) -> str:
    if isinstance(v, dict):
        return "-".join(_short(x) for x in v.values())
    return str(v).replace("+", "").replace("/", "")[:24]


def expand(spec: Spec) -> list[dict]:
    """Every trial: {"name", "axes", "train": TrainConfig dict}, validated, in a fixed order."""
    axes = list(spec.grid.items())
    trials = []
    combos = itertools.product(*[v for _, v in axes]) if axes else [()]
    for combo in combos:
        for seed in spec.seed_list:
            cfg = {**spec.data.model_dump(), **spec.base}
            label = {}
            for (axis, _), value in zip(axes, combo):
                if axis in CONFIG_KEYS:
                    cfg[axis] = value
                else:
                    cfg.update(value)
                label[axis] = value
            cfg["seed"] = seed
            cfg.setdefault("threads", max(1, int(spec.resources.cpu)))
            if 0 < spec.resources.gpu < 1:
                cfg.setdefault("gpu_memory_fraction", spec.resources.gpu)
            i = len(trials)
            name = "_".join([f"{i:04d}"] + [_short(v) for v in label.values()] + [f"s{seed}"])
            try:
                tc = TrainConfig.from_dict(cfg)
            except ConfigError as e:
                where = ", ".join(f"{k}={_short(v)}" for k, v in label.items()) or "base"
                raise SpecError(f"trial {i} ({where}): {e}") from None
            trials.append({"name": name, "axes": label, "train": tc.to_dict()})
    return trials


def check_budget(spec: Spec, trials: list[dict]) -> dict[str, int]:
    """Parameters of each distinct model config (meta device); over max_params is an error."""
    from .models import count_params
    from .train import model_build_kwargs

    counts = {}
    for t in trials:
        c = t["train"]
        kw = model_build_kwargs(c["model"], c["dropout"], c["model_args"])
        key = json.dumps([c["model"], kw], sort_keys=True)
        if key not in counts:
            counts[key] = count_params(c["model"], **kw)
        t["params"] = counts[key]
        cap = spec.constraints.max_params
        if cap and t["params"] > cap:
            raise SpecError(f"trial {t['name']}: model {c['model']} has {t['params']:,} parameters, over "
                            f"constraints.max_params={cap:,}: pick a smaller model or raise the limit")
        cap_e = spec.constraints.max_epochs
        if cap_e and c["epochs"] > cap_e:
            raise SpecError(f"trial {t['name']}: epochs={c['epochs']} is over constraints.max_epochs={cap_e}")
    return counts


def load_trials(path: str | Path) -> tuple[Spec, list[dict]]:
    """Load, validate, expand and budget-check a spec file."""
    spec = load(path)
    trials = expand(spec)
    check_budget(spec, trials)
    return spec, trials
