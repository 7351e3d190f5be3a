"""Fraction of the device's peak reached by a training step, and what channels_last, bf16
autocast, torch.compile (mode "reduce-overhead") and a whole-step CUDA graph each change, per net
and batch size.

A training step (forward, backward, SGD update) on a batch already on the device is timed
(steps/s after a warm-up), for each variant and batch size. FLOPs per image come
from torch.utils.flop_counter (forward + backward); the peak is measured here, as the bf16
rate of a large matrix product, unless --peak-tflops is given.

    python benchmarks/step_speed.py --device cuda --models tinynet_7k,resnet20
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridrun.models import create_model  # noqa: E402


def flops_per_image(model: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    net = create_model(model)
    with FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 1, 28, 28)).sum().backward()
    return fc.get_total_flops()


def measured_peak_tflops(device: str) -> float:
    if not device.startswith("cuda"):
        a = torch.randn(1024, 1024)
        t = time.perf_counter()
        for _ in range(10):
            a @ a
        return 10 * 2 * 1024**3 / (time.perf_counter() - t) / 1e12
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


VARIANTS = {  # name: (channels_last, bf16, how the step runs)
    "eager": (False, False, "eager"),
    "channels_last": (True, False, "eager"),
    "bf16": (False, True, "eager"),
    "channels_last+bf16": (True, True, "eager"),
    "cudnn-benchmark": (False, False, "cudnn-benchmark"),  # eager, cuDNN times its algorithms per shape
    "compile": (False, False, "compile"),        # torch.compile(net, mode="reduce-overhead")
    "cuda-graph": (False, False, "graph"),       # forward, backward and SGD update as one CUDA graph
}


def step_rate(model: str, device: str, batch: int, variant: str, steps: int) -> float:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = VARIANTS[variant][2] == "cudnn-benchmark"
    try:
        return _step_rate(model, device, batch, variant, steps)
    finally:
        torch.backends.cudnn.benchmark = before


def _step_rate(model: str, device: str, batch: int, variant: str, steps: int) -> float:
    channels_last, amp, how = VARIANTS[variant]
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    if how == "graph" and not cuda:
        raise RuntimeError("CUDA graphs need a CUDA device")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = create_model(model).to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 28, 28, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    autocast = (lambda: torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16)) if amp else \
        contextlib.nullcontext
    fwd = torch.compile(net, mode="reduce-overhead" if cuda else "default") if how == "compile" else net

    def step():
        if how == "compile" and cuda:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last one's graph outputs may go
        with autocast():
            loss = F.cross_entropy(fwd(x).float(), y)
        loss.backward()
        opt.step()
        # the captured graph needs the same grad tensors every replay; a compiled (reduce-overhead)
        # backward must not accumulate into grads that are its last run's graph outputs (the
        # 2026-11-23 H100 run failed so: pytorch/pytorch#169545), so it starts from None
        opt.zero_grad(set_to_none=how == "compile")

    if how == "graph":  # the whole-network capture of torch.cuda.graphs' documentation
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up (cuDNN choices, momentum buffers) off the default stream
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        step = graph.replay  # noqa: F811  (replays read x, y and write the weights in place)
    for _ in range(5):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="tinynet_7k,resnet20")
    ap.add_argument("--batch", default="128,512", help="batch sizes, joined with ','")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="from: " + ", ".join(VARIANTS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    peak = a.peak_tflops or measured_peak_tflops(a.device)
    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "CPU"
    print(f"device {name}; torch {torch.__version__}; peak {peak:.1f} TFLOP/s "
          f"({'given' if a.peak_tflops else 'measured: bf16 matrix product' if a.device != 'cpu' else 'measured: fp32 matmul'})")
    rows = []
    for model in a.models.split(","):
        fpi = flops_per_image(model)
        for batch, variant in itertools.product([int(b) for b in a.batch.split(",")], a.variants.split(",")):
            try:
                rate = step_rate(model, a.device, batch, variant, a.steps)
                err = ""
            except Exception as e:  # a switch that does not work here is a result too
                rate, err = 0.0, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            frac = rate * fpi / (peak * 1e12)
            rows.append({"model": model, "batch": batch, "variant": variant, "images_per_s": rate,
                         "mflop_per_image": fpi / 1e6, "fraction_of_peak": frac, "error": err})
            print(f"{model:<18} batch {batch:<5} {variant:<19} {rate:>11,.0f} img/s  {100 * frac:6.3f}% of peak"
                  + (f"  ({err})" if err else ""), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "peak_tflops": peak, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
