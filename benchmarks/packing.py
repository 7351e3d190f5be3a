"""Packing N trials onto one GPU, side by side in one run: total images/s and trials finished per
GPU-hour for N = 1, 2, 4, 8, 16 trials of one tiny net launched through gridrun (Ray Tune)

  ray      as N Ray trials sharing the GPU by fractional resources (gpu: 1/N),
  fused    as fused groups of N (one Tune trial that trains the N configs as one model).

The N trials are the same config with N seeds; each runs `--epochs` epochs over `--subset`
training images. Rates count every trial's training images over the launch's wall time (Ray's
start excluded: one Ray serves all runs), so trial start-up and evaluation are paid as a user
pays them. With --mps the caller has started the CUDA MPS daemon (benchmarks/gpu/run.sh does).

    GRIDRUN_DATA=.device/mnist python benchmarks/packing.py --ns 1,2,4,8,16 --modes ray,fused
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--modes", default="ray,fused")
    ap.add_argument("--model", default="tinynet_7k")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--label", default="", help="a word for the rows (e.g. 'MPS')")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import gridrun.launch  # noqa: F401  (Ray's environment before ray is imported)
    import ray

    from gridrun.launch import launch

    ray.init(num_cpus=a.cpus, num_gpus=a.gpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    work = tempfile.mkdtemp(prefix="gridrun-pack-")
    rows = []
    for n in [int(x) for x in a.ns.split(",")]:
        for mode in a.modes.split(","):
            spec = {"name": f"pack_{mode}_{n}", "data": {"val_size": 2000, "subset": a.subset},
                    "base": {"model": a.model, "epochs": a.epochs, "batch_size": a.batch, "optimizer": "sgd",
                             "lr": 0.1, "nesterov": True, "scheduler": "onecycle", "augment": "rotate+affine"},
                    "seeds": n, "retries": 0,
                    "resources": {"cpu": max(1, a.cpus // n), "gpu": (1 / n if mode == "ray" else 1) if a.gpus else 0}}
            if mode == "fused":
                spec["fuse"] = n
            path = os.path.join(work, f"{spec['name']}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(spec, f)
            t0 = time.perf_counter()
            code = launch(path, storage=os.path.join(work, "runs"), out=lambda _: None)
            wall = time.perf_counter() - t0
            images = n * a.epochs * a.subset
            row = {"N": n, "mode": mode + (f" ({a.label})" if a.label else ""), "exit": code, "wall_s": round(wall, 1),
                   "images_per_s": round(images / wall), "trials_per_gpu_hour": round(n / wall * 3600 / max(1, a.gpus))}
            rows.append(row)
            print(f"N={n:>2} {row['mode']:<12} exit {code}  wall {wall:7.1f} s  {row['images_per_s']:>9,} img/s  "
                  f"{row['trials_per_gpu_hour']:>7,} trials/GPU-hour", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
