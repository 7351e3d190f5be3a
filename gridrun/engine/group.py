"""A group: K >= 1 trials of one architecture trained as one (a single trial is a group of one).

Each member keeps what makes it its own trial: its batch order and augmentation draws (its own
generator), its initial weights (its seed), its BatchNorm statistics and dropout masks (its
slice of the stacked buffers), its schedule (schedule.py: a function of the step, plateau's
state) and its optimizer state and hyperparameters (its column of the optimizer's rows). Every
member dimension is stacked, K = 1 included: (K, ...) weights, buffers, optimizer state and
weight average. Setup builds each member's model exactly as it would be built alone, stacks
their weights and picks the strategy that computes them (strategies.py).
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ..augment import Augment, deskew
from ..config import ConfigError, TrainConfig
from ..data import Splits, load_splits
from ..hooks import Hooks
from ..models import create_model, model_defaults, model_kwargs, profile, resolve_model_args
from ..models._layers import seed_dropout, set_dropout_rate
from . import strategies
from ..storage.provenance import versions
from .files import Writer
from .optim import Optimizer
from .schedule import Plateau, check, hyperparameters, steps_per_epoch
from .step import CudaGraphs, Trainer


@dataclass
class Member:
    """One trial inside a group."""

    cfg: TrainConfig
    aug: Augment
    dgen: torch.Generator              # batch order and augmentation
    plateau: Plateau | None            # the one schedule with a state (scheduler plateau)
    keys: list[str]                    # its state_dict's keys (what model.pt must hold)
    history: list = field(default_factory=list)
    status: str = "ok"
    alive: bool = True
    result: dict | None = None
    writer: Writer | None = None
    final: dict | None = None          # retired mid-run: what its files hold, kept in the group's state


@dataclass
class Group:
    cfgs: list[TrainConfig]
    device: torch.device
    splits: Splits
    members: list[Member]
    strategy: strategies.Strategy
    opt: Optimizer
    ema: dict | None                   # stacked weight average (params and buffers)
    meta: dict
    per_epoch: int = 1                 # steps an epoch counts for the schedules
    autocast: object = nullcontext     # the forward's context: bf16 autocast where fast_formats says
    trainer: Trainer | None = None
    start_epoch: int = 1
    roster: list = field(default_factory=list)  # every member it started with, in order; `members`: those training

    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def params(self) -> dict:
        return self.strategy.params

    @property
    def buffers(self) -> dict:
        return self.strategy.buffers

    def hyperparameters(self, epochs_done: int) -> list[dict]:
        """Every member's hyperparameters for the next step (the optimizer's step count so far)."""
        return [hyperparameters(m.cfg, self.opt.t, epochs_done, self.per_epoch, m.plateau) for m in self.members]

    def scored(self) -> tuple[dict, dict]:
        """The weights that are evaluated and saved: the weight average when there is one."""
        if self.ema is None:
            return self.params, self.buffers
        return {n: self.ema[n] for n in self.params}, {n: self.ema[n] for n in self.buffers}


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when there is one; a device that is not there is one error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        n = torch.cuda.device_count()
        idx = int(name[5:]) if ":" in name else 0
        if idx >= n:
            raise ConfigError(f"config device={name!r}: torch sees {n} GPU(s) here: use device auto or cpu, "
                              f"or cuda:0..cuda:{n - 1}" if n else
                              f"config device={name!r}: torch sees no GPU here: use device auto or cpu")
    return torch.device(name)


def prepare_device(cfg: TrainConfig) -> torch.device:
    """The config's device, with its CPU thread count, GPU memory cap and a fresh peak-memory mark."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        if device.index is None:  # "cuda" -> "cuda:N": set_per_process_memory_fraction wants an index
            device = torch.device("cuda", torch.cuda.current_device())
        if cfg.gpu_memory_fraction:
            torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction, device)
        torch.cuda.reset_peak_memory_stats(device)
    return device


def prepare_splits(cfg: TrainConfig, device: torch.device, arrays: dict | None = None) -> Splits:
    """The config's train/validation/test split on the device, deskewed when its policy aligns."""
    from ..datasets import MNIST_SHAPE, kind, load_dataset, shape_of

    arrays = arrays if arrays is not None else load_dataset(cfg.dataset, cfg.data_dir)
    classes = MNIST_SHAPE.classes if kind(cfg.dataset) in ("mnist", "torchvision") else shape_of(arrays).classes
    splits = load_splits(cfg.data_dir, cfg.val_size, cfg.subset, cfg.split_seed, device, arrays, cfg.normalize,
                         classes)
    if Augment(cfg.augment, cfg.aug).align:  # deskewing is preprocessing: the same for all three splits
        splits.train_x, splits.val_x, splits.test_x = (deskew(splits.train_x), deskew(splits.val_x),
                                                        deskew(splits.test_x))
    return splits


# bf16 autocast and channels_last pay off only for nets wide enough for tensor cores. Measured on
# an H100 (reports/benchmarks.md, 2026-11-23, bare training step): both together ran 0.64x
# (batch 128) and 0.84x (batch 512) the fp32 speed of tinynet_7k (7,594 parameters, 10-16
# channels), and 1.07x / 1.29x that of resnet20 (272,090). The threshold lies between the two.
FAST_FORMATS_MIN_PARAMS = 100_000


def fast_formats(cfg: TrainConfig, cuda: bool, n_params: int) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last) for a net of n_params: never off CUDA; a field left at None
    follows the net's size, an explicit true/false is obeyed."""
    if not cuda:
        return False, False
    big = n_params >= FAST_FORMATS_MIN_PARAMS
    amp = big if cfg.amp is None else cfg.amp
    return amp, amp if cfg.channels_last is None else cfg.channels_last


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_group(cfgs: list[TrainConfig]) -> None:
    """Members must share what one batched model needs (identity.FUSE_SHARED) and the deskew step."""
    from ..identity import FUSE_SHARED, canonical

    resolved = [canonical(c.to_dict()) for c in cfgs]  # one net under two names (an alias) is one net
    for name in FUSE_SHARED:
        values = {repr(c.get(name)) for c in resolved}  # canonical leaves out a field at its default (SINCE)
        if len(values) > 1:
            raise ConfigError(f"fused trials must share {name}, but the group has {', '.join(sorted(values))}")
    if len({Augment(c.augment, c.aug).align for c in cfgs}) > 1:
        raise ConfigError("fused trials must agree on 'align' (deskewing changes the data they share)")


def _dropout_rate(cfg: TrainConfig) -> float | None:
    """The member's dropout rate: its config's, else its model's default; None if it has none."""
    if "dropout" not in model_kwargs(cfg.model):
        return None
    return cfg.dropout if cfg.dropout is not None else model_defaults(cfg.model)["dropout"]


def build_members(cfgs: list[TrainConfig], device: torch.device, n_train: int,
                  data: tuple = (1, 28, 28, 10)) -> tuple[list, list]:
    """(members, models): each member's model, generator and schedule exactly as it would be alone.
    A net that cannot take the data's images is one line first (the spec's preflight says the
    same; `gridrun train` and a notebook's train have none: 'internal error: RuntimeError ...')."""
    c0 = cfgs[0]
    profile(c0.model, data, **resolve_model_args(c0.model, c0.dropout, c0.model_args))
    members, models = [], []
    for cfg in cfgs:
        seed_all(cfg.seed)
        dgen = torch.Generator(device=device).manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # again: the initial weights must not depend on data-loading work
        model = create_model(cfg.model, data, **resolve_model_args(cfg.model, cfg.dropout, cfg.model_args)).to(device)
        seed_dropout(model, cfg.seed)  # dropout masks: a hash of (seed, step, element), not the global RNG
        check(cfg, n_train)
        members.append(Member(cfg, Augment(cfg.augment, cfg.aug), dgen,
                              Plateau.of(cfg) if cfg.scheduler == "plateau" else None, list(model.state_dict().keys())))
        models.append(model)
    rates = [_dropout_rate(c) for c in cfgs]
    if any(rates):  # a member at rate 0 still runs the (identity) mask so that others can drop (alone: no change)
        for model, r in zip(models, rates):
            set_dropout_rate(model, r or 0.0, active=True)
    return members, models


def choose_strategy(cfg: TrainConfig, models: list, splits: Splits, device: torch.device, timed: bool) -> tuple:
    """(strategy name, timings or None): the config's, or for `auto` plain at K = 1, loop on a
    CPU, else the fastest of a few timed passes (`timed`: on CUDA, or when a test asks)."""
    if cfg.fuse_strategy != "auto":
        return cfg.fuse_strategy, None
    if len(models) == 1:
        return "plain", None
    if not timed:
        return "loop", None
    idx = torch.arange(len(models) * cfg.batch_size, device=device).remainder(len(splits.train_y))
    idx = idx.view(len(models), cfg.batch_size)
    times = strategies.time_strategies(models, splits.normalize(splits.train_x[idx].flatten(0, 1)).view(
        *idx.shape, *splits.train_x.shape[1:]), splits.train_y[idx])
    return min(times, key=times.get), times


def setup(cfgs: list[TrainConfig], arrays: dict | None = None, hooks: Hooks = Hooks()) -> Group:
    """Device, data, members, strategy, optimizer, weight average and trainer of a group.
    `hooks.recorder`: with `cuda_graph` off CUDA, record the step with it (tests);
    `hooks.timed`: time the strategies for `auto` (default: on CUDA)."""
    c0 = cfgs[0]
    device = prepare_device(c0)
    cuda = device.type == "cuda"
    splits = prepare_splits(c0, device, arrays)
    n_train = len(splits.train_y)
    members, models = build_members(cfgs, device, n_train, splits.shape)
    name, times = choose_strategy(c0, models, splits, device, cuda if hooks.timed is None else hooks.timed)
    n_params = sum(p.numel() for p in models[0].parameters() if p.requires_grad)
    # Only a plain trial trains in bf16 / channels_last: on CUDA (torch 2.11, H100) the backward
    # of vmap's batch norm refuses bf16 activations with fp32 running statistics, and bf16 bought
    # a tiny net nothing there (reports/benchmarks.md).
    amp, cl = fast_formats(c0, cuda, n_params) if name == "plain" else (False, False)
    plain = dict(compiled=c0.compile and cuda, fmt=torch.channels_last if cl else torch.contiguous_format)
    strategy = strategies.make(name, models, **(plain if name == "plain" else {}))
    if name == "blockdiag":
        strategies.check_same(strategy, strategies.make("loop", models), splits.normalize(splits.train_x[:8]))
    opt = _optimizer(c0.optimizer, strategy, members)
    ema = {n: t.detach().clone() for n, t in {**strategy.params, **strategy.buffers}.items()} if c0.ema else None
    recorder = None if not c0.cuda_graph else CudaGraphs(device, [m.dgen for m in members]) if cuda else hooks.recorder
    meta = {"params": n_params, "device": str(device), "threads": torch.get_num_threads(), "amp": amp,
            "channels_last": cl, "cuda_graph": recorder is not None, "n_train": n_train, "n_val": len(splits.val_y),
            "n_test": len(splits.test_y), **({"classes": splits.classes} if c0.dataset != "mnist" else {}),
            "steps_per_epoch": n_train // c0.batch_size + (n_train % c0.batch_size >= 2),
            "fuse_strategy": name, **({"fuse_timings_s": times} if times else {}), **versions()}
    g = Group(cfgs, device, splits, members, strategy, opt, ema, meta, steps_per_epoch(n_train, c0.batch_size),
              (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext, roster=list(members))
    g.trainer = Trainer(g, recorder)
    return g


@torch.no_grad()
def retire(g: Group, gone: list[int]) -> None:
    """Members diverged or pruned (positions in the group): the group goes on without them."""
    for k in gone:
        g.members[k].alive = False
    keep_members(g, [k for k, m in enumerate(g.members) if m.alive])


def _optimizer(kind: str, strategy, members: list) -> Optimizer:
    """One optimizer over the strategy's stacked parameters, each member's Nesterov flag its own."""
    return Optimizer(kind, list(strategy.params.values()), [kind == "sgd" and m.cfg.nesterov for m in members])


@torch.no_grad()
def keep_members(g: Group, keep: list[int]) -> None:
    """Go on with the members at positions `keep` only, in that order: the stacked weights, buffers,
    weight average and optimizer state shrink to theirs and the strategy and trainer are rebuilt,
    so a retired member costs no further compute in any strategy."""
    if keep == list(range(g.k)) or not keep:  # no member left: the group ends as it stands
        return
    idx = torch.tensor(keep, dtype=torch.long, device=g.device)
    members = [g.members[k] for k in keep]
    strategy = g.strategy.select(idx)
    opt = _optimizer(g.opt.kind, strategy, members)
    opt.t = g.opt.t
    for mine, old in zip(opt.state, g.opt.state):
        for t, o in zip(mine, old):
            t.copy_(o[idx])
    g.ema = {n: t[idx].clone() for n, t in g.ema.items()} if g.ema is not None else None
    g.members, g.cfgs, g.strategy, g.opt = members, [m.cfg for m in members], strategy, opt
    recorder = g.trainer.graphs.recorder  # None after a failed recording: the steps stay eager
    if isinstance(recorder, CudaGraphs):  # its graphs hold the survivors' generators only
        recorder = CudaGraphs(g.device, [m.dgen for m in members])
    g.trainer = Trainer(g, recorder)  # recorded anew: a recording holds the old group's tensors


def member_state_dict(g: Group, k: int) -> dict:
    """Member k's scored weights as its own model's state_dict (loadable into create_model(name))."""
    p, b = g.scored()
    src = {**p, **b}
    return {n: src[n][k].detach().clone() for n in g.members[k].keys}
