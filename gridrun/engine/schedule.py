"""Each member's hyperparameters at a step, as plain functions of the step (one-cycle, cosine) or
of the epochs done (step decay); plateau, which watches validation, is the one stateful schedule.

Every value equals what torch.optim.lr_scheduler sets on an optimizer stepped the same way
(test_engine compares them step by step): one-cycle's phases and cosine annealing as torch
writes them, cosine and step decay by torch's own recursion (a product, not a closed form, so
the floats are torch's to the last bit).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..config import TrainConfig
from ..errors import GridrunError

BETA2 = 0.999                      # Adam's default second-moment decay
ONECYCLE = (25.0, 1e4, 0.85, 0.95)  # torch OneCycleLR's div_factor, final_div_factor, base/max momentum
PLATEAU_THRESHOLD = 1e-4           # ReduceLROnPlateau's defaults: relative threshold, eps of a change
PLATEAU_EPS = 1e-8


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """The steps an epoch counts for the schedules (the last, short batch is one)."""
    return math.ceil(n_train / batch_size)


def check(cfg: TrainConfig, n_train: int) -> None:
    """One line for a one-cycle schedule torch's OneCycleLR cannot make (it divides by its warm-up
    steps - 1)."""
    per_epoch = steps_per_epoch(n_train, cfg.batch_size)
    if cfg.scheduler == "onecycle" and float(cfg.pct_start * cfg.epochs * per_epoch) - 1 == 0:
        raise GridrunError(f"scheduler onecycle: {cfg.epochs} epoch(s) of {per_epoch} step(s) leave "
                           f"exactly one warm-up step at pct_start {cfg.pct_start:g}, which torch's OneCycleLR "
                           f"cannot schedule: change epochs, the data, batch_size or pct_start, or use scheduler cosine")


def _cos(start: float, end: float, pct: float) -> float:
    """Cosine anneal from start to end as pct goes 0 -> 1 (OneCycleLR._annealing_cos)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def onecycle(max_lr: float, pct_start: float, t: int, total: int) -> tuple[float, float]:
    """(lr, momentum) after t steps of a one-cycle schedule over `total` steps (momentum: SGD's or Adam's beta1)."""
    div, final_div, base_m, max_m = ONECYCLE
    initial = max_lr / div
    phases = ((float(pct_start * total) - 1, initial, max_lr, max_m, base_m),
              (total - 1, max_lr, initial / final_div, base_m, max_m))
    start = 0.0
    for i, (end, lr0, lr1, m0, m1) in enumerate(phases):
        if t <= end or i == len(phases) - 1:
            pct = (t - start) / (end - start)
            return _cos(lr0, lr1, pct), _cos(m0, m1, pct)
        start = end


@functools.lru_cache(maxsize=64)
def _cosine_table(lr: float, total: int) -> tuple[float, ...]:
    """CosineAnnealingLR's lr after 0..total steps, by its own recursion (eta_min 0)."""
    out = [lr]
    for t in range(1, total + 1):
        out.append((1 + math.cos(math.pi * t / total)) / (1 + math.cos(math.pi * (t - 1) / total)) * out[-1])
    return tuple(out)


def cosine(lr: float, t: int, total: int) -> float:
    """The lr after t steps of cosine annealing to 0 over `total` steps."""
    return _cosine_table(lr, total)[t]


def step_decay(lr: float, gamma: float, step_size: int, epochs_done: int) -> float:
    """StepLR's lr after `epochs_done` epochs: times gamma every step_size epochs."""
    for _ in range(epochs_done // step_size):
        lr *= gamma
    return lr


@dataclass
class Plateau:
    """ReduceLROnPlateau over one member (mode by plateau_metric, relative threshold, no cooldown)."""

    lr: float
    best: float
    bad: int = 0

    @classmethod
    def of(cls, cfg: TrainConfig) -> "Plateau":
        return cls(cfg.lr, -math.inf if cfg.plateau_metric == "val_acc" else math.inf)

    def step(self, cfg: TrainConfig, val_loss: float, val_acc: float) -> None:
        """The end of an epoch: the lr times gamma after more than `patience` epochs without a better metric."""
        maximize = cfg.plateau_metric == "val_acc"
        now = float(val_acc if maximize else val_loss)
        better = now > self.best * (1 + PLATEAU_THRESHOLD) if maximize else now < self.best * (1 - PLATEAU_THRESHOLD)
        self.best, self.bad = (now, 0) if better else (self.best, self.bad + 1)
        if self.bad > cfg.patience:
            new = max(self.lr * cfg.gamma, 0.0)
            if self.lr - new > PLATEAU_EPS:
                self.lr = new
            self.bad = 0


def hyperparameters(cfg: TrainConfig, t: int, epochs_done: int, per_epoch: int, plateau: Plateau | None) -> dict:
    """A member's lr, weight decay, momentum and Adam betas for its step after t steps and
    `epochs_done` epochs (the keys of a torch param group, which optim.host_values reads)."""
    lr, mom, beta1, total = cfg.lr, cfg.momentum, 0.9, cfg.epochs * per_epoch
    if cfg.scheduler == "onecycle":
        lr, mom = onecycle(cfg.lr, cfg.pct_start, t, total)
        beta1 = mom
    elif cfg.scheduler == "cosine":
        lr = cosine(cfg.lr, t, total)
    elif cfg.scheduler == "step":
        lr = step_decay(cfg.lr, cfg.gamma, cfg.step_size, epochs_done)
    elif cfg.scheduler == "plateau":
        lr = plateau.lr
    return {"lr": lr, "weight_decay": cfg.weight_decay, "momentum": mom, "betas": (beta1, BETA2)}
