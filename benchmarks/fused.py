"""Fused trials against K ordinary trials, one after another or in K processes: images/s of K configs of one net.

Images/s of K configs of one net (K = 1, 2, 4, 8, 16, 32) trained

  fused-vmap   as one batched model (torch.func.vmap over stacked weights; grouped convs),
  fused-loop   as one group that steps its members one after another on the stacked weights,
  sequential   as K ordinary trials one after another (gridrun.train.train; the baseline), and
  processes    as K ordinary trials in K concurrent processes (what fractional GPUs give).

Every variant trains the same K configs (seeds 0..K-1, lr spread over a decade) for two epochs
of `steps` batches; the second epoch is timed. The rate is K x images per epoch / seconds.

    GRIDRUN_DATA=../shared/data/mnist python -m benchmarks fused [--device cuda] [--ks 1,2,4,8]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import torch

from gridrun.train import train

from . import child_env

warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")


def add_args(ap) -> None:
    ap.add_argument("--model", default="tinynet_7k")
    ap.add_argument("--ks", default="1,2,4,8,16,32")
    ap.add_argument("--steps", type=int, default=50, help="batches per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--variants", default="fused-vmap,fused-loop,sequential,processes")
    ap.add_argument("--max-processes", type=int, default=8, help="largest K run as concurrent processes")


def configs(k: int, a) -> list[dict]:
    return [dict(model=a.model, epochs=2, subset=a.steps * a.batch, batch_size=a.batch, val_size=1000,
                 optimizer="sgd", lr=0.01 * 10 ** (i / max(1, k - 1)), momentum=0.9, nesterov=True,
                 scheduler="onecycle", augment="rotate+affine", seed=i, device=a.device, threads=a.threads,
                 eval_batch_size=2048) for i in range(k)]


def rate_fused(k: int, a, strategy: str) -> float:
    res = train([dict(c, fuse_strategy=strategy) for c in configs(k, a)])
    return k * res[0]["n_train"] / res[0]["history"][1]["seconds"]


def rate_sequential(k: int, a) -> float:
    secs, n = 0.0, 0
    for c in configs(k, a):
        r = train(c)
        secs += r["history"][1]["seconds"]
        n = r["n_train"]
    return k * n / secs


CHILD = """
import json, sys, warnings
warnings.filterwarnings("ignore")
from gridrun.train import train
r = train(json.loads(sys.argv[1]))
print("RESULT", json.dumps({"n": r["n_train"], "s": r["history"][1]["seconds"]}))
"""


def rate_processes(k: int, a) -> float:
    """K concurrent processes, one config each; the aggregate is the sum of their epoch-2 rates
    (they run at the same time: each was started before any finished its first epoch)."""
    threads = max(1, a.threads // k) if a.device == "cpu" else a.threads
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(dict(c, threads=threads))],
                              stdout=subprocess.PIPE, text=True, env=child_env()) for c in configs(k, a)]
    total = 0.0
    for p in procs:
        out, _ = p.communicate()
        line = next(l for l in out.splitlines() if l.startswith("RESULT"))
        r = json.loads(line[7:])
        total += r["n"] / r["s"]
    return total


def rate(v: str, k: int, a) -> float:
    return (rate_fused(k, a, v.split("-")[1]) if v.startswith("fused") else
            rate_sequential(k, a) if v == "sequential" else rate_processes(k, a))


def run(a, bench) -> None:
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    variants = a.variants.split(",")
    order = sorted(variants, key=lambda v: v != "sequential")  # the baseline first
    for k in [int(x) for x in a.ks.split(",")]:
        cfg = {"model": a.model, "K": k, "steps": a.steps, "batch": a.batch}
        base = None
        for v in order:
            if v == "processes" and k > a.max_processes:
                bench.row("images/s (epoch 2)", None, "images/s", variant=v, config=cfg,
                          note=f"skipped: K > --max-processes {a.max_processes}")
                continue
            t = time.perf_counter()
            r = rate(v, k, a)
            base = r if v == "sequential" else base
            seq = v != "sequential" and base is not None
            bench.row("images/s (epoch 2)", r, "images/s", variant=v, config=cfg, baseline="sequential" if seq
                      else None, baseline_value=base if seq else None, wall_s=time.perf_counter() - t)
