"""Training steps replayed as CUDA graphs (the `cuda_graph` config field).

A tiny net's training step is a few hundred small kernels (gather, augmentation, forward,
backward, optimizer, weight average, metrics), each launched from Python: at batch 128 the GPU
waits on the CPU. Replaying the whole step as one recorded CUDA graph ran tinynet_7k's step 3.5x
and resnet20's 2.7x as fast on an H100 (reports/benchmarks.md, `benchmarks/step_speed.py`).

The trainer (train.TrainerGraphs) and fused groups (fused.FusedGraphs) write their step as a
function that reads and writes only long-lived tensors: the data on the device, the weights,
optimizer state, and small "static" tensors that hold this step's batch indices and
hyperparameters (refreshed before each replay, since a recording reads addresses, not values).
`StepGraphs` runs such a function eagerly for its first calls, records it once, then replays
it. The augmentation's random draws come from the trial's own CUDA generator, registered with
each recording so that every replay draws fresh numbers.

Off CUDA nothing is recorded: a config's `cuda_graph` is ignored there (the trial's _meta says
`cuda_graph: false`), unless `EAGER_STATIC_OFF_CUDA` is set, which the tests do to run the same
step functions eagerly on a CPU and compare them with the ordinary trainer.
"""
from __future__ import annotations

import sys

import torch

# Tests set this: the static-buffer step functions then run (eagerly) on a CPU too.
EAGER_STATIC_OFF_CUDA = False


def wanted(requested: bool, device: torch.device) -> bool:
    """Whether a trial that asks for CUDA graphs runs its steps as static-buffer functions."""
    return bool(requested) and (device.type == "cuda" or EAGER_STATIC_OFF_CUDA)


@torch.no_grad()
def sgd_foreach_(params, grads, bufs, lr: torch.Tensor, momentum: torch.Tensor, weight_decay: float,
                 nesterov: bool) -> None:
    """torch.optim.SGD's step for one parameter group (dampening 0, not maximize) with the
    learning rate and momentum as 0-d tensors, so a recording replays the values a scheduler
    sets each step (one-cycle moves both). The momentum buffers must exist (zeros before the
    first step give exactly SGD's first step, buf = grad). Equal to SGD up to float rounding:
    lr * d is a separate multiply here, a fused `alpha` there."""
    d = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else list(grads)
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, d)
    d = torch._foreach_add(d, torch._foreach_mul(bufs, momentum)) if nesterov else bufs
    torch._foreach_sub_(params, torch._foreach_mul(d, lr))


class StepGraphs:
    """Runs step functions that touch only long-lived tensors: each key (a variant of the step,
    e.g. augmented or clean) runs eagerly for its first `warmup` calls on a side stream, as
    torch.cuda.graph asks, is recorded on its next call and replayed from then on (the call that
    records also replays, so every call is one step). Without CUDA every call is eager."""

    def __init__(self, device: torch.device, generators=(), warmup: int = 3):
        self.device = device
        self.capture = device.type == "cuda"
        self.error: str | None = None  # why a recording failed; the steps then all run eagerly
        self.generators = [g for g in generators if g.device.type == "cuda"]
        self.warmup = warmup
        self.graphs: dict = {}
        self.calls: dict = {}
        self.keep: list = []  # tensors made before a recording that it reads: alive as long as it is
        self.stream = torch.cuda.Stream(device) if self.capture else None

    def __call__(self, key, step) -> None:
        if not self.capture:
            step()
            return
        graph = self.graphs.get(key)
        if graph is None:
            n = self.calls[key] = self.calls.get(key, 0) + 1
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            if n <= self.warmup:
                with torch.cuda.stream(self.stream):
                    step()
                current.wait_stream(self.stream)
                return
            try:
                graph = self._record(step)
            except Exception as e:  # an op that cannot be recorded: say so once, go on eagerly
                # (a recording executes nothing, so the weights and optimizer state are untouched)
                self.capture, self.graphs = False, {}
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                print(f"gridrun: recording the training step as a CUDA graph failed ({self.error}); "
                      f"this trial goes on without it", file=sys.stderr, flush=True)
                torch.cuda.synchronize(self.device)
                step()
                return
            self.graphs[key] = graph
        graph.replay()

    def _record(self, step) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        for gen in self.generators:
            graph.register_generator_state(gen)
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            step()
        from .models._layers import _IDX  # dropout's cached index tensors, read by the recording
        self.keep.append(dict(_IDX))
        return graph
