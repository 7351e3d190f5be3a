"""TrainConfig: every knob of one trial, typed, commented, validated before any work."""
from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field, fields

from . import GridrunError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "plateau", "onecycle", "cosine")


class ConfigError(GridrunError):
    """A bad trial config: unknown key or out-of-range value."""


@dataclass
class TrainConfig:
    # model
    model: str = "tinynet_7k"      # a registered name (`gridrun models`)
    dropout: float | None = None   # Dropout2d after each conv; None keeps the model's default
    model_args: dict = field(default_factory=dict)  # extra keyword arguments for the factory
    # data
    data_dir: str | None = None    # folder of the four MNIST IDX files; None: $GRIDRUN_DATA, cache
    val_size: int = 5000           # validation images held out of the 60,000 (stratified)
    subset: int | None = None      # train on this many images only (stratified), for quick runs
    split_seed: int = 0            # fixes the train/validation split, independent of `seed`
    augment: str = "none"          # policy, '+'-joined: none rotate affine jitter elastic align
    aug: dict = field(default_factory=dict)  # strengths, see augment.AugParams
    # optimisation
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "adam"        # adam | adamw | sgd
    lr: float = 1e-3               # peak learning rate (onecycle's max_lr)
    momentum: float = 0.9          # sgd only
    nesterov: bool = False         # sgd only
    weight_decay: float = 0.0
    scheduler: str = "none"        # none | step | plateau | onecycle | cosine
    step_size: int = 5             # step: epochs between decays
    gamma: float = 0.1             # step and plateau: lr multiplier at each decay
    patience: int = 2              # plateau: epochs without validation-loss improvement
    pct_start: float = 0.25        # onecycle: fraction of steps spent warming up
    label_smoothing: float = 0.0
    seed: int = 0                  # initialisation, batch order and augmentation
    # execution
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    threads: int = 0               # CPU threads for torch; 0 leaves torch's default
    compile: bool = False          # torch.compile the model (CUDA only)
    amp: bool = True               # bf16 autocast on CUDA
    channels_last: bool = True     # memory format on CUDA
    gpu_memory_fraction: float | None = None  # soft cap via set_per_process_memory_fraction
    eval_batch_size: int = 4096
    out_dir: str | None = None     # where the trial writes its files; None writes nothing

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        from .augment import parse_policy, make_params
        from .models import list_models

        def bad(name, why):
            raise ConfigError(f"config {name}={getattr(self, name)!r}: {why}")

        self._check_types()
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}: valid models are {', '.join(list_models())}")
        if not self.lr > 0:
            bad("lr", "learning rate must be > 0")
        for name in ("batch_size", "epochs", "eval_batch_size", "step_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be an integer >= 1")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"unknown optimizer; use one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            bad("scheduler", f"unknown scheduler; use one of {', '.join(SCHEDULERS)}")
        if self.scheduler == "plateau" and self.val_size == 0:
            bad("scheduler", "plateau steps on validation loss, so it needs val_size > 0")
        if not isinstance(self.val_size, int) or not 0 <= self.val_size < 60000:
            bad("val_size", "must be an integer in [0, 60000)")
        if self.subset is not None and (not isinstance(self.subset, int) or self.subset < 1):
            bad("subset", "must be a positive integer or null")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            bad("dropout", "must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if not 0 < self.gamma <= 1:
            bad("gamma", "must be in (0, 1]")
        if not 0 < self.pct_start < 1:
            bad("pct_start", "must be in (0, 1)")
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            bad("gpu_memory_fraction", "must be in (0, 1]")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", "use auto, cpu, cuda or cuda:N")
        try:
            parse_policy(self.augment)
            make_params(self.aug)
        except GridrunError as e:
            raise ConfigError(str(e)) from None

    def _check_types(self) -> None:
        """Each value has its field's type (an int passes for a float), before range checks."""
        kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}
        for f in fields(self):
            v = getattr(self, f.name)
            hint = str(f.type)
            if v is None and "None" in hint:
                continue
            want = next(k for k in kinds if hint.startswith(k))
            ok = isinstance(v, kinds[want]) and not (isinstance(v, bool) and want in ("int", "float"))
            if not ok:
                raise ConfigError(f"config {f.name}={v!r}: must be {'a number' if want == 'float' else 'a ' + want}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a plain dict; an unknown key is an error naming the nearest valid key."""
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; valid keys: {', '.join(names)}"
                raise ConfigError(f"unknown config key {key!r}{hint}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad config: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
