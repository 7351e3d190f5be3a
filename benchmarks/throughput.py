"""Training throughput: gridrun's trainer against the usual torchvision + DataLoader pipeline.

Both train the same net for the same steps, batch size and augmentation strength, in this one
process, on the same device and thread count; each runs two passes over the same images and
the second is timed (the first warms up allocators, kernels and, for (b), the workers).

  (a) gridrun: data on the device, one batched affine+jitter call per batch (gridrun.train).
  (b) usual:   torchvision.datasets.MNIST + RandomAffine/ColorJitter/ToTensor/Normalize per
               image in DataLoader workers, as in Ray Tune's own MNIST example.

    GRIDRUN_DATA=../shared/data/mnist python -m benchmarks throughput [--steps 200] [--batch 128]
"""
from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gridrun.data import find_files
from gridrun.models import create_model
from gridrun.train import train

from . import flops_per_image

# One augmentation strength for both pipelines.
DEG, TRANSLATE, SCALE, SHEAR, BRIGHT, CONTRAST = 10.0, 0.1, 0.1, 5.0, 0.2, 0.2


def run_gridrun(model: str, steps: int, batch: int, device: str, threads: int) -> float:
    res = train({"model": model, "epochs": 2, "subset": steps * batch, "batch_size": batch, "val_size": 1000,
                 "augment": "affine+jitter", "device": device, "threads": threads, "optimizer": "adam", "lr": 1e-3,
                 "scheduler": "none", "weight_decay": 0.0, "nesterov": False, "label_smoothing": 0.0,
                 "aug": {"affine_deg": DEG, "translate": TRANSLATE, "scale": SCALE, "shear_deg": SHEAR,
                         "brightness": BRIGHT, "contrast": CONTRAST}})
    return res["history"][1]["images_per_s"]


def _torchvision_root() -> str:
    """torchvision's MNIST wants root/MNIST/raw/<raw files>: unpack ours there once."""
    root = Path(tempfile.mkdtemp(prefix="gridrun-bench-"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for p in find_files().values():
        dst = raw / p.name.removesuffix(".gz")
        if p.suffix == ".gz":
            dst.write_bytes(gzip.decompress(p.read_bytes()))
        else:
            shutil.copy(p, dst)
    return str(root)


def run_usual(model: str, steps: int, batch: int, device: str, workers: int, root: str, fast: bool = False) -> float:
    """(b); with fast=True on CUDA it also gets gridrun's bf16 autocast and channels_last, so the
    ratio is the data pipeline's alone."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomAffine(DEG, translate=(TRANSLATE, TRANSLATE), scale=(1 - SCALE, 1 + SCALE), shear=SHEAR),
        transforms.ColorJitter(brightness=BRIGHT, contrast=CONTRAST),
        transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = Subset(datasets.MNIST(root, train=True, download=False, transform=tf), range(steps * batch))
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=device.startswith("cuda"))
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    fmt = torch.channels_last if (fast and cuda) else torch.contiguous_format
    net = create_model(model).to(device).to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (fast and cuda) else contextlib.nullcontext
    rate = 0.0
    for epoch in range(2):
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True).contiguous(memory_format=fmt), y.to(device, non_blocking=True)
            with autocast():
                loss = F.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rate = n / (time.perf_counter() - t0)
    return rate


def add_args(ap) -> None:
    ap.add_argument("--model", default="tinynet_7k", help="one model, or several joined with ','")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 0], help="DataLoader workers to try for (b)")


def one_model(model: str, a, root: str, bench) -> None:
    """(b) in each of its forms, then (a) against the best of them."""
    cfg = {"model": model, "steps": a.steps, "batch": a.batch, "mflop_per_image": round(flops_per_image(model) / 1e6, 1),
           "augment": "affine+jitter"}
    usual = {}
    for w in a.workers:
        for fast in ([False, True] if a.device.startswith("cuda") else [False]):
            key = f"torchvision + DataLoader({w} workers" + (", bf16 + channels_last)" if fast else ")")
            t = time.perf_counter()
            usual[key] = run_usual(model, a.steps, a.batch, a.device, w, root, fast)
            bench.row("images/s (pass 2)", usual[key], "images/s", variant=key, config=cfg,
                      wall_s=time.perf_counter() - t)
    best = max(usual, key=usual.get)
    t = time.perf_counter()
    ours = run_gridrun(model, a.steps, a.batch, a.device, a.threads)
    bench.row("images/s (pass 2)", ours, "images/s", variant="gridrun trainer", config=cfg,
              baseline=f"best usual: {best}", baseline_value=usual[best], wall_s=time.perf_counter() - t)


def run(a, bench) -> None:
    torch.set_num_threads(a.threads)
    root = _torchvision_root()
    try:
        for model in a.model.split(","):
            one_model(model, a, root, bench)
    finally:
        shutil.rmtree(root, ignore_errors=True)
