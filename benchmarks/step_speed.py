"""A bare training step against eager: channels_last, bf16, cudnn.benchmark, torch.compile, a CUDA graph; % of peak.

The fraction of the device's peak reached by a training step, and what channels_last, bf16
autocast, torch.compile (mode "reduce-overhead") and a whole-step CUDA graph each change, per net
and batch size.

A training step (forward, backward, SGD update) on a batch already on the device is timed
(steps/s after a warm-up), for each variant and batch size. FLOPs per image come
from torch.utils.flop_counter (forward + backward); the peak is measured here, as the bf16
rate of a large matrix product, unless --peak-tflops is given.

    python -m benchmarks step_speed --device cuda --models tinynet_7k,resnet20
"""
from __future__ import annotations

import contextlib
import itertools
import time

import torch
import torch.nn.functional as F

from gridrun.models import create_model

from . import flops_per_image


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


def add_args(ap) -> None:
    ap.add_argument("--models", default="tinynet_7k,resnet20")
    ap.add_argument("--batch", default="128,512", help="batch sizes, joined with ','")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="from: " + ", ".join(VARIANTS))


def run(a, bench) -> None:
    peak = a.peak_tflops or measured_peak_tflops(a.device)
    how = "given" if a.peak_tflops else "measured: bf16 matrix product" if a.device != "cpu" else "measured: fp32 matmul"
    for model in a.models.split(","):
        fpi = flops_per_image(model)
        base = {}
        for batch, variant in itertools.product([int(b) for b in a.batch.split(",")], a.variants.split(",")):
            t = time.perf_counter()
            try:
                rate, err = step_rate(model, a.device, batch, variant, a.steps), None
            except Exception as e:  # a switch that does not work here is a result too
                rate, err = None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            cfg = {"model": model, "batch": batch, "mflop_per_image": round(fpi / 1e6, 1),
                   "peak_tflops": round(peak, 2), "peak": how}
            if variant == "eager":
                base[batch] = rate
            rel = variant != "eager" and base.get(batch)
            bench.row("images/s", rate, "images/s", variant=variant, config=cfg, wall_s=time.perf_counter() - t,
                      baseline="eager" if rel else None, baseline_value=base[batch] if rel else None, note=err)
            if rate:
                bench.row("fraction of peak", rate * fpi / (peak * 1e12), "fraction", variant=variant, config=cfg)
