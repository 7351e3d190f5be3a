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
    fuse: 8                           # optional: train up to 8 same-architecture trials as one
    constraints: {max_params: 20000, max_epochs: 20, target_test_acc: 0.994}
    report: {top_k: 5, reference: tiny_nets_study.csv}
    max_trials: 5000                  # a larger grid is refused unless this says so

Validation happens here, before anything is written or started: the spec's shape (pydantic,
unknown keys name the nearest valid one), every expanded trial's TrainConfig, duplicate
configs, the size of the grid and the parameter budget.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import GridrunError, did_you_mean
from .identity import FUSE_SHARED, fuse_key, trial_id  # noqa: F401  (FUSE_SHARED: spec's readers)
from .config import ConfigError, TrainConfig, field_names

CONFIG_KEYS = field_names()
SPEC_KEYS_NOT_IN_BASE = ("out_dir", "seed")    # set by gridrun, never by a spec
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"  # a safe folder and file name
MAX_SPEC_BYTES = 1_000_000
DEFAULT_MAX_TRIALS = 5000


class SpecError(GridrunError):
    """A spec that cannot be launched; nothing was started."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Data(_Strict):
    val_size: int = Field(5000, ge=0, le=50000)
    subset: int | None = Field(None, ge=10)
    split_seed: int = Field(0, ge=0, lt=2**32)
    data_dir: str | None = None


class Resources(_Strict):
    cpu: float = Field(1, gt=0, le=1024)
    gpu: float = Field(0, ge=0, le=64)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpu must be 0, a fraction in (0, 1] such as 0.125, or a whole number; got {v}")
        return v


class EarlyStop(_Strict):
    grace_period: int = Field(3, ge=1)     # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(3, gt=1, le=100)


class Constraints(_Strict):
    max_params: int | None = Field(None, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    target_test_acc: float | None = Field(None, gt=0, le=1)


class ReportOpts(_Strict):
    top_k: int = Field(5, ge=1, le=10000)
    reference: str | None = None  # a CSV beside the spec: a study's numbers set beside the report's


class Spec(_Strict):
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    data: Data = Data()
    base: dict = {}
    grid: dict[str, list] | list[dict[str, list]] = {}  # one cross product, or a union of several
    seeds: int | list[int] = Field(1)
    resources: Resources = Resources()
    retries: int = Field(1, ge=0, le=100)
    early_stop: EarlyStop | None = None
    fuse: int | None = Field(None, ge=1, le=256)
    constraints: Constraints = Constraints()
    report: ReportOpts = ReportOpts()
    max_trials: int = Field(DEFAULT_MAX_TRIALS, ge=1, le=1_000_000)
    _raw: dict = PrivateAttr(default_factory=dict)

    @property
    def raw(self) -> dict:
        """The spec as written (overrides applied): what the experiment folder records."""
        return self._raw

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, bool):
            raise ValueError("seeds is a count such as 3 or a list of seeds such as [0, 1, 2]")
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"seeds must be at least 1 (a count) or a non-empty list; got {v}")
            return v
        if not v:
            raise ValueError("seeds is an empty list: give at least one seed")
        if any(s < 0 or s >= 2**31 for s in v):
            raise ValueError("seeds must be in [0, 2**31)")
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"seeds lists seed {dup[0]} twice: repeats of one seed are copies, not "
                             f"independent runs; list each seed once")
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def _pydantic_line(src: str, e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        model = Spec
        for p in err["loc"][:-1]:
            model = model.model_fields[p].annotation
            model = next((a for a in getattr(model, "__args__", (model,)) if isinstance(a, type)), model)
        return f"{src}: unknown key {loc!r}{did_you_mean(err['loc'][-1], list(getattr(model, 'model_fields', {})), 0.5)}{more}"
    msg = err["msg"].replace("Value error, ", "")
    return f"{src}: {loc or 'spec'}: {msg}{more}"


def parse(raw: dict, src: str = "spec") -> Spec:
    """Validate the spec's shape; config keys in base/grid are checked here too."""
    if not isinstance(raw, dict):
        raise SpecError(f"{src}: a spec is a YAML mapping with at least 'name'; got {type(raw).__name__}")
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_pydantic_line(src, e)) from None
    spec._raw = json.loads(json.dumps(raw, default=str))
    for key in spec.base:
        if key not in CONFIG_KEYS or key in SPEC_KEYS_NOT_IN_BASE:
            hint = " (seeds are set by 'seeds:')" if key == "seed" else did_you_mean(key, CONFIG_KEYS, 0.5)
            raise SpecError(f"{src}: unknown key 'base.{key}'{hint}")
    if isinstance(spec.grid, list) and not spec.grid:
        raise SpecError(f"{src}: grid is an empty list: give at least one sub-grid (a mapping of axes)")
    for axis, values in ((a, v) for sub in subgrids(spec) for a, v in sub.items()):
        if not values:
            raise SpecError(f"{src}: grid.{axis} is empty: give it at least one value")
        if axis in SPEC_KEYS_NOT_IN_BASE:
            raise SpecError(f"{src}: grid.{axis}: {axis} cannot be an axis (seeds are set by 'seeds:')")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(axis)):
            raise SpecError(f"{src}: grid axis {axis!r} is not a plain name (letters, digits, _)")
        if axis not in CONFIG_KEYS:
            for v in values:
                if not isinstance(v, dict):
                    raise SpecError(f"{src}: unknown key 'grid.{axis}'{did_you_mean(axis, CONFIG_KEYS, 0.5)}; an axis "
                                    f"with another name must list dicts of config fields")
                for key in v:
                    if key not in CONFIG_KEYS or key in SPEC_KEYS_NOT_IN_BASE:
                        raise SpecError(f"{src}: unknown key 'grid.{axis}[].{key}'{did_you_mean(key, CONFIG_KEYS, 0.5)}")
    if spec.fuse and spec.fuse > 1 and spec.early_stop:
        raise SpecError(f"{src}: early_stop and fuse cannot be combined: ASHA stops whole Tune trials, and a fused "
                        f"group is one Tune trial, so one member's score would stop all of them; drop one of the two")
    n = n_trials(spec)
    if n > spec.max_trials:
        raise SpecError(f"{src}: the grid expands into {n:,} trials, more than max_trials={spec.max_trials:,}: "
                        f"shrink the grid, or set max_trials: {n} in the spec if you mean it")
    return spec


def subgrids(spec: Spec) -> list[dict]:
    """The grid as a list of cross products (a plain grid is one)."""
    return spec.grid if isinstance(spec.grid, list) else [spec.grid]


def n_trials(spec: Spec) -> int:
    """The number of trials, counted without expanding the grid."""
    n_seeds = spec.seeds if isinstance(spec.seeds, int) else len(spec.seeds)
    return sum(math.prod(len(v) for v in sub.values()) for sub in subgrids(spec)) * n_seeds


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases: a few lines of aliases can stand for billions of
    values, and a small file must never cost minutes or gigabytes to validate."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise SpecError(f"YAML alias at line {mark.line + 1}: anchors and aliases (&, *) are not supported in "
                            f"specs: write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise SpecError(f"YAML key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}): "
                                f"the first would be silently ignored; keep one")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def safe_yaml(text: str, src: str):
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{src}: not valid YAML{where}: {problem}") from None


def read_raw(path: str | Path) -> dict:
    """A spec file's YAML, read safely, as a dict (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise SpecError(f"spec file {path} {what}: give the path of a YAML grid such as grids/smoke.yaml")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {path} is {path.stat().st_size:,} bytes: a spec is a small YAML file "
                        f"(at most {MAX_SPEC_BYTES:,} bytes)")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise SpecError(f"spec file {path} is not UTF-8 text ({type(e).__name__}): give a YAML grid spec") from None
    if "\x00" in text:
        raise SpecError(f"spec file {path} is not text (it holds NUL bytes): give a YAML grid spec")
    return safe_yaml(text, str(path))


def apply_overrides(raw: dict, overrides: list[str], src: str = "override") -> dict:
    """`key=value` pairs (dotted keys, YAML values) applied to a raw spec, e.g. seeds=10,
    base.epochs=5, grid.batch_size=[64,256], resources.gpu=0.25."""
    raw = json.loads(json.dumps(raw)) if raw is not None else {}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", key):
            raise SpecError(f"{src} {item!r} is not key=value with a dotted key: write e.g. base.epochs=5 "
                            f"or grid.batch_size=[64,256]")
        value = safe_yaml(text, f"{src} {key}") if text.strip() else None
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node, dict):
                raise SpecError(f"{src} {key}: {p!r} is not a section that holds keys")
            node = node.setdefault(p, {})
            if node is None:
                node = {}
        if not isinstance(node, dict):
            raise SpecError(f"{src} {key}: {'.'.join(parts[:-1])} is not a section that holds keys")
        node[parts[-1]] = value
    return raw


def load(path: str | Path, overrides: list[str] | None = None) -> Spec:
    raw = read_raw(path)
    if overrides:
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: a spec is a YAML mapping with at least 'name'; got {type(raw).__name__}")
        raw = apply_overrides(raw, overrides)
    return parse(raw, str(path))


def _short(v) -> str:
    if isinstance(v, dict):
        return "-".join(_short(x) for x in v.values())
    return re.sub(r"[^A-Za-z0-9._-]", "", str(v).replace("+", "-"))[:24] or "x"


def config_id(train: dict) -> str:
    """A trial's identity (identity.trial_id; kept under this name for its callers)."""
    return trial_id(train)


def expand(spec: Spec) -> list[dict]:
    """Every trial: {"name", "id", "axes", "train": TrainConfig dict}, validated, in a fixed order.
    Names are readable (axis values and seed) and do not depend on a trial's position, so a
    grown grid keeps every existing trial's name."""
    trials = []
    for axes, combo in ((list(sub.items()), combo) for sub in subgrids(spec)
                        for combo in (itertools.product(*sub.values()) if sub else [()])):
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
            where = ", ".join(f"{k}={_short(v)}" for k, v in label.items()) or "base"
            try:
                tc = TrainConfig.from_dict(cfg)
            except ConfigError as e:
                raise SpecError(f"trial {len(trials)} ({where}, seed {seed}): {e}") from None
            parts = [p for p in (_short(v) for v in label.values()) if p]
            if "model" not in label and not any(isinstance(v, dict) and "model" in v for v in label.values()):
                parts.insert(0, _short(tc.model))
            train = tc.to_dict()
            trials.append({"name": "_".join(parts + [f"s{seed}"]), "id": config_id(train), "axes": label,
                           "train": train, "where": where})
    _check_trials(spec, trials)
    return trials


def _check_trials(spec: Spec, trials: list[dict]) -> None:
    """No config twice (copies would be reported as independent seeds); unique, safe names;
    one data folder for the grid."""
    dirs = {t["train"]["data_dir"] for t in trials}
    if len(dirs) > 1:
        raise SpecError(f"trials name different data_dir values ({', '.join(map(str, sorted(map(str, dirs))))}): "
                        f"set it once under data:")
    seen: dict[str, dict] = {}
    for t in trials:
        if t["id"] in seen:
            first = seen[t["id"]]
            raise SpecError(f"the grid holds one config twice ({first['where']} and {t['where']}, seed "
                            f"{t['train']['seed']}): copies would be reported as independent runs; remove the repeat")
        seen[t["id"]] = t
    by_name: dict[str, list] = {}
    for t in trials:
        by_name.setdefault(t["name"], []).append(t)
    for name, same in by_name.items():
        if len(same) > 1:  # different configs whose labels read alike: add the config's hash
            for t in same:
                t["name"] = f"{name}_{t['id'][:6]}"
    for t in trials:  # names are built from [A-Za-z0-9._-] only; keep them short and not hidden
        t.pop("where")
        if len(t["name"]) > 120:
            t["name"] = f"{t['name'][:100]}_{t['id'][:6]}"
        if not t["name"][0].isalnum():
            t["name"] = "t" + t["name"]


def check_budget(spec: Spec, trials: list[dict]) -> dict[str, int]:
    """Parameters of each distinct model config (meta device); over max_params is an error."""
    from .models import count_params, resolve_model_args

    counts = {}
    for t in trials:
        c = t["train"]
        kw = resolve_model_args(c["model"], c["dropout"], c["model_args"])
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


def load_trials(path: str | Path, overrides: list[str] | None = None) -> tuple[Spec, list[dict]]:
    """Load, validate, expand and budget-check a spec file (with command-line overrides)."""
    spec = load(path, overrides)
    trials = expand(spec)
    check_budget(spec, trials)
    return spec, trials


# What the members of a fused group must share: one batched model (architecture and its
# arguments other than the dropout rate), one batch shape and length of training, one optimizer
# kind, one data split and preprocessing, one device set-up. Everything else may differ.
def plan_units(spec: Spec, trials: list[dict]) -> list[dict]:
    """Tune trials to run: one per trial, or with `fuse: K` groups of up to K trials that share
    FUSE_SHARED, in grid order. A group's name is a hash of its members' identities, so an
    interrupted group is found again by the next launch."""
    k = spec.fuse or 1
    if k <= 1:
        return [{"name": t["name"], "fused": False, "members": [t]} for t in trials]
    by_key: dict[str, list[dict]] = {}
    for t in trials:
        by_key.setdefault(fuse_key(t["train"]), []).append(t)
    units = []
    for members in by_key.values():
        for i in range(0, len(members), k):
            chunk = members[i:i + k]
            if len(chunk) == 1:
                units.append({"name": chunk[0]["name"], "fused": False, "members": chunk})
                continue
            h = hashlib.sha256("".join(m["id"] for m in chunk).encode()).hexdigest()[:8]
            units.append({"name": f"fused_{_short(chunk[0]['train']['model'])}_{len(chunk)}x_{h}", "fused": True,
                          "members": chunk})
    return units
