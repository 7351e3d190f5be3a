"""Why fusing trials loses on a CPU: one tinynet_7k conv for K members, K separate convs vs one grouped conv vs vmap.

One conv layer of tinynet_7k (10 -> 16 channels, 3x3, on 26x26 maps, batch 128), forward and
backward, for K members computed

  separate   as K ordinary convs one after another (the baseline),
  grouped    as one grouped conv over K x channels (what vmap turns the K convs into),
  vmap       through torch.func.vmap over stacked weights (the fused trainer's path),

timed in one process: ms per K-member step.

    python -m benchmarks grouped_conv [--device cuda] [--ks 1,2,4,8,16]
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.func import vmap

from . import synchronizer


def add_args(ap) -> None:
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cin", type=int, default=10)
    ap.add_argument("--cout", type=int, default=16)
    ap.add_argument("--size", type=int, default=26)
    ap.add_argument("--reps", type=int, default=10)


def timed(fn, device: str, reps: int) -> float:
    """ms per call after 3 warm-up calls."""
    sync = synchronizer(device)
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps * 1000


def variants(k: int, a) -> dict:
    """The three ways of computing K members' conv, forward + backward."""
    x = torch.randn(k, a.batch, a.cin, a.size, a.size, device=a.device)
    w = torch.randn(k, a.cout, a.cin, 3, 3, device=a.device, requires_grad=True)

    def separate():
        for i in range(k):
            F.conv2d(x[i], w[i]).sum().backward()

    def grouped():
        xg = x.permute(1, 0, 2, 3, 4).reshape(a.batch, k * a.cin, a.size, a.size)
        F.conv2d(xg, w.reshape(k * a.cout, a.cin, 3, 3), groups=k).sum().backward()

    def vmapped():
        vmap(F.conv2d)(x, w).sum().backward()

    return {"separate": separate, "grouped": grouped, "vmap": vmapped}


def run(a, bench) -> None:
    for k in [int(x) for x in a.ks.split(",")]:
        cfg = {"K": k, "batch": a.batch, "conv": f"{a.cin}->{a.cout} 3x3 on {a.size}x{a.size}"}
        base = None
        for name, fn in variants(k, a).items():
            t = time.perf_counter()
            ms = timed(fn, a.device, a.reps)
            base = base or ms  # separate: the first
            bench.row("forward+backward per K-member step", ms, "ms", variant=name, config=cfg,
                      baseline=None if name == "separate" else "separate", baseline_value=None if name == "separate"
                      else base, wall_s=time.perf_counter() - t)
