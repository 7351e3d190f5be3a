"""TrainConfig: every knob of one trial, typed, commented, validated before any work.

One pydantic model, as the spec's: types are strict (an int passes for a float, "64" never for
an int), bounds and named choices are declared on the fields, rules between fields are model
validators, and every refusal is one line (`config NAME=VALUE: why`). Each field also carries
its help text, its section of `gridrun train -h` and its role: "config" fields define a
configuration (trials that agree on all of them are seeds of one config), "seed" is what
repeats, "plumbing" says where and how a trial runs without changing what it computes; and
`fuse_shared` marks what the members of one fused group must share (identity.FUSE_SHARED).
"""
from __future__ import annotations

import functools
import json
import re
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, field_validator, model_validator

from .errors import GridrunError, did_you_mean

DEVICES = "auto, cpu, cuda or cuda:N"
DEVICE_RE = re.compile(r"auto|cpu|cuda|cuda:[0-9]+")


class ConfigError(GridrunError):
    """A bad trial config: unknown key or out-of-range value."""


def _section(name: str):
    """The field maker of one section of `gridrun train -h` (model, data, ...)."""
    def field(default, doc: str = "", role: str = "config", fuse_shared: bool = False, why: str = "", **bounds):
        """A field: its default, its help line, its role, whether fused members share it, its bounds
        and why they are what they are (said when a value is refused)."""
        extra = {"section": name, "role": role, "fuse_shared": fuse_shared, **({"why": why} if why else {})}
        if isinstance(default, dict):
            return Field(default_factory=dict, description=doc, json_schema_extra=extra, **bounds)
        return Field(default, description=doc, json_schema_extra=extra, **bounds)
    return field


_model, _data, _optim, _run = map(_section, ("model", "data", "optimisation", "execution"))


class TrainConfig(BaseModel):
    """One trial's config (`gridrun train -h` lists every field with its help)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True,
                              defer_build=True)  # built at the first config: status and report only read the fields

    # The defaults are the best recipe measured on the tiny nets (issues 7, 13 and 17): SGD with
    # Nesterov momentum, one-cycle to lr 0.2 at batch 128, weight decay 5e-4, rotate+affine, 15
    # epochs. `gridrun train --model NAME` with no other option trains with it.
    model: str = _model("tinynet_7k", "a registered name (`gridrun models`)", fuse_shared=True)
    dropout: float | None = _model(None, "the model's dropout rate; None keeps its default", ge=0, lt=1)
    model_args: dict = _model({}, "other keyword arguments of the model's factory", fuse_shared=True)

    dataset: str = _data("mnist", "mnist | fashion_mnist | kmnist | a folder of four IDX files | an .npz of x_train, "
                                  "y_train, x_test, y_test (gridrun/datasets.py)", fuse_shared=True)
    data_dir: str | None = _data(None, "folder of the MNIST files; None: $GRIDRUN_DATA, cache", "plumbing",
                                 fuse_shared=True)
    val_size: int = _data(5000, "validation images held out of the 60,000 (stratified)", fuse_shared=True,
                          why="at least 10,000 images must stay for training", ge=0, le=50000)
    subset: int | None = _data(None, "train on this many images only (stratified), >= 10", fuse_shared=True,
                               why="one image per class", ge=10)
    split_seed: int = _data(0, "fixes the train/validation split, independent of `seed`", fuse_shared=True,
                            why="numpy's seeds are 32-bit", ge=0, lt=2**32)
    augment: str = _data("rotate+affine", "policy: '+'-joined ops or a named recipe (augment.POLICIES)")
    aug: dict = _data({}, "strengths, see augment.AugParams (override the policy's)")
    clean_epochs: int = _data(0, "the last N epochs train on un-augmented images (0: augment every epoch)",
                              why="the last epochs that skip augmentation", ge=0)
    normalize: Literal["dataset", "mnist", "per_image"] = _data(
        "dataset", "dataset: train-split mean/std | mnist: 0.1307/0.3081 | per_image: subtract each image's mean "
                   "(khanrc/mnist)", fuse_shared=True)

    epochs: int = _optim(15, fuse_shared=True, ge=1, le=10000)
    batch_size: int = _optim(128, fuse_shared=True, why="BatchNorm cannot train on one image", ge=2, le=1_000_000)
    optimizer: Literal["adam", "adamw", "sgd"] = _optim("sgd", fuse_shared=True)
    lr: float = _optim(0.2, "peak learning rate (onecycle's max_lr)", gt=0)
    momentum: float = _optim(0.9, "sgd only", ge=0, lt=1)
    nesterov: bool = _optim(True, "sgd only")
    weight_decay: float = _optim(5e-4, ge=0)
    scheduler: Literal["none", "step", "plateau", "onecycle", "cosine"] = _optim("onecycle")
    step_size: int = _optim(5, "step: epochs between decays", ge=1, le=10000)
    gamma: float = _optim(0.1, "step and plateau: lr multiplier at each decay", gt=0, le=1)
    patience: int = _optim(2, "plateau: epochs without improvement before a decay", ge=0, le=10000)
    plateau_metric: Literal["val_loss", "val_acc"] = _optim("val_loss", "plateau: val_loss (min) | val_acc (max)")
    pct_start: float = _optim(0.25, "onecycle: fraction of steps spent warming up", gt=0, lt=1)
    label_smoothing: float = _optim(0.0, ge=0, lt=1)
    grad_clip: float | None = _optim(None, "clip each member's gradient norm to this (its own norm, as "
                                           "clip_grad_norm_ alone); None: off", gt=0)
    ema: float = _optim(0.0, "decay of an exponential moving average of the weights per step (e.g. 0.999); 0 = "
                             "off. Scores use the average.", fuse_shared=True,
                        why="a decay per step such as 0.999, or 0 for off", ge=0, lt=1)
    precise_bn: bool = _optim(False, "after the last epoch, BatchNorm's statistics of the scored model become the "
                                     "exact average over the un-augmented training images (precise BN, Wu & Johnson "
                                     "2021)", fuse_shared=True)
    rungs: tuple[StrictInt, ...] = _optim(
        (), "successive halving in a fused group: after each of these epochs only the best rung_keep of the "
            "members still training go on (by validation accuracy); empty: off", fuse_shared=True, strict=False)
    rung_keep: float = _optim(0.5, "the fraction of a group's members kept at each rung (at least one)",
                              fuse_shared=True, why="a fraction of the members such as 0.5", gt=0, lt=1)
    seed: int = _optim(0, "initialisation, batch order, augmentation, dropout", "seed",
                       why="the spec's seeds are in [0, 2**31)", ge=0, lt=2**31)

    device: str = _run("auto", "auto | cpu | cuda | cuda:N", "plumbing", fuse_shared=True)
    threads: int = _run(0, "CPU threads for torch; 0 leaves torch's default", "plumbing", fuse_shared=True,
                        why="0 leaves torch's default; more threads than cores only slow a trial", ge=0, le=1024)
    compile: bool = _run(False, "torch.compile the model (CUDA only)", "plumbing", fuse_shared=True)
    cuda_graph: bool = _run(False, "record the training step once as a CUDA graph and replay it (CUDA only; "
                                   "engine/step.py says why)", "plumbing", fuse_shared=True)
    amp: bool | None = _run(None, "bf16 autocast on CUDA; None: for nets of >= 100k parameters "
                                  "(engine/group.py's fast_formats says why)", "plumbing", fuse_shared=True)
    channels_last: bool | None = _run(None, "memory format on CUDA; None: as amp", "plumbing", fuse_shared=True)
    gpu_memory_fraction: float | None = _run(None, "soft cap per process", "plumbing", fuse_shared=True, gt=0, le=1)
    fuse_strategy: Literal["auto", "vmap", "loop", "blockdiag"] = _run(
        "auto", "how a group computes its K members (engine/strategies.py says what each is)", "plumbing",
        fuse_shared=True)
    eval_batch_size: int = _run(4096, "", "plumbing", fuse_shared=True, ge=1, le=1_000_000)
    out_dir: str | None = _run(None, "where the trial writes its files; None: nowhere", "plumbing")

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(config_line(e)) from None

    @field_validator("model")
    @classmethod
    def _registered(cls, v: str) -> str:
        from .models import list_models
        from .models._registry import import_model

        if ":" in v:  # a user's net by import path: importable, or one line naming its module
            try:
                import_model(v)
            except GridrunError as e:
                raise ValueError(str(e).replace(f"model {v!r}: ", "")) from None
            return v
        if v not in list_models():
            raise ValueError(f"unknown model{did_you_mean(v, list_models())}")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if not v.strip() or "\x00" in v or len(v) > 1024:
            raise ValueError("name mnist, fashion_mnist, kmnist, a folder of four IDX files or an .npz file")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.fullmatch(v):
            raise ValueError(f"use {DEVICES}")
        return v

    @model_validator(mode="after")
    def _together(self) -> "TrainConfig":
        """The rules between fields, then the policy and the model's arguments (their modules word those)."""
        from .augment import check_policy
        from .models import resolve_model_args

        def bad(name, why):
            raise ValueError(f"config {name}={getattr(self, name)!r}: {why}")

        if self.clean_epochs > self.epochs:
            bad("clean_epochs", f"must be an integer in [0, epochs={self.epochs}]: the last epochs that skip "
                                "augmentation")
        if list(self.rungs) != sorted(set(self.rungs)) or any(not 1 <= r < self.epochs for r in self.rungs):
            bad("rungs", f"must be strictly increasing epochs, each in [1, epochs={self.epochs}): the epochs after "
                         "which a rung keeps the best members")
        if self.cuda_graph and self.compile:
            bad("cuda_graph", "cuda_graph and compile cannot both be on: each replays the step its own way; pick one")
        if self.scheduler == "plateau" and self.val_size == 0:
            bad("scheduler", "plateau steps on validation, so it needs val_size > 0")
        try:
            check_policy(self.augment, self.aug)
            resolve_model_args(self.model, self.dropout, self.model_args)
        except GridrunError as e:
            raise ValueError(str(e)) from None
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a plain dict; an unknown key is an error naming the nearest valid key."""
        if isinstance(d, TrainConfig):
            return d
        if not isinstance(d, dict):
            raise ConfigError(f"a config is a mapping of fields, got {type(d).__name__}")
        key = next((k for k in d if not isinstance(k, str)), None)
        if key is not None:
            raise ConfigError(f"unknown config key {key!r}: config keys are field names such as 'lr'")
        return cls(**d)  # __init__ words a refusal

    def to_dict(self) -> dict:
        return self.model_dump()


# ---------------------------------------------------------------- pydantic's errors in words

# pydantic's error types in words (the spec's messages use them too); its type names never reach a message.
WANTS = {"int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
         "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
         "string_type": "text", "bool_type": "true or false", "bool_parsing": "true or false",
         "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping (key: value)", "model_type": "a mapping (key: value)",
         "model_attributes_type": "a mapping (key: value)", "none_required": "null"}
BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _interval(name: str) -> str:
    """A field's bounds in words: 'in [0, 1)', '>= 1', '> 0', 'at most 10000'."""
    b = {k: getattr(m, k) for m in TrainConfig.model_fields[name].metadata for k in ("ge", "gt", "le", "lt")
         if hasattr(m, k)}
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[0]}{hi[1]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    return f"{'at most' if hi[1] == ']' else '<'} {hi[0]}"


def config_line(e: ValidationError) -> str:
    """TrainConfig's first error as one line: `config NAME=VALUE: why` (an unknown key first)."""
    errs = e.errors()
    err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
    msg = err["msg"].replace("Value error, ", "")
    if not err["loc"]:  # a rule between fields: its validator words it whole
        return msg
    name, v = err["loc"][0], err.get("input")
    if err["type"] == "extra_forbidden":
        return f"unknown config key {name!r}{did_you_mean(name, field_names())}"
    ft = FIELD_TYPES[name]
    if err["type"] in WANTS:
        msg = f"must be {WANTS[err['type']]}{' or null' if ft.optional else ''}"
    elif err["type"] == "literal_error":
        msg = f"unknown {name}{did_you_mean(v, ft.choices)}"
    elif err["type"] in BOUNDS:
        why = field_extra(name).get("why")
        msg = f"must be {_interval(name)}" + (f" ({why})" if why else "")
    return f"config {name}={v!r}: {msg}"


# ---------------------------------------------------------------- field facts, resolved once

class FieldType(typing.NamedTuple):
    kind: str                    # int | float | str | bool | dict
    optional: bool               # None allowed
    choices: tuple | None        # the named values of a Literal field

    def accepts(self, v) -> bool:
        """Whether v has this field's type, by TrainConfig's own strict type check (not its bounds
        or choices: a reader of stored configs asks only whether a value is of the right kind)."""
        try:
            _adapter(self.kind, self.optional).validate_python(v)
        except ValidationError:
            return False
        return True

    @property
    def words(self) -> str:
        return ("a number" if self.kind == "float" else f"an {self.kind}" if self.kind == "int"
                else f"a {self.kind}") + (" or null" if self.optional else "")


@functools.lru_cache(maxsize=None)
def _adapter(kind: str, optional: bool) -> TypeAdapter:
    t = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict,
         "list": list[StrictInt] | tuple[StrictInt, ...]}[kind]
    return TypeAdapter(t | None if optional else t, config=ConfigDict(strict=True))


def _field_type(hint) -> FieldType:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    args = typing.get_args(hint) if union else (hint,)
    base = next(a for a in args if a is not type(None))
    choices = typing.get_args(base) if typing.get_origin(base) is Literal else None
    kind = "str" if choices else "list" if typing.get_origin(base) is tuple else base.__name__
    return FieldType(kind, type(None) in args, choices)


def field_names() -> list[str]:
    return list(TrainConfig.model_fields)


def field_extra(name: str) -> dict:
    """What config.py says of a field besides its type: section, role, fuse_shared, why."""
    return TrainConfig.model_fields[name].json_schema_extra


FIELD_TYPES: dict[str, FieldType] = {n: _field_type(f.annotation) for n, f in TrainConfig.model_fields.items()}
ROLES: dict[str, str] = {n: field_extra(n)["role"] for n in field_names()}
PLUMBING = frozenset(n for n, r in ROLES.items() if r == "plumbing")
NOT_CONFIG = PLUMBING | {n for n, r in ROLES.items() if r == "seed"}  # what never defines a config
DEFAULTS: dict = {n: f.get_default(call_default_factory=True) for n, f in TrainConfig.model_fields.items()}


def with_defaults(train: dict) -> dict:
    """A stored config with every field it lacks at its default: a field added after a trial ran
    (e.g. `clean_epochs`, `precise_bn`) holds the value that reproduces what that trial did, so
    resuming, growing and reporting an older experiment treat its trials as the same configs."""
    return {**json.loads(json.dumps(DEFAULTS)), **train} if isinstance(train, dict) else train
