"""A CPU stand-in for a CUDA graph's recording of the training step (engine.step.StepGraphs).

A CUDA graph records the kernels a step launched, with the addresses they read and wrote and
every Python value baked in, and replays exactly those: a step that reads anything but its
static buffers (a Python float learning rate, a host-side counter) trains on stale values when
replayed. `trace` does the same on a CPU: make_fx runs the step once in "real" mode and records
every aten op with the very tensors it touched (its closure's tensors are kept as constants, by
reference), baking every Python scalar; the replay runs those ops again. Random draws stay live:
a generator is recorded as an object whose state each replay advances, as a CUDA graph does with
the generators registered to it.
"""
from __future__ import annotations

import torch
from torch._guards import TracingContext, tracing
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx


def trace(step):
    """Run `step` once, traced; its replay (the recorder protocol of engine.step.StepGraphs). The
    trace holds the backward's ops as plain ops, so it replays without autograd, as a graph does."""
    # make_fx notes each op's output shape as a fake tensor, and without a tracing context it builds a
    # new FakeTensorMode for every one of them (proxy_tensor.extract_val): 70% of a trace's time. One
    # mode for the whole trace, found through the context, halves this file's run time; the ops
    # recorded and replayed are the same (real mode never runs the step under the fake mode).
    with tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True))):
        graph = make_fx(step, tracing_mode="real")()
    return torch.no_grad()(graph)


def keep_closure(step):
    """The stand-in this one replaced: run the step and keep the function itself as its
    "replay". It re-reads everything on every call, so no baked value can ever show."""
    step()
    return step
