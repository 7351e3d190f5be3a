"""One optimizer for every group: SGD (momentum, Nesterov), Adam and AdamW over stacked
(K, ...) tensors, each member with its own hyperparameters.

The hyperparameters of a step live in one small tensor (a row per hyperparameter, a column per
member) that the host refills before each step: a recorded CUDA graph reads its address, so a
replay applies the values a scheduler set this step (one-cycle moves lr and momentum). Each
member's schedule is a torch scheduler on a *shadow* torch optimizer that holds no parameters:
the scheduler sets the shadow's lr/momentum/betas, this module reads them. The update follows
torch.optim's single-tensor formulas (equal to them up to float rounding: test_engine states
the tolerance), with the state made before the first step (zeros give exactly SGD's first
step, buf = grad), so the very first step can be recorded too.
"""
from __future__ import annotations

import math

import torch

from ..errors import GridrunError
from ..config import TrainConfig

EPS = 1e-8  # Adam's default
ROWS = {"sgd": ("lr", "wd", "mom"), "adam": ("wd", "b1", "one_b1", "b2", "one_b2", "step_size", "bc2_sqrt"),
        "adamw": ("decay", "b1", "one_b1", "b2", "one_b2", "step_size", "bc2_sqrt")}


def make_shadow(cfg: TrainConfig, steps_per_epoch: int):
    """(shadow optimizer, scheduler or None, steps per batch?) of one member."""
    dummy = [torch.zeros(1, requires_grad=True)]
    if cfg.optimizer == "sgd":
        shadow = torch.optim.SGD(dummy, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                 weight_decay=cfg.weight_decay)
    else:
        kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        shadow = kind(dummy, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched, per_batch = make_scheduler(cfg, shadow, steps_per_epoch)
    shadow.step()  # no gradients: changes nothing, tells the scheduler that steps happen
    return shadow, sched, per_batch


def make_scheduler(cfg: TrainConfig, opt, steps_per_epoch: int):
    """(scheduler or None, steps per batch?)."""
    s, lrs = cfg.scheduler, torch.optim.lr_scheduler
    if s == "step":
        return lrs.StepLR(opt, cfg.step_size, cfg.gamma), False
    if s == "plateau":
        mode = "max" if cfg.plateau_metric == "val_acc" else "min"
        return lrs.ReduceLROnPlateau(opt, mode=mode, factor=cfg.gamma, patience=cfg.patience), False
    if s == "onecycle":
        total = cfg.epochs * steps_per_epoch
        if float(cfg.pct_start * total) - 1 == 0:  # torch's OneCycleLR divides by its warm-up steps - 1
            raise GridrunError(f"scheduler onecycle: {cfg.epochs} epoch(s) of {steps_per_epoch} step(s) leave "
                               f"exactly one warm-up step at pct_start {cfg.pct_start:g}, which torch's OneCycleLR "
                               f"cannot schedule: change epochs, the data, batch_size or pct_start, or use scheduler cosine")
        return lrs.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                              pct_start=cfg.pct_start), True
    if s == "cosine":
        return lrs.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch), True
    return None, False


def step_epoch_scheduler(cfg: TrainConfig, sched, per_batch: bool, val_loss: float, val_acc: float) -> None:
    """The end-of-epoch step of a per-epoch scheduler (plateau watches validation)."""
    if sched is None or per_batch:
        return
    if cfg.scheduler == "plateau":
        sched.step(val_acc if cfg.plateau_metric == "val_acc" else val_loss)
    else:
        sched.step()


def host_values(kind: str, groups: list[dict], alive: list[bool], t: int) -> list[list[float]]:
    """This step's rows (ROWS[kind]) from the members' shadow param groups; t is the 1-based
    step (Adam's bias corrections). A retired member gets zeros: its slices stay as they are."""
    cols = []
    for g, ok in zip(groups, alive):
        lr, wd = (g["lr"], g["weight_decay"]) if ok else (0.0, 0.0)
        if kind == "sgd":
            cols.append((lr, wd, g["momentum"]))
            continue
        b1, b2 = g["betas"]
        first = (1 - lr * wd) if kind == "adamw" else wd
        cols.append((first, b1, 1 - b1, b2, 1 - b2, lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t)))
    return [list(row) for row in zip(*cols)]


class Optimizer:
    """The update of K members' stacked parameters (a list of (K, ...) tensors; for K = 1 also a
    plain model's own parameters, which the (1, 1, ...) hyperparameter views broadcast over)."""

    def __init__(self, kind: str, params: list[torch.Tensor], nesterov: list[bool]):
        self.kind, self.params, self.t = kind, params, 0
        self._last = None  # the hyperparameter rows last copied to the device
        k, dev = len(nesterov), params[0].device
        n_state = 1 if kind == "sgd" else 2
        self.state = [[torch.zeros_like(p) for p in params] for _ in range(n_state)]
        self.rows = torch.zeros(len(ROWS[kind]), k, device=dev)  # refreshed by `refresh`, read by `step`
        self.v = {name: [self.rows[i].view(-1, *[1] * (p.dim() - 1)) for p in params]
                  for i, name in enumerate(ROWS[kind])}
        self.nesterov = all(nesterov) if kind == "sgd" and len(set(nesterov)) == 1 else None
        if kind == "sgd" and self.nesterov is None:  # members differ: chosen per member
            flags = torch.tensor(nesterov, device=dev)
            self.v["nest"] = [flags.view(-1, *[1] * (p.dim() - 1)) for p in params]

    def refresh(self, groups: list[dict], alive: list[bool]) -> None:
        """Count a step and copy its hyperparameters to the device: only when they changed, and
        from pinned memory without waiting (a copy from pageable memory would block the CPU until
        the GPU has drained, every step, so it could never queue the next one)."""
        self.t += 1
        values = host_values(self.kind, groups, alive, self.t)
        if values == self._last:
            return
        cuda = self.rows.is_cuda
        self.rows.copy_(torch.tensor(values, dtype=torch.float32, pin_memory=cuda), non_blocking=cuda)
        self._last = values

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        (self._sgd if self.kind == "sgd" else self._adam)(grads)

    def _sgd(self, grads) -> None:
        p, v, bufs = self.params, self.v, self.state[0]
        d = torch._foreach_add(grads, torch._foreach_mul(p, v["wd"]))
        torch._foreach_mul_(bufs, v["mom"])
        torch._foreach_add_(bufs, d)
        if self.nesterov is None:
            nest = torch._foreach_add(d, torch._foreach_mul(bufs, v["mom"]))
            d = [torch.where(f, a, b) for f, a, b in zip(v["nest"], nest, bufs)]
        else:
            d = torch._foreach_add(d, torch._foreach_mul(bufs, v["mom"])) if self.nesterov else bufs
        torch._foreach_sub_(p, torch._foreach_mul(d, v["lr"]))

    def _adam(self, grads) -> None:
        p, v, (m1, m2) = self.params, self.v, self.state
        if self.kind == "adamw":
            torch._foreach_mul_(p, v["decay"])
        else:
            grads = torch._foreach_add(grads, torch._foreach_mul(p, v["wd"]))
        torch._foreach_mul_(m1, v["b1"])
        torch._foreach_add_(m1, torch._foreach_mul(grads, v["one_b1"]))
        torch._foreach_mul_(m2, v["b2"])
        torch._foreach_addcmul_(m2, grads, torch._foreach_mul(grads, v["one_b2"]))
        denom = torch._foreach_div(torch._foreach_sqrt(m2), v["bc2_sqrt"])
        torch._foreach_add_(denom, EPS)
        torch._foreach_sub_(p, torch._foreach_mul(torch._foreach_div(m1, denom), v["step_size"]))

    def state_dict(self, names: list[str]) -> dict:
        return {"t": self.t, "state": [dict(zip(names, s)) for s in self.state]}

    @torch.no_grad()
    def load_state_dict(self, sd: dict, names: list[str]) -> None:
        self.t = int(sd["t"])
        for mine, saved in zip(self.state, sd["state"], strict=True):
            for n, t in zip(names, mine):
                t.copy_(saved[n])
