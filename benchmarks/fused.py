"""Fused trials against the alternatives, side by side in one run: images/s of K configs of one
net (K = 1, 2, 4, 8, 16, 32) trained

  fused-vmap   as one batched model (torch.func.vmap over stacked weights; grouped convs),
  fused-loop   as one group that steps its members one after another on the stacked weights,
  sequential   as K ordinary trials one after another (gridrun.train.train), and
  processes    as K ordinary trials in K concurrent processes (what fractional GPUs give).

Every variant trains the same K configs (seeds 0..K-1, lr spread over a decade) for two epochs
of `steps` batches; the second epoch is timed. The rate is K x images per epoch / seconds.

    GRIDRUN_DATA=../shared/data/mnist python benchmarks/fused.py [--device cuda] [--ks 1,2,4,8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridrun.fused import train_fused  # noqa: E402
from gridrun.train import train  # noqa: E402


def configs(k: int, a) -> list[dict]:
    return [dict(model=a.model, epochs=2, subset=a.steps * a.batch, batch_size=a.batch, val_size=1000,
                 optimizer="sgd", lr=0.01 * 10 ** (i / max(1, k - 1)), momentum=0.9, nesterov=True,
                 scheduler="onecycle", augment="rotate+affine", seed=i, device=a.device, threads=a.threads,
                 eval_batch_size=2048) for i in range(k)]


def rate_fused(k: int, a, strategy: str) -> float:
    res = train_fused([dict(c, fuse_strategy=strategy) for c in configs(k, a)])
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
sys.path.insert(0, {root!r})
from gridrun.train import train
r = train(json.loads(sys.argv[1]))
print("RESULT", json.dumps({{"n": r["n_train"], "s": r["history"][1]["seconds"]}}))
"""


def rate_processes(k: int, a) -> float:
    """K concurrent processes, one config each; the aggregate is the sum of their epoch-2 rates
    (they run at the same time: each was started before any finished its first epoch)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    threads = max(1, a.threads // k) if a.device == "cpu" else a.threads
    procs = [subprocess.Popen([sys.executable, "-c", CHILD.format(root=root), json.dumps(dict(c, threads=threads))],
                              stdout=subprocess.PIPE, text=True) for c in configs(k, a)]
    total = 0.0
    for p in procs:
        out, _ = p.communicate()
        line = next(l for l in out.splitlines() if l.startswith("RESULT"))
        r = json.loads(line[7:])
        total += r["n"] / r["s"]
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tinynet_7k")
    ap.add_argument("--ks", default="1,2,4,8,16,32")
    ap.add_argument("--steps", type=int, default=50, help="batches per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--variants", default="fused-vmap,fused-loop,sequential,processes")
    ap.add_argument("--max-processes", type=int, default=8, help="largest K run as concurrent processes")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = ap.parse_args()
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    dev = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"CPU, {a.threads} threads ({platform.processor() or platform.machine()})"
    print(f"device: {dev}; torch {torch.__version__}; model {a.model}; {a.steps} batches of {a.batch} per epoch, "
          f"the second of two epochs timed")
    variants = a.variants.split(",")
    rows = []
    for k in [int(x) for x in a.ks.split(",")]:
        row = {"K": k}
        for v in variants:
            if v == "processes" and k > a.max_processes:
                row[v] = None
                continue
            t = time.perf_counter()
            row[v] = (rate_fused(k, a, v.split("-")[1]) if v.startswith("fused") else
                      rate_sequential(k, a) if v == "sequential" else rate_processes(k, a))
            row[v + "_wall_s"] = round(time.perf_counter() - t, 1)
        base = row.get("sequential")
        line = f"K={k:>2}: " + "  ".join(f"{v} {row[v]:>9,.0f} img/s" if row[v] else f"{v} -" for v in variants)
        if base:
            line += "  | ÷ sequential: " + ", ".join(f"{v} {row[v] / base:.2f}x" for v in variants
                                                   if row[v] and v != "sequential")
        print(line, flush=True)
        rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "args": vars(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
