"""Training throughput: gridrun's trainer against the usual torchvision + DataLoader pipeline.

Both train the same net for the same steps, batch size and augmentation strength, in this one
process, on the same device and thread count; each runs two passes over the same images and
the second is timed (the first warms up allocators, kernels and, for (b), the workers).

  (a) gridrun: data on the device, one batched affine+jitter call per batch (gridrun.train).
  (b) usual:   torchvision.datasets.MNIST + RandomAffine/ColorJitter/ToTensor/Normalize per
               image in DataLoader workers, as in Ray Tune's own MNIST example.

    GRIDRUN_DATA=../shared/data/mnist python benchmarks/throughput.py [--steps 200] [--batch 128]
"""
from __future__ import annotations

import argparse
import contextlib
import json
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


def flops_per_image(model: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    net = create_model(model)
    with FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 1, 28, 28)).sum().backward()
    return fc.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tinynet_7k", help="one model, or several joined with ','")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 0], help="DataLoader workers to try for (b)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    root = _torchvision_root()
    rows = []
    try:
        for model in args.model.split(","):
            print(f"device {name}; torch {torch.__version__}; {args.threads} torch threads; model {model} "
                  f"({flops_per_image(model) / 1e6:.1f} MFLOP per image, forward+backward); "
                  f"{args.steps} steps of batch {args.batch}; affine+jitter augmentation", flush=True)
            ours = run_gridrun(model, args.steps, args.batch, args.device, args.threads)
            print(f"(a) gridrun trainer:                     {ours:9.0f} images/s", flush=True)
            usual = {}
            for w in args.workers:
                for fast in ([False, True] if args.device.startswith("cuda") else [False]):
                    key = f"{w} workers" + (", bf16 + channels_last" if fast else "")
                    usual[key] = run_usual(model, args.steps, args.batch, args.device, w, root, fast)
                    print(f"(b) torchvision + DataLoader({key}): {usual[key]:9.0f} images/s   ratio a/b = "
                          f"{ours / usual[key]:.1f}x", flush=True)
            best = max(usual, key=usual.get)
            print(f"gridrun vs the best usual pipeline ({best}): {ours / usual[best]:.1f}x", flush=True)
            rows.append({"model": model, "gridrun": ours, "usual": usual, "best_usual": best,
                         "ratio": ours / usual[best]})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
