"""Packing N trials onto one GPU through gridrun launch: N fractional Ray trials vs fused groups of N.

Total images/s and trials finished per GPU-hour for N = 1, 2, 4, 8, 16 trials of one tiny net
launched through gridrun (Ray Tune), side by side in one run,

  ray      as N Ray trials sharing the GPU by fractional resources (gpu: 1/N; the baseline),
  fused    as fused groups of N (one Tune trial that trains the N configs as one model).

The N trials are the same config with N seeds; each runs `--epochs` epochs over `--subset`
training images. Rates count every trial's training images over the launch's wall time (Ray's
start excluded: one Ray serves all runs), so trial start-up and evaluation are paid as a user
pays them. For rows labelled MPS (--label MPS) the caller has started the CUDA MPS daemon
(tools/gpu/run.sh does).

    GRIDRUN_DATA=.device/mnist python -m benchmarks packing --ns 1,2,4,8,16 --modes ray,fused
"""
from __future__ import annotations

import os
import tempfile
import time

import yaml


def add_args(ap) -> None:
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--modes", default="ray,fused")
    ap.add_argument("--model", default="tinynet_7k")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpus", type=int, default=None, help="GPUs Ray may use (default: 1 on cuda, 0 on cpu)")
    ap.add_argument("--label", default="", help="a word for the rows (e.g. 'MPS')")


def spec_file(work: str, mode: str, n: int, a) -> str:
    """The grid of N seeds of one config, as N fractional trials or one fused group."""
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
    return path


def run(a, bench) -> None:
    import gridrun.launch  # noqa: F401  (Ray's environment before ray is imported)
    import ray

    from gridrun.launch import launch

    a.gpus = (1 if a.device.startswith("cuda") else 0) if a.gpus is None else a.gpus
    ray.init(num_cpus=a.cpus, num_gpus=a.gpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    work = tempfile.mkdtemp(prefix="gridrun-pack-")
    try:
        for n in [int(x) for x in a.ns.split(",")]:
            base = None
            for mode in a.modes.split(","):
                t0 = time.perf_counter()
                code = launch(spec_file(work, mode, n, a), storage=os.path.join(work, "runs"), out=lambda _: None)
                wall = time.perf_counter() - t0
                cfg = {"N": n, "model": a.model, "epochs": a.epochs, "subset": a.subset, "gpus": a.gpus}
                variant, rate = mode + (f" ({a.label})" if a.label else ""), n * a.epochs * a.subset / wall
                rel = base is not None and mode != "ray"
                base = rate if mode == "ray" else base
                bench.row("images/s (launch wall)", rate, "images/s", variant=variant, config=cfg, wall_s=wall,
                          baseline="ray" if rel else None, baseline_value=base if rel else None,
                          note=None if code == 0 else f"launch exit {code}")
                bench.row("trials per GPU-hour", n / wall * 3600 / max(1, a.gpus), "trials/h", variant=variant,
                          config=cfg, wall_s=wall)
    finally:
        ray.shutdown()
