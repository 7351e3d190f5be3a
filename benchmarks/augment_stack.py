"""engine.step.augmented's common case (every member warps alike): the old stacking path vs one warp over K*B.

The old path stacked the K members' batches, warped them and split them again (two copies per
member); the new one warps the (K*B) batch in place of them. Outputs are checked equal before
anything is timed; each path runs for at least --seconds.

    python -m benchmarks augment_stack [--ks 1,8] [--batch 128] [--policy rotate+affine]
"""
from __future__ import annotations

import time

import torch

from gridrun.augment import Augment, Draws

from . import synchronizer


def add_args(ap) -> None:
    ap.add_argument("--ks", default="1,8")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--policy", default="rotate+affine")
    ap.add_argument("--seconds", type=float, default=2.0, help="time each path for at least this long")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: as a trial sharing the CPU)")


def paths(aug: Augment, k: int, b: int, device: str) -> dict:
    """The old and the new path over the same K batches and draws."""
    x = torch.rand(k, b, 1, 28, 28, device=device)
    g = torch.Generator().manual_seed(0)
    draws = Draws.cat([aug.draw(b, g, x.device, (28, 28)) for _ in range(k)])

    def old():
        j = Augment.apply(torch.stack([x[i] for i in range(k)]).flatten(0, 1), draws)
        return torch.stack([j[i * b:(i + 1) * b] for i in range(k)]).flatten(0, 1).view(x.shape)

    def new():
        return Augment.apply(x.flatten(0, 1), draws).view(x.shape)

    return {"old": old, "new": new}


def ms_per_call(f, device: str, seconds: float) -> float:
    sync = synchronizer(device)
    f()
    sync()
    t, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - t < seconds:
        f()
        n += 1
    sync()
    return (time.perf_counter() - t) / n * 1e3


def run(a, bench) -> None:
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    aug = Augment(a.policy)
    for k in [int(x) for x in a.ks.split(",")]:
        fs = paths(aug, k, a.batch, a.device)
        if not torch.equal(fs["old"](), fs["new"]()):
            raise RuntimeError(f"augment_stack K={k}: the two paths' outputs differ")
        cfg = {"K": k, "batch": a.batch, "policy": a.policy}
        t = time.perf_counter()
        old = ms_per_call(fs["old"], a.device, a.seconds)
        bench.row("augmentation per step", old, "ms", variant="old: stack, warp, split", config=cfg,
                  wall_s=time.perf_counter() - t)
        t = time.perf_counter()
        bench.row("augmentation per step", ms_per_call(fs["new"], a.device, a.seconds), "ms",
                  variant="new: one warp over K*B", config=cfg, baseline="old", baseline_value=old,
                  wall_s=time.perf_counter() - t, note="outputs checked equal")
