"""The spec's YAML shape: pydantic models of every section, one-line errors, the checks of the
grid's axes and distributions, overrides, and reading a spec file safely. The only place that
knows the YAML shape (the package docstring shows it)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ..errors import did_you_mean
from ..config import FIELD_TYPES, WANTS, field_names  # WANTS: pydantic's errors in words
from ..yamlsafe import MAX_SPEC_BYTES, SpecError, safe_yaml

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


# The distributions an axis may be instead of a list (sampling.py draws them).
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")


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
