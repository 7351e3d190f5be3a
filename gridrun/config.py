"""TrainConfig: every knob of one trial, typed, commented, validated before any work.

Each field carries a role in its metadata: "config" fields define a configuration (trials
that agree on all of them are seeds of one config), "seed" is what repeats, and "plumbing"
fields say where and how a trial runs without changing what it computes. The report groups
seeds by the "config" fields; `gridrun train` makes one command-line option per field.
"""
from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields

from .errors import GridrunError, did_you_mean

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "plateau", "onecycle", "cosine")
FUSE_STRATEGIES = ("auto", "vmap", "loop", "blockdiag")
PLATEAU_METRICS = ("val_loss", "val_acc")
NORMALIZATIONS = ("dataset", "mnist", "per_image")
DEVICES = "auto, cpu, cuda or cuda:N"


class ConfigError(GridrunError):
    """A bad trial config: unknown key or out-of-range value."""


def _f(default, role: str = "config", **kw):
    """A dataclass field with its role ("config", "seed" or "plumbing")."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"role": role}, **kw)
    return field(default=default, metadata={"role": role}, **kw)


@dataclass
class TrainConfig:
    # The defaults are the best recipe measured on the tiny nets (issues 7, 13 and 17): SGD with
    # Nesterov momentum, one-cycle to lr 0.2 at batch 128, weight decay 5e-4, rotate+affine, 15
    # epochs. `gridrun train --model NAME` with no other option trains with it.
    # model
    model: str = _f("tinynet_7k")        # a registered name (`gridrun models`)
    dropout: float | None = _f(None)     # the model's dropout rate; None keeps its default
    model_args: dict = _f({})            # other keyword arguments of the model's factory
    # data
    data_dir: str | None = _f(None, "plumbing")  # folder of the MNIST files; None: $GRIDRUN_DATA, cache
    val_size: int = _f(5000)             # validation images held out of the 60,000 (stratified)
    subset: int | None = _f(None)        # train on this many images only (stratified), >= 10
    split_seed: int = _f(0)              # fixes the train/validation split, independent of `seed`
    augment: str = _f("rotate+affine")   # policy: '+'-joined ops or a named recipe (augment.POLICIES)
    aug: dict = _f({})                   # strengths, see augment.AugParams (override the policy's)
    clean_epochs: int = _f(0)            # the last N epochs train on un-augmented images
                                         # (0: augment every epoch)
    normalize: str = _f("dataset")       # dataset: train-split mean/std | mnist: 0.1307/0.3081 |
                                         # per_image: subtract each image's mean (khanrc/mnist)
    # optimisation
    epochs: int = _f(15)
    batch_size: int = _f(128)
    optimizer: str = _f("sgd")           # adam | adamw | sgd
    lr: float = _f(0.2)                  # peak learning rate (onecycle's max_lr)
    momentum: float = _f(0.9)            # sgd only
    nesterov: bool = _f(True)            # sgd only
    weight_decay: float = _f(5e-4)
    scheduler: str = _f("onecycle")      # none | step | plateau | onecycle | cosine
    step_size: int = _f(5)               # step: epochs between decays
    gamma: float = _f(0.1)               # step and plateau: lr multiplier at each decay
    patience: int = _f(2)                # plateau: epochs without improvement before a decay
    plateau_metric: str = _f("val_loss")  # plateau: val_loss (min) | val_acc (max)
    pct_start: float = _f(0.25)          # onecycle: fraction of steps spent warming up
    label_smoothing: float = _f(0.0)
    ema: float = _f(0.0)                 # decay of an exponential moving average of the weights
                                         # per step (e.g. 0.999); 0 = off. Scores use the average.
    precise_bn: bool = _f(False)         # after the last epoch, BatchNorm's statistics of the scored
                                         # model become the exact average over the un-augmented
                                         # training images (precise BN, Wu & Johnson 2021)
    seed: int = _f(0, "seed")            # initialisation, batch order, augmentation, dropout
    # execution
    device: str = _f("auto", "plumbing")  # auto | cpu | cuda | cuda:N
    threads: int = _f(0, "plumbing")     # CPU threads for torch; 0 leaves torch's default
    compile: bool = _f(False, "plumbing")  # torch.compile the model (CUDA only)
    cuda_graph: bool = _f(False, "plumbing")  # record the training step once as a CUDA graph and
                                         # replay it (CUDA only; engine/step.py says why)
    amp: bool | None = _f(None, "plumbing")  # bf16 autocast on CUDA; None: for nets of >= 100k
                                         # parameters (train.fast_formats says why)
    channels_last: bool | None = _f(None, "plumbing")  # memory format on CUDA; None: as amp
    gpu_memory_fraction: float | None = _f(None, "plumbing")  # soft cap per process
    fuse_strategy: str = _f("auto", "plumbing")  # how a group computes its K members: auto | vmap |
                                         # loop | blockdiag (engine/strategies.py says what each is)
    eval_batch_size: int = _f(4096, "plumbing")
    out_dir: str | None = _f(None, "plumbing")  # where the trial writes its files; None: nowhere

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        from .augment import check_policy
        from .models import list_models, resolve_model_args

        def bad(name, why):
            raise ConfigError(f"config {name}={getattr(self, name)!r}: {why}")

        check_types(self)
        if self.model not in list_models():
            raise ConfigError(f"config model={self.model!r}: unknown model{did_you_mean(self.model, list_models())}")
        for name in ("epochs", "eval_batch_size", "step_size"):
            if getattr(self, name) < 1:
                bad(name, "must be an integer >= 1")
        for name, hi in (("epochs", 10000), ("batch_size", 1_000_000), ("eval_batch_size", 1_000_000),
                         ("step_size", 10000), ("patience", 10000)):
            if getattr(self, name) > hi:
                bad(name, f"must be at most {hi:,}")
        if not 0 <= self.clean_epochs <= self.epochs:
            bad("clean_epochs", f"must be an integer in [0, epochs={self.epochs}]: the last epochs that skip augmentation")
        if self.batch_size < 2:
            bad("batch_size", "must be an integer >= 2 (BatchNorm cannot train on one image)")
        for name in ("lr", "momentum", "weight_decay", "gamma", "pct_start", "label_smoothing", "ema"):
            if not math.isfinite(getattr(self, name)):
                bad(name, "must be a finite number")
        if self.cuda_graph and self.compile:
            bad("cuda_graph", "cuda_graph and compile cannot both be on: each replays the step its own way; pick one")
        if not self.lr > 0:
            bad("lr", "learning rate must be > 0")
        if self.fuse_strategy not in FUSE_STRATEGIES:
            bad("fuse_strategy", f"use one of {', '.join(FUSE_STRATEGIES)}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"unknown optimizer{did_you_mean(self.optimizer, OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            bad("scheduler", f"unknown scheduler{did_you_mean(self.scheduler, SCHEDULERS)}")
        if self.plateau_metric not in PLATEAU_METRICS:
            bad("plateau_metric", f"use one of {', '.join(PLATEAU_METRICS)}")
        if self.normalize not in NORMALIZATIONS:
            bad("normalize", f"use one of {', '.join(NORMALIZATIONS)}")
        if self.scheduler == "plateau" and self.val_size == 0:
            bad("scheduler", "plateau steps on validation, so it needs val_size > 0")
        if not 0 <= self.val_size <= 50000:
            bad("val_size", "must be an integer in [0, 50000]: at least 10,000 images must stay for training")
        if self.subset is not None and self.subset < 10:
            bad("subset", "must be null or an integer >= 10 (one image per class)")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            bad("dropout", "must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1)")
        if not 0 <= self.momentum < 1:
            bad("momentum", "must be in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if not 0 < self.gamma <= 1:
            bad("gamma", "must be in (0, 1]")
        if self.patience < 0:
            bad("patience", "must be >= 0")
        if not 0 < self.pct_start < 1:
            bad("pct_start", "must be in (0, 1)")
        if not 0 <= self.ema < 1:
            bad("ema", "must be in [0, 1): a decay per step such as 0.999, or 0 for off")
        if self.threads < 0:
            bad("threads", "must be >= 0 (0 leaves torch's default)")
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            bad("gpu_memory_fraction", "must be in (0, 1]")
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:")
                                                         and self.device[5:].isdigit())):
            bad("device", f"use {DEVICES}")
        try:
            check_policy(self.augment, self.aug)
            resolve_model_args(self.model, self.dropout, self.model_args)
        except ConfigError:
            raise
        except GridrunError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a plain dict; an unknown key is an error naming the nearest valid key."""
        if isinstance(d, TrainConfig):
            return d
        if not isinstance(d, dict):
            raise ConfigError(f"a config is a mapping of fields, got {type(d).__name__}")
        names = field_names()
        for key in d:
            if key not in names:
                raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---------------------------------------------------------------- field facts, resolved once

@dataclass(frozen=True)
class FieldType:
    kind: str          # int | float | str | bool | dict
    optional: bool     # None allowed

    def accepts(self, v) -> bool:
        if v is None:
            return self.optional
        if isinstance(v, bool):
            return self.kind == "bool"
        want = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict}[self.kind]
        return isinstance(v, want)

    @property
    def words(self) -> str:
        return ("a number" if self.kind == "float" else f"an {self.kind}" if self.kind == "int"
                else f"a {self.kind}") + (" or null" if self.optional else "")


def _field_type(hint) -> FieldType:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None))
    return FieldType(base.__name__, optional)


FIELD_TYPES: dict[str, FieldType] = {n: _field_type(h) for n, h in typing.get_type_hints(TrainConfig).items()}
ROLES: dict[str, str] = {f.name: f.metadata["role"] for f in fields(TrainConfig)}
PLUMBING = frozenset(n for n, r in ROLES.items() if r == "plumbing")
NOT_CONFIG = PLUMBING | {n for n, r in ROLES.items() if r == "seed"}  # what never defines a config
DEFAULTS: dict = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                  for f in fields(TrainConfig)}


def with_defaults(train: dict) -> dict:
    """A stored config with every field it lacks at its default: a field added after a trial ran
    (e.g. `clean_epochs`, `precise_bn`) holds the value that reproduces what that trial did, so
    resuming, growing and reporting an older experiment treat its trials as the same configs."""
    return {**json.loads(json.dumps(DEFAULTS)), **train} if isinstance(train, dict) else train


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def check_types(cfg: TrainConfig) -> None:
    """Each value has its field's type (an int passes for a float), before range checks."""
    for name, ft in FIELD_TYPES.items():
        v = getattr(cfg, name)
        if not ft.accepts(v):
            raise ConfigError(f"config {name}={v!r}: must be {ft.words}")


# ---------------------------------------------------------------- help text, from the source

# The named values a str field takes (`gridrun train -h` lists them; validate() checks them).
CHOICES: dict[str, tuple] = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "plateau_metric": PLATEAU_METRICS,
                             "normalize": NORMALIZATIONS, "fuse_strategy": FUSE_STRATEGIES}


def field_docs() -> dict[str, tuple[str, str]]:
    """{field: (section, comment)} read from TrainConfig's own comments, so help never copies them.

    A comment on a field's line is its help; a comment-only line indented past the fields goes on
    with the field above; a comment-only line at the fields' indent just above a field is the
    heading of the section that field opens (`# model`, `# data`, ...)."""
    import inspect
    import io
    import tokenize

    names = set(field_names())
    lines: dict[int, list] = {}
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(TrainConfig)).readline):
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            lines.setdefault(tok.start[0], []).append(tok)
    indent = min(toks[0].start[1] for toks in lines.values() if toks[0].string in names)
    docs: dict[str, tuple[str, str]] = {}
    section, last, heading = "", None, ""
    for row in sorted(lines):
        toks = lines[row]
        comment = toks[-1].string.lstrip("#").strip() if toks[-1].type == tokenize.COMMENT else ""
        if toks[0].string in names and toks[0].start[1] == indent and len(toks) > 1 and toks[1].string == ":":
            section, heading = (heading or section), ""
            last = toks[0].string
            docs[last] = (section, comment)
        elif toks[0].type == tokenize.COMMENT and toks[0].start[1] > indent and last:
            docs[last] = (docs[last][0], f"{docs[last][1]} {comment}".strip())
        elif toks[0].type == tokenize.COMMENT and toks[0].start[1] == indent:
            heading, last = comment, None
        else:
            last = None
    return docs
