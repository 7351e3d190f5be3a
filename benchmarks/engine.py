"""The engine's strategies side by side, in one process: for each model and K, every strategy
(plain for K = 1; loop, vmap, blockdiag) eager and, on CUDA, replayed as a CUDA graph. Prints
images/s of the group's whole training step (augmentation off, SGD, batch 128 per member), its
ratio to one eager plain trial, and on a CPU the ATen operations dispatched per step (per group
and per member; counted with a TorchDispatchMode): what a CUDA graph replays and what an eager
GPU step launches, a figure that does not depend on the machine.

    GRIDRUN_DATA=/work/shared/data/mnist python benchmarks/engine.py [--device cuda] [--steps 3]
        [--models tinynet_7k,resnet20] [--ks 1,8,32] [--batch 128] [--skip resnet20:32]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from gridrun.config import TrainConfig  # noqa: E402
from gridrun.data import load_arrays  # noqa: E402
from gridrun.engine.group import setup  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while it is on."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def group(model: str, k: int, strategy: str, device: str, batch: int, graph: bool, arrays: dict, threads: int):
    cfgs = [TrainConfig(model=model, seed=s, batch_size=batch, subset=max(batch * 2, 200), val_size=100,
                        augment="none", epochs=1, device=device, fuse_strategy=strategy, cuda_graph=graph,
                        scheduler="none", ema=0.0, threads=threads) for s in range(k)]
    g = setup(cfgs, arrays)
    g.opt.refresh([m.shadow.param_groups[0] for m in g.members], [True] * k)
    idx = torch.arange(k * batch, device=g.device).remainder(len(g.splits.train_y)).view(k, batch)
    g.trainer.idx.copy_(idx)
    tr, clean = g.trainer, (False,) * k
    return g, (lambda: tr.graphs(clean, lambda: tr.step(tr.idx, clean)))


def measure(step, steps: int, device, least_s: float, warmup: int) -> float:
    """Seconds per step after `warmup` calls (the recording, for graphs): at least `steps`
    steps and `least_s` seconds."""
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0, n = time.perf_counter(), 0
    while n < steps or time.perf_counter() - t0 < least_s:
        step()
        n += 1
        sync()
    return (time.perf_counter() - t0) / n


def count_ops(step) -> int:
    with OpCounter() as c:
        step()
    return sum(c.ops.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--models", default="tinynet_7k,resnet20")
    ap.add_argument("--ks", default="1,8,32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--skip", default="", help="model:K pairs not to run, e.g. resnet20:32 (minutes on a CPU)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: no spinning OpenMP threads on a shared CPU)")
    ap.add_argument("--least-s", type=float, default=1.0, help="time each cell for at least this long")
    a = ap.parse_args()
    arrays = load_arrays()
    skip = set(filter(None, a.skip.split(",")))
    cuda = a.device.startswith("cuda")
    print(f"device {a.device}, torch {torch.__version__}, threads {a.threads}, batch {a.batch} "
          f"per member, at least {a.steps} timed steps and {a.least_s} s per cell, SGD, no augmentation\n")
    print("| model | K | strategy | mode | images/s | ratio to one eager trial | ATen ops/step | ops/member |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for model in a.models.split(","):
        base = None
        for k in map(int, a.ks.split(",")):
            if f"{model}:{k}" in skip:
                print(f"| {model} | {k} | (skipped: --skip {model}:{k}) | | | | | |", flush=True)
                continue
            for strategy in (["auto"] if k == 1 else []) + ["loop", "vmap", "blockdiag"]:
                for graph in ([False, True] if cuda else [False]):
                    g, step = group(model, k, strategy, a.device, a.batch, graph, arrays, a.threads)
                    ops = count_ops(step) if not cuda else None  # on a CPU also the warm-up step
                    sec = measure(step, a.steps, g.device, a.least_s, 5 if cuda else 1)
                    ips = k * a.batch / sec
                    base = base or ips  # the first cell: one eager plain trial
                    name = g.meta["fuse_strategy"]
                    print(f"| {model} | {k} | {name} | {'graph' if graph else 'eager'} | {ips:,.0f} | "
                          f"{ips / base:.2f} | {ops if ops else '-'} | {f'{ops / k:.0f}' if ops else '-'} |",
                          flush=True)


if __name__ == "__main__":
    main()
