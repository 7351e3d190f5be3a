"""The engine's strategies side by side (plain, loop, vmap, blockdiag; eager and CUDA graph): images/s of a group's step.

For each model and K, every strategy (plain for K = 1; loop, vmap, blockdiag) eager and, on
CUDA, replayed as a CUDA graph. Reports images/s of the group's whole training step
(augmentation off, SGD, batch 128 per member) against one eager plain trial, and on a CPU the
ATen operations dispatched per step (counted with a TorchDispatchMode) against K plain trials'
(what a CUDA graph replays and what an eager GPU step launches, a figure that does not depend
on the machine).

    GRIDRUN_DATA=/work/shared/data/mnist python -m benchmarks engine [--device cuda] [--steps 3]
        [--models tinynet_7k,resnet20] [--ks 1,8,32] [--batch 128] [--skip resnet20:32]
"""
from __future__ import annotations

import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gridrun.config import TrainConfig
from gridrun.data import load_arrays
from gridrun.engine.group import setup

from . import synchronizer


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while it is on, and apart those that are views (select,
    unsqueeze, expand, detach, ...: they launch no kernel on a GPU)."""

    def __init__(self):
        super().__init__()
        self.ops, self.views = Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        if func.is_view:
            self.views[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def group(model: str, k: int, strategy: str, device: str, batch: int, graph: bool, arrays: dict, threads: int):
    cfgs = [TrainConfig(model=model, seed=s, batch_size=batch, subset=max(batch * 2, 200), val_size=100,
                        augment="none", epochs=1, device=device, fuse_strategy=strategy, cuda_graph=graph,
                        scheduler="none", ema=0.0, threads=threads) for s in range(k)]
    g = setup(cfgs, arrays)
    g.opt.refresh(g.hyperparameters(0), [True] * k)
    idx = torch.arange(k * batch, device=g.device).remainder(len(g.splits.train_y)).view(k, batch)
    g.trainer.idx.copy_(idx)
    tr, clean = g.trainer, (False,) * k
    return g, (lambda: tr.graphs(clean, lambda: tr.step(tr.idx, clean)))


def measure(step, steps: int, device, least_s: float, warmup: int) -> float:
    """Seconds per step after `warmup` calls (the recording, for graphs): at least `steps`
    steps and `least_s` seconds."""
    for _ in range(warmup):
        step()
    sync = synchronizer(device.type)
    sync()
    t0, n = time.perf_counter(), 0
    while n < steps or time.perf_counter() - t0 < least_s:
        step()
        n += 1
        sync()
    return (time.perf_counter() - t0) / n


def count_ops(step) -> tuple[int, int]:
    """(ATen ops, of them not views) of one step."""
    with OpCounter() as c:
        step()
    total = sum(c.ops.values())
    return total, total - sum(c.views.values())


def add_args(ap) -> None:
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--models", default="tinynet_7k,resnet20")
    ap.add_argument("--ks", default="1,8,32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--skip", default="", help="model:K pairs not to run, e.g. resnet20:32 (minutes on a CPU)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: no spinning OpenMP threads on a shared CPU)")
    ap.add_argument("--least-s", type=float, default=1.0, help="time each cell for at least this long")


def cell(model: str, k: int, strategy: str, graph: bool, a, arrays: dict) -> tuple[str, float, tuple[int, int] | None]:
    """One group's strategy name, images/s and (off CUDA) (ATen ops, non-view ATen ops) per step."""
    cuda = a.device.startswith("cuda")
    g, step = group(model, k, strategy, a.device, a.batch, graph, arrays, a.threads)
    ops = count_ops(step) if not cuda else None  # on a CPU also the warm-up step
    sec = measure(step, a.steps, g.device, a.least_s, 5 if cuda else 1)
    return g.meta["fuse_strategy"], k * a.batch / sec, ops


def one_model(model: str, a, arrays: dict, bench) -> None:
    """Every K and strategy of one model; the first cell (one eager plain trial) is the baseline."""
    base = base_ops = None
    for k in map(int, a.ks.split(",")):
        cfg = {"model": model, "K": k, "batch": a.batch}
        if f"{model}:{k}" in a.skip.split(","):
            bench.row("images/s", None, "images/s", variant="-", config=cfg, note=f"skipped: --skip {model}:{k}")
            continue
        for strategy in (["auto"] if k == 1 else []) + ["loop", "vmap", "blockdiag"]:
            for graph in ([False, True] if a.device.startswith("cuda") else [False]):
                t = time.perf_counter()
                name, ips, ops = cell(model, k, strategy, graph, a, arrays)
                first = base is None
                base, base_ops = base or ips, base_ops or ops
                variant = f"{name} {'graph' if graph else 'eager'}"
                bench.row("images/s", ips, "images/s", variant=variant, config=cfg, wall_s=time.perf_counter() - t,
                          baseline=None if first else "one eager plain trial", baseline_value=None if first else base)
                for i, what in enumerate(("ATen ops per step", "non-view ATen ops per step") if ops else ()):
                    bench.row(what, ops[i], "ops", variant=variant, config=cfg,
                              baseline=None if first else f"{k} plain trials", baseline_value=None if first
                              else k * base_ops[i])


def run(a, bench) -> None:
    arrays = load_arrays()
    for model in a.models.split(","):
        one_model(model, a, arrays, bench)
