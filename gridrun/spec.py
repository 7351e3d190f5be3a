"""YAML grid spec -> validated trial configs. The only module that knows the YAML shape.

    name: smoke                       # experiment name: runs/<name>/, reports/<name>.md
    data: {dataset: mnist, val_size: 5000, subset: null, split_seed: 0, data_dir: null}
    modules: [mynets]                 # optional: your modules; their @register_model nets become names
    base: {epochs: 20, batch_size: 64}   # TrainConfig fields every trial shares
    grid:                             # axes; trials are their cross product
      model: [vanilla, dropout]       #   an axis named after a TrainConfig field takes values
      scheduler: [none, step]
      variant:                        #   any other name: each value is a dict of fields
        - {model: resnet20, batch_size: 128}
      lr: {loguniform: [0.001, 1]}    #   a distribution: `samples` configs are drawn from it
    samples: 20                       # configs drawn per list-axis combination (sample_seed: 0)
    seeds: 3                          # n -> seeds 0..n-1, or a list
    resources: {cpu: 1, gpu: 0.125}   # per trial; gpu a fraction in (0, 1] or a whole number
    retries: 2                        # a trial that raises is retried from its checkpoint
    early_stop: {grace_period: 5, reduction_factor: 3}   # optional ASHA on val_acc (in fused groups: rungs)
    prune: {rungs: [3, 6], keep: 0.5}  # optional successive halving at these epochs (instead of early_stop)
    fuse: 8                           # optional: train up to 8 same-architecture trials as one
    constraints: {max_params: 20000, max_epochs: 20, target_test_acc: 0.994}
    report: {top_k: 5, reference: tiny_nets_study.csv}
    max_trials: 5000                  # a larger grid is refused unless this says so
    search: {sampler: tpe, trials: 48, seed: 0, confirm: {top: 3, seeds: 5}}
                                      # optional: a study (study.py) instead of the grid's cross product

Validation happens here, before anything is written or started: the spec's shape (pydantic,
unknown keys name the nearest valid one), every expanded trial's TrainConfig, duplicate
configs, the size of the grid and the parameter budget.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import GridrunError, did_you_mean
from .identity import trial_id
from .config import DEFAULTS, FIELD_TYPES, WANTS, ConfigError, TrainConfig, field_names  # WANTS: pydantic's errors in words
from .yamlsafe import MAX_SPEC_BYTES, SpecError, safe_yaml  # noqa: F401  (SpecError: spec's callers)

CONFIG_KEYS = field_names()
SPEC_KEYS_NOT_IN_BASE = ("out_dir", "seed")    # set by gridrun, never by a spec
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"  # a safe folder and file name
DEFAULT_MAX_TRIALS = 5000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Data(_Strict):
    dataset: str = "mnist"    # a grid may vary it: grid: {dataset: [mnist, fashion_mnist]}
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
    grace_period: int = Field(3, ge=1, le=10000)     # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(3, gt=1, le=100)


class Prune(_Strict):
    rungs: list[int] = Field(min_length=1)  # epochs after which only the best `keep` of a group go on
    keep: float = Field(0.5, gt=0, lt=1)


class Constraints(_Strict):
    max_params: int | None = Field(None, ge=1, le=10**12)
    max_epochs: int | None = Field(None, ge=1, le=10000)
    target_test_acc: float | None = Field(None, gt=0, le=1)


class ReportOpts(_Strict):
    top_k: int = Field(5, ge=1, le=10000)
    reference: str | None = None  # a CSV beside the spec: a study's numbers set beside the report's


class Confirm(_Strict):
    top: int = Field(3, ge=1, le=100)       # the best configs by validation rerun after the search
    seeds: int = Field(5, ge=1, le=100)     # fresh seeds each (none of the search's)


class Search(_Strict):
    """A study: the grid's axes are a search space, asked `fuse` configs at a time (study.py)."""
    sampler: Literal["tpe", "random"] = "tpe"   # Optuna's TPESampler (constant liar) or RandomSampler
    trials: int = Field(ge=1, le=100_000)      # the budget: configs the search trains (pruned ones count)
    seed: int = Field(0, ge=0, lt=2**32)       # the sampler's: same seed and folder, same suggestions
    confirm: Confirm | None = None


class Spec(_Strict):
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    data: Data = Data()
    modules: list[str] = []   # the user's modules whose registered nets the spec names
    base: dict = {}
    grid: Any = {}      # {axis: [values] | {distribution: args}}, or a list of such mappings (parse checks it)
    samples: int | None = Field(None, ge=1, le=1_000_000)  # configs drawn from the distribution axes
    sample_seed: int = Field(0, ge=0, lt=2**63)            # fixes the draws: same spec, same trials
    seeds: int | list[int] = Field(1)
    resources: Resources = Resources()
    retries: int = Field(1, ge=0, le=100)
    early_stop: EarlyStop | None = None
    prune: Prune | None = None
    fuse: int | None = Field(None, ge=1, le=256)
    constraints: Constraints = Constraints()
    report: ReportOpts = ReportOpts()
    max_trials: int = Field(DEFAULT_MAX_TRIALS, ge=1, le=1_000_000)
    search: Search | None = None
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


def _is_tag(part) -> bool:
    """A union member's tag in a pydantic location (e.g. 'list[int]'), not a key of the spec."""
    return isinstance(part, str) and ("[" in part or part in ("int", "float", "str", "bool", "list", "dict", "none")
                                      or part.startswith("function-"))


def _where(loc) -> str:
    out = ""
    for p in (p for p in loc if not _is_tag(p)):
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if out else str(p)
    return out or "spec"


def _got(v) -> str:
    text = repr(v)
    return f"; got {text if len(text) <= 60 else text[:57] + '...'}"


def _pydantic_line(src: str, e: ValidationError) -> str:
    """pydantic's first error as one line in words: the key, what it must be, what it got."""
    errs = e.errors()
    err = max(errs, key=lambda x: len(_where(x["loc"])))  # a union's deepest miss: seeds[0], not seeds
    where = _where(err["loc"])
    same = [x for x in errs if _where(x["loc"]) == where]  # a union: one error per member type
    n_more = len({w for w in map(_where, (x["loc"] for x in errs)) if not where.startswith(w)})
    more = f" (and {n_more} more)" if n_more > 0 else ""
    if err["type"] == "extra_forbidden":
        model = Spec
        for p in [p for p in err["loc"] if not _is_tag(p)][:-1]:
            model = model.model_fields[p].annotation
            model = next((a for a in getattr(model, "__args__", (model,)) if isinstance(a, type)), model)
        return f"{src}: unknown key {where!r}{did_you_mean(err['loc'][-1], list(getattr(model, 'model_fields', {})), 0.5)}{more}"
    if all(x["type"] in WANTS for x in same):
        wants = list(dict.fromkeys(WANTS[x["type"]] for x in same))
        return f"{src}: {where}: must be {' or '.join(wants)}{_got(err.get('input'))}{more}"
    if err["type"] == "string_pattern_mismatch" and err["ctx"].get("pattern") == NAME_RE:
        return (f"{src}: {where}: must be a safe folder name (letters, digits, '.', '_' and '-', starting with a letter "
                f"or digit){_got(err.get('input'))}{more}")
    msg = err["msg"].replace("Value error, ", "").replace("Input should be ", "must be ")
    return f"{src}: {where}: {msg}{more}"


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
    _check_grid(spec, src)
    _check_prune(spec, src)
    n = n_trials(spec)
    if n > spec.max_trials:
        raise SpecError(f"{src}: the grid expands into {n:,} trials, more than max_trials={spec.max_trials:,}: "
                        f"shrink the grid, or set max_trials: {n} in the spec if you mean it")
    return spec


def _check_prune(spec: Spec, src: str) -> None:
    """`prune` is the only source of a grid's rungs: not with early_stop, nor beside rungs in base."""
    if spec.prune and spec.early_stop:
        raise SpecError(f"{src}: prune and early_stop both stop weak trials early: keep one (early_stop with fuse "
                        f"becomes rungs in each fused group)")
    if spec.prune and {"rungs", "rung_keep"} & set(spec.base):
        raise SpecError(f"{src}: prune sets rungs and rung_keep: drop them from base")


def asha_milestones(grace: int, rf: float, epochs: int) -> list[int]:
    """The epochs at which Ray's ASHAScheduler(grace_period=grace, reduction_factor=rf, max_t=epochs)
    cuts (its bracket's grace * rf**k, applied at the first epoch at or after each), below the last."""
    n = int(math.log(epochs / grace) / math.log(rf) + 1) if epochs > grace else 0
    return sorted({m for m in (math.ceil(grace * rf ** k - 1e-9) for k in range(n)) if m < epochs})


def rung_fields(spec: Spec, epochs: int) -> dict:
    """The TrainConfig rungs of a trial of `epochs`: prune's, or early_stop's with fuse (ASHA's
    milestones and keep 1 / reduction_factor, applied inside each fused group)."""
    if spec.prune:
        return {"rungs": list(spec.prune.rungs), "rung_keep": spec.prune.keep}
    if spec.early_stop and (spec.fuse or 1) > 1:
        es = spec.early_stop
        rungs = asha_milestones(es.grace_period, es.reduction_factor, epochs)
        return {"rungs": rungs, "rung_keep": 1 / es.reduction_factor} if rungs else {}
    return {}


def asha(spec: Spec) -> tuple[int, float] | None:
    """(grace_period, reduction_factor) of the ASHA that stops unfused trials early, or None."""
    if spec.early_stop:
        return spec.early_stop.grace_period, spec.early_stop.reduction_factor
    if spec.prune:
        return spec.prune.rungs[0], 1 / spec.prune.keep
    return None


def subgrids(spec: Spec) -> list[dict]:
    """The grid as a list of cross products (a plain grid is one)."""
    return spec.grid if isinstance(spec.grid, list) else [spec.grid]


def n_trials(spec: Spec) -> int:
    """The number of trials, counted without expanding the grid (or drawing a sample)."""
    n_seeds = spec.seeds if isinstance(spec.seeds, int) else len(spec.seeds)
    if spec.search is not None:  # the budget, and the confirmation's reruns
        return spec.search.trials + (spec.search.confirm.top * spec.search.confirm.seeds if spec.search.confirm else 0)
    return sum(math.prod(len(v) if isinstance(v, list) else 1 for v in sub.values())
               * ((spec.samples or 1) if any(isinstance(v, dict) for v in sub.values()) else 1)
               for sub in subgrids(spec)) * n_seeds


def _check_grid(spec: Spec, src: str) -> None:
    """The grid's shape: axes with plain names, each a non-empty list of values or one
    distribution; distributions and `samples` come together."""
    shape = "a mapping of axes such as {lr: [0.1, 0.3]}"
    if isinstance(spec.grid, list):
        if not spec.grid:
            raise SpecError(f"{src}: grid is an empty list: give at least one sub-grid (a mapping of axes)")
        for i, sub in enumerate(spec.grid):
            if not isinstance(sub, dict):
                raise SpecError(f"{src}: grid[{i}]: must be {shape}{_got(sub)}")
    elif not isinstance(spec.grid, dict):
        raise SpecError(f"{src}: grid: must be {shape}, or a list of such mappings{_got(spec.grid)}")
    for axis, values in ((a, v) for sub in subgrids(spec) for a, v in sub.items()):
        if axis in SPEC_KEYS_NOT_IN_BASE:
            raise SpecError(f"{src}: grid.{axis}: {axis} cannot be an axis (seeds are set by 'seeds:')")
        if not isinstance(axis, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", axis):
            raise SpecError(f"{src}: grid axis {axis!r} is not a plain name (letters, digits, _)")
        if isinstance(values, dict):
            _check_distribution(axis, values, src)
            continue
        if not isinstance(values, list):
            raise SpecError(f"{src}: grid.{axis}: must be a list of values such as [0.1, 0.3], or a distribution "
                            f"such as {{loguniform: [0.001, 1]}}{_got(values)}")
        if not values:
            raise SpecError(f"{src}: grid.{axis} is empty: give it at least one value")
        _check_linked_axis(axis, values, src)
    dist = next((a for sub in subgrids(spec) for a, v in sub.items() if isinstance(v, dict)), None)
    if spec.search is not None:
        return _check_search(spec, src)
    if dist and not spec.samples:
        raise SpecError(f"{src}: grid.{dist} is a distribution: say how many configs to draw with samples: N "
                        f"(e.g. samples: 20)")
    if spec.samples and not dist:
        raise SpecError(f"{src}: samples: {spec.samples} draws configs from distribution axes, but the grid has none "
                        f"(such as lr: {{loguniform: [0.001, 1]}}): drop samples, or make an axis a distribution")
    if spec.sample_seed and not spec.samples:
        raise SpecError(f"{src}: sample_seed is set but nothing is sampled: drop it, or add samples and a distribution")


def _check_search(spec: Spec, src: str) -> None:
    """A study samples the grid's axes itself: one mapping of axes, one seed per suggestion, no
    `samples` (the budget is search.trials), no early_stop (`prune` prunes its search)."""
    if isinstance(spec.grid, list):
        raise SpecError(f"{src}: search needs grid to be one mapping of axes (its search space), not a list of "
                        f"sub-grids: merge them, e.g. with a choice over linked values")
    if spec.samples or spec.sample_seed:
        raise SpecError(f"{src}: samples/sample_seed draw a random grid; with search the budget is search.trials "
                        f"and the seed search.seed: drop samples")
    if len(spec.seed_list) != 1:
        raise SpecError(f"{src}: with search each suggestion trains once (seeds: 1 or [s]); repeats with fresh "
                        f"seeds are search.confirm: {{top: 3, seeds: 5}}")
    if spec.early_stop:
        raise SpecError(f"{src}: early_stop and search cannot be combined: a study prunes with prune: {{rungs: "
                        f"[5, 10], keep: 0.5}} (inside its fused groups; never its confirmation runs)")
    if spec.data.val_size == 0 or spec.base.get("val_size") == 0:
        raise SpecError(f"{src}: search chooses on validation accuracy, so it needs val_size > 0 (data.val_size)")


def _check_linked_axis(axis: str, values: list, src: str) -> None:
    """An axis not named after a config field lists dicts of config fields set together."""
    if axis in CONFIG_KEYS:
        return
    for v in values:
        if not isinstance(v, dict):
            raise SpecError(f"{src}: unknown key 'grid.{axis}'{did_you_mean(axis, CONFIG_KEYS, 0.5)}; an axis "
                            f"with another name must list dicts of config fields")
        for key in v:
            if key not in CONFIG_KEYS or key in SPEC_KEYS_NOT_IN_BASE:
                raise SpecError(f"{src}: unknown key 'grid.{axis}[].{key}'{did_you_mean(key, CONFIG_KEYS, 0.5)}")


# ---------------------------------------------------------------- search beyond the grid
# An axis may be a distribution instead of a list. `samples: N` configs are drawn from the
# distribution axes once, when the spec is expanded, from `sample_seed`: the trials are known
# before launch, fuse into groups, and grow and resume like grid trials. Draw i of an axis
# depends only on (sample_seed, i, axis), so N + M samples start with the same N.

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
SAMPLE_DIGITS = 4   # significant digits a drawn real keeps: names and tables read well


def _check_distribution(axis: str, d: dict, src: str) -> None:
    """One distribution: a known kind, bounds it can use, a field whose type it produces."""
    where = f"{src}: grid.{axis}"
    if len(d) != 1:
        raise SpecError(f"{where}: a distribution is one key such as {{loguniform: [0.001, 1]}}; got keys "
                        f"{', '.join(map(str, d))}")
    (kind, args), = d.items()
    if kind not in DISTRIBUTIONS:
        raise SpecError(f"{where}: unknown distribution {kind!r}{did_you_mean(kind, DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpecError(f"{where}: choice takes a non-empty list of values such as {{choice: [32, 64]}}{_got(args)}")
        _check_linked_axis(axis, args, src)
        return
    if axis not in CONFIG_KEYS:
        near = did_you_mean(axis, CONFIG_KEYS, 0.5)
        raise SpecError(f"{where}: {kind} draws numbers for a config field, and {axis!r} is not one"
                        f"{near if 'did you mean' in near else ''}")
    ft = FIELD_TYPES[axis]
    if ft.kind not in (("float",) if kind != "randint" else ("int", "float")):
        use = "{randint: [low, high]} or {choice: [...]}" if ft.kind == "int" else "{choice: [...]}"
        takes = {"int": "whole numbers", "str": "text", "bool": "true or false", "dict": "a mapping"}[ft.kind]
        raise SpecError(f"{where}: {kind} draws {'whole' if kind == 'randint' else 'real'} numbers, but {axis} "
                        f"takes {takes}: use {use}")
    if not (isinstance(args, list) and len(args) == 2 and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)):
        raise SpecError(f"{where}: {kind} takes [low, high], two numbers such as [0.001, 1]{_got(args)}")
    lo, hi = args
    if kind == "randint" and not all(float(a).is_integer() for a in args):
        raise SpecError(f"{where}: randint takes whole-number bounds [low, high] (both included); got [{lo}, {hi}]")
    if not lo < hi:
        raise SpecError(f"{where}: {kind} needs low < high in [low, high]; got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise SpecError(f"{where}: loguniform needs 0 < low (it draws the logarithm uniformly); got [{lo}, {hi}]")


def _draw(kind: str, args: list, u: float):
    """The value of a distribution at u in [0, 1): uniform and loguniform on [low, high), randint
    on [low, high] (both included), choice one of the values."""
    if kind == "choice":
        return args[min(int(u * len(args)), len(args) - 1)]
    lo, hi = args
    if kind == "randint":
        return int(lo) + min(int(u * (int(hi) - int(lo) + 1)), int(hi) - int(lo))
    x = lo + u * (hi - lo) if kind == "uniform" else math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    r = float(f"{x:.{SAMPLE_DIGITS}g}")
    return r if lo <= r < hi else x  # rounding must not step outside the bounds (dropout < 1)


def _space(dists: dict[str, tuple]) -> float:
    """How many distinct draws the distributions hold (infinite when one is real-valued)."""
    n = 1.0
    for kind, args in dists.values():
        if kind == "choice":
            n *= len({json.dumps(a, sort_keys=True) for a in args})
        elif kind == "randint":
            n *= int(args[1]) - int(args[0]) + 1
        else:
            return math.inf
    return n


def sample_configs(dists: dict[str, tuple], n: int, seed: int) -> list[dict]:
    """The first n distinct draws of the distribution axes ({axis: (kind, args)}): draw i of an
    axis comes from (seed, i, axis) alone, and a repeat is skipped, so more samples only add."""
    if _space(dists) < n:
        raise SpecError(f"samples: {n} but the distributions of {', '.join(dists)} hold only "
                        f"{_space(dists):.0f} distinct configs: lower samples, or widen the ranges")
    out, seen, i = [], set(), 0
    while len(out) < n:
        # random.Random(str) seeds from the text's SHA-512: the same draws on every machine and Python.
        point = {a: _draw(k, args, random.Random(f"{seed}:{i}:{a}").random()) for a, (k, args) in dists.items()}
        key = json.dumps(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(point)
        i += 1
        if i > 100 * n + 1000:
            raise SpecError(f"samples: {i} draws gave only {len(out)} distinct configs of the {n} samples asked: "
                            f"lower samples, or widen the ranges of {', '.join(dists)}")
    return out


def points(spec: Spec) -> list[dict]:
    """Every point of the grid as {axis: value}, in spec order: list axes crossed, and for each
    combination the `samples` draws of the distribution axes."""
    out = []
    for sub in subgrids(spec):
        lists = {a: v for a, v in sub.items() if isinstance(v, list)}
        dists = {a: next(iter(v.items())) for a, v in sub.items() if isinstance(v, dict)}
        draws = sample_configs(dists, spec.samples, spec.sample_seed) if dists else [{}]
        for combo in itertools.product(*lists.values()):
            for draw in draws:
                point = {**dict(zip(lists, combo)), **draw}
                out.append({a: point[a] for a in sub})
    return out


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
    import sys

    raw = read_raw(path)
    if str(Path(path).resolve().parent) not in sys.path:  # a spec's own modules (mynets.py) sit beside it
        sys.path.append(str(Path(path).resolve().parent))
    if overrides:
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: a spec is a YAML mapping with at least 'name'; got {type(raw).__name__}")
        raw = apply_overrides(raw, overrides)
    spec = parse(raw, str(path))
    _check_shadowed(spec, overrides or [])
    return spec


def _check_shadowed(spec: Spec, overrides: list[str]) -> None:
    """A `base.X=...` override that a grid axis setting X would silently undo is refused."""
    for item in overrides:
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if len(parts) != 2 or parts[0] != "base":
            continue
        field = parts[1]
        for sub in subgrids(spec):
            for axis, values in sub.items():
                options = values if isinstance(values, list) else values.get("choice", [])
                if axis == field:
                    raise SpecError(f"override base.{field}={text} is shadowed by the grid axis grid.{axis}, which sets "
                                    f"{field} in every trial: override the axis instead, e.g. grid.{field}=[{text}]")
                if any(isinstance(v, dict) and field in v for v in options):
                    raise SpecError(f"override base.{field}={text} is shadowed by the grid axis grid.{axis}, whose "
                                    f"values set {field}: change {field} in grid.{axis} in the spec instead")


def name_part(v) -> str:
    """An axis value as a part of a trial's folder name."""
    if isinstance(v, dict):
        return "-".join(name_part(x) for x in v.values())
    return re.sub(r"[^A-Za-z0-9._-]", "", str(v).replace("+", "-"))[:24] or "x"


def _point(axes: dict) -> str:
    """A grid point in words for a message: 'model=vgg, lr=0.1', or 'base'."""
    return ", ".join(f"{k}={name_part(v)}" for k, v in axes.items()) or "base"


def expand(spec: Spec) -> list[dict]:
    """Every trial: {"name", "id", "axes", "train": TrainConfig dict}, validated, in a fixed order.
    Names are readable (axis values and seed) and do not depend on a trial's position, so a
    grown grid keeps every existing trial's name."""
    trials = []
    users = user_models(spec)
    for label in points(spec):
        for seed in spec.seed_list:
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
                tc = TrainConfig.from_dict(cfg)
            except ConfigError as e:
                raise SpecError(f"trial {len(trials)} ({_point(label)}, seed {seed}): {e}") from None
            # a dataset named by its path reads as its file or folder name
            parts = [p for p in (name_part(Path(v).name if a == "dataset" and isinstance(v, str) else v)
                                 for a, v in label.items()) if p]
            if "model" not in label and not any(isinstance(v, dict) and "model" in v for v in label.values()):
                parts.insert(0, name_part(tc.model))
            train = tc.to_dict()
            trials.append({"name": "_".join(parts + [f"s{seed}"]), "id": trial_id(train), "axes": dict(label),
                           "train": train})
    _check_trials(spec, trials)
    _check_unfused_rungs(spec, trials)
    check_models(trials)
    return trials


def user_models(spec: Spec) -> dict[str, str]:
    """The nets the spec's modules register, name -> import path (module:name): a config names
    its module, so a worker, `gridrun train --config` and a restore know what to import."""
    from .models._registry import module_models

    try:
        return {n: f"{mod}:{n}" for mod in spec.modules for n in module_models(mod)}
    except GridrunError as e:
        raise SpecError(str(e)) from None


def _check_unfused_rungs(spec: Spec, trials: list[dict]) -> None:
    """Unfused trials are pruned by Ray's ASHA (each is its own Tune trial, with no group to cut):
    `prune`'s rungs must then be ASHA's milestones, or the fused and unfused rules would differ."""
    if not spec.prune or (spec.fuse or 1) > 1 or not trials:
        return
    grace, rf = asha(spec)
    want = asha_milestones(grace, rf, max(t["train"]["epochs"] for t in trials))
    if list(spec.prune.rungs) != want:
        raise SpecError(f"prune.rungs {list(spec.prune.rungs)}: unfused trials are pruned by Ray's ASHA, which cuts at "
                        f"{want} (the first rung times (1/keep)^k): use rungs {want}, or fuse: K to cut inside groups "
                        f"at any epochs")


# A trial whose estimated peak memory is over this is refused at spec time: every registered model
# at its defaults needs at most ~3 GiB (inception_v4_light at batch 128), and the probe's
# `arch: "C10:100 O G"` (a 226x226 map at eval batch 4096) grew to 24 GB until the kernel killed it.
MAX_TRIAL_GIB = 16


def data_shape(c: dict) -> tuple:
    """(channels, height, width, classes) of a trial's dataset (headers and labels read, cached)."""
    from .datasets import describe

    try:
        return tuple(describe(c["dataset"], c["data_dir"]))
    except GridrunError as e:
        raise SpecError(str(e)) from None


def check_models(trials: list[dict]) -> None:
    """Each distinct model and its arguments built once on the `meta` device and run on a 28x28
    batch (no memory used): bad arguments, shapes that do not fit MNIST and activations that would
    not fit in MAX_TRIAL_GIB at the trial's batch sizes are one line naming the trial."""
    from .models import profile, resolve_model_args

    seen: dict[str, dict | GridrunError] = {}
    for t in trials:
        c = t["train"]
        try:
            kw = resolve_model_args(c["model"], c["dropout"], c["model_args"])
            data = data_shape(c)
            key = json.dumps([c["model"], kw, data], sort_keys=True, default=repr)
            if key not in seen:
                try:
                    seen[key] = profile(c["model"], data, **kw)
                except GridrunError as e:
                    seen[key] = e
            if isinstance(seen[key], GridrunError):
                raise seen[key]
        except GridrunError as e:
            raise SpecError(f"trial {t['name']}: {e}") from None
        _check_memory(t, seen[key])


def _check_memory(t: dict, prof: dict) -> None:
    """Training keeps every layer's output and its gradient for the batch; inference holds up to
    three layers' outputs (input, conv, BatchNorm) of the eval batch at once. float32 throughout."""
    c = t["train"]
    train = c["batch_size"] * prof["act_per_sample"] * 4 * 2
    infer = c["eval_batch_size"] * prof["max_act_per_sample"] * 4 * 3
    need = max(train, infer)
    if need > MAX_TRIAL_GIB * 2**30:
        what = (f"batch_size={c['batch_size']} x {prof['act_per_sample'] * 4 / 2**20:.1f} MiB of activations per "
                f"image" if train >= infer else f"eval_batch_size={c['eval_batch_size']} x "
                f"{prof['max_act_per_sample'] * 4 / 2**20:.1f} MiB for its largest layer per image")
        args = f" with model_args {json.dumps(c['model_args'], sort_keys=True)}" if c["model_args"] else ""
        raise SpecError(f"trial {t['name']}: model {c['model']}{args} would need about {need / 2**30:.0f} GiB "
                        f"({what}), over the {MAX_TRIAL_GIB} GiB a trial may use: shrink its feature maps or "
                        f"channels, or lower {'batch_size' if train >= infer else 'eval_batch_size'}")


def _check_trials(spec: Spec, trials: list[dict]) -> None:
    """No config twice (copies would be reported as independent seeds); unique, safe names.
    Datasets may differ (each trial is scored against its own dataset's test set), but MNIST is
    one dataset wherever it lies: its trials name one data folder (data_dir is plumbing)."""
    dirs = {t["train"]["data_dir"] for t in trials if t["train"]["dataset"] == "mnist"}
    if len(dirs) > 1:
        raise SpecError(f"trials name different data_dir values ({', '.join(sorted(map(str, dirs)))}): "
                        f"set it once under data: (MNIST's test set is one; another image set is a dataset: PATH)")
    seen: dict[str, dict] = {}
    for t in trials:
        if t["id"] in seen:
            first = seen[t["id"]]
            raise SpecError(f"the grid holds one config twice ({_point(first['axes'])} and {_point(t['axes'])}, seed "
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
        data = data_shape(c)
        key = json.dumps([c["model"], kw, data], sort_keys=True)
        if key not in counts:
            counts[key] = count_params(c["model"], data, **kw)
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
    if spec.search is not None:  # a study's trials are asked, not expanded (study.py)
        return spec, []
    trials = expand(spec)
    check_budget(spec, trials)
    return spec, trials
