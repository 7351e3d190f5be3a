"""The training step of a group, written once over static buffers, and the epoch of steps.

A tiny net's step is a few hundred small kernels (gather, augmentation, forward, backward,
optimizer, weight average, metrics), each launched from Python: at batch 128 the GPU waits on
the CPU. Replaying the whole step as one recorded CUDA graph ran tinynet_7k's step 3.5x and
resnet20's 2.7x as fast on an H100 (reports/benchmarks.md, `python -m benchmarks step_speed`).

So the step reads and writes only long-lived tensors: the data on the device, the stacked
weights, optimizer state and weight average, and small static tensors refreshed before each
step (the members' batch indices, the optimizer's hyperparameter rows, alive flags). Eager runs
call it as it is; `cuda_graph: true` on CUDA records it once per variant (which members train
on clean images) and replays it; the epoch's last, shorter batch always runs eagerly. A
recording reads tensors by address and bakes every Python value the step read: tests check the
step against a CPU stand-in that records the same way (tests/standin.py, make_fx). The step
itself reads top to bottom: batch, forward under autocast, the loss (loss.py), the gradient,
each member's own clip (grad_clip), the update, the weight average.
"""
from __future__ import annotations

import math
import sys
import time

import torch

from ..augment import Augment, Draws
from ..models._layers import cached_indices
from .loss import cross_entropy


class StepGraphs:
    """Runs a step function by key: eagerly for its first `warmup` calls, then recorded once by
    `recorder` and replayed from then on. A recorder is a callable that runs the step once,
    recorded, and returns its replay (`CudaGraphs` on CUDA; tests pass a CPU stand-in that
    records as a CUDA graph does: tests/standin.py); with an optional `warm(step)` for the
    warm-up calls. None: every call runs eagerly."""

    def __init__(self, device: torch.device, recorder=None, warmup: int = 3):
        self.device, self.recorder, self.warmup = device, recorder, warmup
        self.error: str | None = None  # why a recording failed; the steps then all run eagerly
        self.graphs: dict = {}
        self.calls: dict = {}

    def __call__(self, key, step) -> None:
        if self.recorder is None:
            step()
            return
        replay = self.graphs.get(key)
        if replay is not None:
            replay()
            return
        n = self.calls[key] = self.calls.get(key, 0) + 1
        if n <= self.warmup:
            getattr(self.recorder, "warm", _call)(step)
            return
        try:
            self.graphs[key] = self.recorder(step)
        except Exception as e:  # an op that cannot be recorded: say so once, go on eagerly
            # (a CUDA recording executes nothing, so the weights and optimizer state are untouched)
            self.recorder, self.graphs = None, {}
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"gridrun: recording the training step as a CUDA graph failed ({self.error}); "
                  f"this trial goes on without it", file=sys.stderr, flush=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            step()


def _call(step) -> None:
    step()


class CudaGraphs:
    """The recorder on CUDA: warm-up calls on a side stream (as torch.cuda.graph asks), then the
    step captured as a CUDA graph, replayed at once (the call that records is a step too)."""

    def __init__(self, device: torch.device, generators=()):
        self.device = device
        self.generators = [g for g in generators if g.device.type == "cuda"]
        self.stream = torch.cuda.Stream(device)
        self.keep: list = []  # tensors made before a recording that it reads: alive as long as it is

    def warm(self, step) -> None:
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            step()
        current.wait_stream(self.stream)

    def __call__(self, step):
        graph = torch.cuda.CUDAGraph()
        for gen in self.generators:
            graph.register_generator_state(gen)
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            step()
        self.keep.append(cached_indices())  # dropout's index tensors, read by the recording
        graph.replay()
        return graph.replay


@torch.no_grad()
def clip_per_member(grads: list[torch.Tensor], max_norm: torch.Tensor) -> list[torch.Tensor]:
    """Each member's gradient scaled to a norm of at most its max_norm ((K,); inf: no clip), as
    torch.nn.utils.clip_grad_norm_ would scale it alone: one member's norm never scales another's
    (clip_grad_norm_ over the stacked tensors would take one norm across the members)."""
    norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in grads]).norm(dim=0)  # (K,); a scalar's is (K,)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return [g * coef.view(-1, *[1] * (g.dim() - 1)) for g in grads]


def augmented(g, idx: torch.Tensor, clean: tuple) -> torch.Tensor:
    """(K, B, 1, 28, 28): each member's batch, drawn and augmented from its own generator (left
    as is for a member whose `clean` is set); the warps of members whose draws have the same
    parts run as one grid_sample."""
    s = g.splits
    x = s.train_x[idx]                                                 # (K, B, 1, H, W)
    draws = [None if c else m.aug.draw(idx.shape[1], m.dgen, s.train_x.device, tuple(x.shape[-2:]))
             for m, c in zip(g.members, clean)]
    if all(d is None or d.key == (False, False, False) for d in draws):  # nothing to warp: no per-member ops
        return s.normalize(x.flatten(0, 1)).view(x.shape)
    if all(d is not None for d in draws) and len({d.key for d in draws}) == 1:
        # the usual case (every single trial; a group that warps alike): one warp over the whole
        # (K*B) batch, with no per-member stacking copies
        return s.normalize(Augment.apply(x.flatten(0, 1), Draws.cat(draws))).view(x.shape)
    out = [x[k] if d is None else None for k, d in enumerate(draws)]
    for key in {d.key for d in draws if d is not None}:
        ks = [k for k, d in enumerate(draws) if d is not None and d.key == key]
        if key == (False, False, False):
            for k in ks:
                out[k] = x[k]
            continue
        # members picked by stacking views, not x[ks]: a list index is a host-to-device copy,
        # which a CUDA graph cannot record
        joined = Augment.apply(torch.stack([x[k] for k in ks]).flatten(0, 1), Draws.cat([draws[k] for k in ks]))
        for j, k in enumerate(ks):
            out[k] = joined[j * x.shape[1]:(j + 1) * x.shape[1]]
    return s.normalize(torch.stack(out).flatten(0, 1)).view(x.shape)


class Trainer:
    """A group's epochs of steps: `epoch` refreshes the static buffers and runs `step`."""

    def __init__(self, g, recorder=None):
        dev, k = g.device, g.k
        self.g = g
        self.idx = torch.zeros(k, g.cfgs[0].batch_size, dtype=torch.long, device=dev)
        self.alive = torch.ones(k, dtype=torch.bool, device=dev)  # a retired member leaves the group (keep_members)
        self.ls = torch.tensor([m.cfg.label_smoothing for m in g.members], device=dev)
        clips = [m.cfg.grad_clip for m in g.members]
        self.clip = torch.tensor([c or math.inf for c in clips], device=dev) if any(clips) else None
        self.loss_sum = torch.zeros(k, device=dev)
        self.correct = torch.zeros(k, device=dev, dtype=torch.long)
        self.graphs = StepGraphs(dev, recorder)
        ema = list(g.ema.items()) if g.ema is not None else []
        live = {**g.params, **g.buffers}
        self.ema_floats = [(e, live[n]) for n, e in ema if e.dtype.is_floating_point]
        self.ema_others = [(e, live[n]) for n, e in ema if not e.dtype.is_floating_point]

    def step(self, idx: torch.Tensor, clean: tuple) -> None:
        """Every member's step: its batch, forward, loss, gradient (none for a member whose loss is
        not finite), its own gradient clip, the update, the weight average, the running metrics."""
        g = self.g
        x, y = augmented(g, idx, clean), g.splits.train_y[idx]          # (K, B, ...), (K, B)
        with g.autocast():
            out = g.strategy.forward(x)                                  # (K, B, classes), float32
        loss = cross_entropy(out, y, self.ls)                            # (K,)
        live = torch.where(self.alive & torch.isfinite(loss), loss, torch.zeros_like(loss)).sum()
        grads = g.strategy.stacked(torch.autograd.grad(live, g.strategy.leaves, materialize_grads=True))
        if self.clip is not None:
            grads = clip_per_member(grads, self.clip)
        g.opt.step(grads)
        if self.ema_floats:
            self._update_ema()
        self.loss_sum += loss.detach() * y.shape[1]
        self.correct += (out.argmax(-1) == y).sum(1)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Exponential moving average of the weights and buffers (ema is shared by a group)."""
        torch._foreach_lerp_([e for e, _ in self.ema_floats], [t for _, t in self.ema_floats], 1 - self.g.cfgs[0].ema)
        for e, t in self.ema_others:
            e.copy_(t)

    def epoch(self, epoch: int, clean: tuple) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Epoch `epoch` (1-based): one pass over the training split for every member ((K,) losses,
        (K,) accuracies, seconds); `clean` says which members skip augmentation this epoch."""
        g = self.g
        g.strategy.module.train()
        t0 = time.perf_counter()
        self.loss_sum.zero_(), self.correct.zero_()
        per = [g.splits.index_batches(m.cfg.batch_size, m.dgen) for m in g.members]
        for idx in zip(*per):
            g.opt.refresh(g.hyperparameters(epoch - 1), [m.alive for m in g.members])
            idx = torch.stack(idx)
            if idx.shape == self.idx.shape:
                self.idx.copy_(idx)
                self.graphs(clean, lambda: self.step(self.idx, clean))
            else:
                self.step(idx, clean)
        n = len(g.splits.train_y)
        losses, accs = (self.loss_sum / n).cpu(), (self.correct.double() / n).cpu()
        if self.graphs.error:  # the members' summary.json say what ran
            g.meta.update(cuda_graph=False, cuda_graph_error=self.graphs.error)
        return losses, accs, time.perf_counter() - t0
