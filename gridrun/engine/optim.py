"""One optimizer for every group: SGD (momentum, Nesterov), Adam and AdamW over stacked
(K, ...) tensors, each member with its own hyperparameters.

The hyperparameters of a step live in one small tensor (a row per hyperparameter, a column per
member) that the host refills before each step: a recorded CUDA graph reads its address, so a
replay applies the values the schedules give this step (one-cycle moves lr and momentum;
schedule.py gives them per member). The update follows torch.optim's single-tensor formulas
(equal to them up to float rounding: test_engine states the tolerance), with the state made
before the first step (zeros give exactly SGD's first step, buf = grad), so the very first step
can be recorded too.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-8  # Adam's default
ROWS = {"sgd": ("lr", "wd", "mom"), "adam": ("wd", "b1", "one_b1", "b2", "one_b2", "step_size", "bc2_sqrt"),
        "adamw": ("decay", "b1", "one_b1", "b2", "one_b2", "step_size", "bc2_sqrt")}


def host_values(kind: str, groups: list[dict], alive: list[bool], t: int) -> list[list[float]]:
    """This step's rows (ROWS[kind]) from the members' hyperparameters (schedule.hyperparameters:
    a torch param group's keys); t is the 1-based step (Adam's bias corrections). A retired
    member gets zeros: its slices stay as they are."""
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
    """The update of K members' stacked parameters (a list of (K, ...) tensors, K = 1 included)."""

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
                if saved[n].shape != t.shape:  # copy_ would broadcast a tensor that lacks the member dimension
                    raise ValueError(f"optimizer state {n} is {tuple(saved[n].shape)}, not {tuple(t.shape)}")
                t.copy_(saved[n])
