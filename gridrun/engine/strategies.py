"""How the K members of a group are computed. Every strategy reads the same stacked weights
((K, ...) tensors, the one copy the optimizer, weight average and state file see) and returns
(K, B, 10) logits, each member's from its own slice:

  plain      K = 1: the member's own model over its own model-shaped tensors, of which the
             stacked (1, ...) ones are views; in channels_last and compiled where that pays (a
             single trial's forward and backward are its plain module's ops, in the same layout)
  loop       the members one after another, functional_call on their own slices
  vmap       one vmap(functional_call): each conv becomes a grouped conv
  blockdiag  each conv of the K members as ONE dense conv over K*C channels whose weight is
             block-diagonal (the off-diagonal blocks are zeros by construction: a mask on the
             weight, so their gradient is zero too), BatchNorm as one native batch_norm over K*C
             channels, linear as one baddbmm; K times the FLOPs of the grouped form, at dense widths

`auto` keeps plain for K = 1, takes loop on a CPU (grouped convs are slower there than K plain
ones, reports/benchmarks.md) and, on CUDA, times a few forward+backward passes of each and
keeps the fastest (only the device can say: the timings go into config.json `_meta`).
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..config import ConfigError
from ..models._layers import Dropout, keep_mask
from .loss import cross_entropy

STACKED = ("loop", "vmap", "blockdiag")


class Strategy:
    """The forward of K members over stacked weights; `leaves` are what autograd differentiates:
    the stacked (K, ...) parameters, which the optimizer updates (plain: the model-shaped tensors
    the stacked ones are views of; `stacked` gives their gradients the (K, ...) shape)."""

    name = "?"

    def __init__(self, models: list[nn.Module]):
        self.k = len(models)
        self.params, self.buffers = stack_module_state(models)
        self.leaves = list(self.params.values())
        self.module = copy.deepcopy(models[0]).to("meta")  # the architecture; its weights come stacked

    def forward(self, x: torch.Tensor, weights: tuple | None = None, shared: bool = False) -> torch.Tensor:
        """(K, B, 10) logits; x is (K, B, ...) (each member its own batch) or (B, ...) with
        `shared` (the same images); `weights` (params, buffers) default to the live ones."""
        raise NotImplementedError

    def stacked(self, grads: tuple) -> list[torch.Tensor]:
        """The leaves' gradients as (K, ...) tensors, in the order of `params`."""
        return list(grads)

    @torch.no_grad()
    def select(self, idx: torch.Tensor) -> "Strategy":
        """The same strategy over the members `idx` only, on copies of their slices: a retired
        member leaves the computation (its slices are no longer computed, stepped or stored)."""
        new = copy.copy(self)
        new.k = len(idx)
        new.params = {n: t.detach()[idx].clone().requires_grad_(t.requires_grad) for n, t in self.params.items()}
        new.buffers = {n: t[idx].clone() for n, t in self.buffers.items()}
        new.leaves = list(new.params.values())
        return new


class Loop(Strategy):
    name = "loop"

    def forward(self, x, weights=None, shared=False):
        p, b = weights or (self.params, self.buffers)
        return torch.stack([functional_call(self.module, ({n: t[k] for n, t in p.items()},
                                                          {n: t[k] for n, t in b.items()}), (x if shared else x[k],))
                            for k in range(self.k)]).float()


class Plain(Loop):
    """One member computed as its own model is: its model-shaped tensors are the leaves autograd
    differentiates and the forward reads, and the stacked (1, ...) tensors that the optimizer,
    weight average and state see are views of them, so a step slices nothing (indexing [0] added
    a select per tensor to the forward and a select_backward per parameter to the backward: 213
    ops a step of tinynet_7k against the module's 140). In `fmt` (channels_last on CUDA for a wide
    net), compiled when asked."""

    name = "plain"

    def __init__(self, models: list[nn.Module], compiled: bool = False, fmt=torch.contiguous_format):
        super().__init__(models)
        self.fmt, self.call = fmt, torch.compile(_call) if compiled else _call
        self._own()

    def _own(self) -> None:
        """Model-shaped copies of the (1, ...) tensors (4-d ones in `fmt`), and the stacked names as
        views of them (made with grad mode on: BN updates its buffers in place during the forward,
        and a view made under no_grad may not see its base changed with grad mode on)."""
        def own(t):
            with torch.no_grad():
                return t[0].clone(memory_format=self.fmt if t.dim() == 5 else torch.contiguous_format)
        self.own = {n: own(t).requires_grad_(t.requires_grad) for n, t in self.params.items()}
        self.own_buffers = {n: own(t) for n, t in self.buffers.items()}
        self.params = {n: t.unsqueeze(0) for n, t in self.own.items()}
        self.buffers = {n: t.unsqueeze(0) for n, t in self.own_buffers.items()}
        self.leaves = list(self.own.values())

    def stacked(self, grads):
        return [g.unsqueeze(0) for g in grads]

    def select(self, idx):
        new = copy.copy(self)
        new.params, new.buffers = self.params, self.buffers  # K = 1: only [0] can be kept
        new._own()
        return new

    def forward(self, x, weights=None, shared=False):
        x = (x if shared else x[0]).contiguous(memory_format=self.fmt)
        if weights is None:
            p, b = self.own, self.own_buffers
        else:  # another set of stacked weights (the weight average's)
            p, b = ({n: t[0] for n, t in w.items()} for w in weights)
        return self.call(self.module, p, b, x).float().unsqueeze(0)


def _call(module: nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    return functional_call(module, (params, buffers), (x,))


class Vmap(Strategy):
    name = "vmap"

    def forward(self, x, weights=None, shared=False):
        def f(p, b, xb):
            return functional_call(self.module, (p, b), (xb,))
        return vmap(f, in_dims=(0, 0, None if shared else 0))(*(weights or (self.params, self.buffers)), x).float()


class _Finite(torch.autograd.Function):
    """Non-finite values to finite ones, both ways: around a dense conv, a diverged member's
    NaNs meet the zero off-diagonal blocks as finite numbers, its activations on the way in and
    its gradients on the way back (0 * NaN would be NaN in the other members)."""

    @staticmethod
    def forward(ctx, x):
        return torch.nan_to_num(x)

    @staticmethod
    def backward(ctx, g):
        return torch.nan_to_num(g)


class BlockConv(nn.Module):
    """K convs as one: a dense conv over K*C channels with a block-diagonal weight (a grouped
    conv of K*groups groups when the conv is grouped already)."""

    def __init__(self, conv: nn.Conv2d, k: int):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ConfigError(f"fuse_strategy blockdiag: a conv with padding_mode={conv.padding_mode!r}: use vmap or loop")
        self.weight, self.bias, self.groups = conv.weight, conv.bias, conv.groups
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        eye = torch.eye(k, dtype=torch.bool, device=conv.weight.device)
        self.register_buffer("block", eye.view(k, 1, k, 1, 1, 1), persistent=False)

    def forward(self, x):
        w = self.weight                                          # (K, Co, Ci / groups, kh, kw)
        k, co, ci = w.shape[:3]
        if self.groups == 1:
            w, groups = torch.where(self.block, w.unsqueeze(2), 0).reshape(k * co, k * ci, *w.shape[3:]), 1
        else:
            w, groups = w.reshape(k * co, ci, *w.shape[3:]), k * self.groups
        b = None if self.bias is None else self.bias.reshape(-1)
        return _Finite.apply(F.conv2d(_Finite.apply(x), w, b, self.stride, self.padding, self.dilation, groups))


class BlockLinear(nn.Module):
    """K linear layers as one baddbmm over (K, B, in)."""

    def __init__(self, linear: nn.Linear, k: int):
        super().__init__()
        self.weight, self.bias, self.k = linear.weight, linear.bias, k

    def forward(self, x):
        xk = x.view(x.shape[0], self.k, -1).transpose(0, 1)     # (K, B, in)
        wt = self.weight.transpose(1, 2)                          # (K, in, out)
        out = torch.bmm(xk, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xk, wt)
        return out.transpose(0, 1).reshape(x.shape[0], -1)


class BlockBN(nn.modules.batchnorm._BatchNorm):
    """K BatchNorms as one native batch_norm over K*C channels (the stacked (K, C) statistics
    seen as K*C: updated in place through the view)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, k: int):
        nn.Module.__init__(self)
        if bn.momentum is None or not bn.track_running_stats:
            raise ConfigError("fuse_strategy blockdiag: a BatchNorm without running statistics: use vmap or loop")
        self.num_features, self.eps, self.momentum = bn.num_features * k, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, True
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        flat = [None if t is None else t.reshape(-1) for t in (self.running_mean, self.running_var, self.weight,
                                                                self.bias)]
        return F.batch_norm(x, *flat, self.training, self.momentum, self.eps)


class BlockDropout(nn.Module):
    """K members' counter-based dropout masks at once, each member's exactly as it draws alone."""

    def __init__(self, d: Dropout, k: int):
        super().__init__()
        self.k, self.channelwise, self.active = k, d.channelwise, d.active
        for name in ("p", "seed", "step"):
            self.register_buffer(name, getattr(d, name), persistent=False)

    def forward(self, x):
        if not self.training or not self.active:
            return x
        b, rest = x.shape[0], x.shape[2:]
        xv = x.view(b, self.k, -1, *rest)                                         # (B, K, C, ...)
        alone = (b, xv.shape[2], *([1] * len(rest))) if self.channelwise else (b, *xv.shape[2:])
        col = (self.k, *[1] * len(alone))
        keep = keep_mask(alone, self.seed.view(col), self.step.view(col), self.p.view(col), x.device)
        self.step.add_(1)
        scale = (1 - self.p).view(1, self.k, *[1] * (xv.dim() - 2)).to(x.dtype)
        return (xv * keep.transpose(0, 1).to(x.dtype) / scale).view(x.shape)


BLOCKS = ((nn.Conv2d, BlockConv), (nn.Linear, BlockLinear), (nn.modules.batchnorm._BatchNorm, BlockBN),
          (Dropout, BlockDropout))


def _blockify(module: nn.Module, k: int) -> None:
    for name, child in module.named_children():
        block = next((b for t, b in BLOCKS if isinstance(child, t)), None)
        if block is not None:
            setattr(module, name, block(child, k))
        elif any(True for _ in child.parameters(recurse=False)):
            raise ConfigError(f"fuse_strategy blockdiag cannot compute {type(child).__name__} layers: use vmap or loop")
        else:
            _blockify(child, k)


class BlockDiag(Strategy):
    name = "blockdiag"

    def __init__(self, models: list[nn.Module]):
        super().__init__(models)
        self.arch = copy.deepcopy(models[0])  # the member's own layers: select() blockifies them anew
        self.module = copy.deepcopy(self.arch)
        _blockify(self.module, self.k)

    def select(self, idx):
        new = super().select(idx)
        new.module = copy.deepcopy(self.arch)  # the blocks are K-wide: rebuilt for the smaller group
        _blockify(new.module, new.k)
        new.module.train(self.module.training)
        return new

    def forward(self, x, weights=None, shared=False):
        if shared:                                               # (B, C, H, W) -> (B, K*C, H, W)
            x = x.unsqueeze(1).expand(x.shape[0], self.k, *x.shape[1:])
        else:                                                    # (K, B, C, H, W) -> (B, K*C, H, W)
            x = x.transpose(0, 1)
        x = x.reshape(x.shape[0], -1, *x.shape[3:])
        out = functional_call(self.module, weights or (self.params, self.buffers), (x,))
        return out.view(out.shape[0], self.k, -1).transpose(0, 1).float()


@torch.no_grad()
def check_same(s: Strategy, ref: Strategy, x: torch.Tensor) -> None:
    """A blockdiag group must compute what its members compute one by one (a model whose
    forward mixes channels across members, such as a concatenation, cannot)."""
    s.module.eval(), ref.module.eval()
    a, b = s.forward(x, shared=True), ref.forward(x, shared=True)
    s.module.train(), ref.module.train()
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
        raise ConfigError(f"fuse_strategy {s.name} does not compute this model's members apart "
                          f"(max difference {float((a - b).abs().max()):.3g} from loop): use vmap or loop")


def make(name: str, models: list[nn.Module], **plain) -> Strategy:
    """The strategy `name` over these members (models built as each would be alone); `plain`:
    Plain's compile flag and memory format."""
    if name == "plain":
        return Plain(models, **plain)
    return {"loop": Loop, "vmap": Vmap, "blockdiag": BlockDiag}[name](models)


def time_strategies(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> dict:
    """Seconds per forward+backward of each stacked strategy on copies of the members' weights
    (the group's own are untouched); one untimed pass first."""
    out, smoothing = {}, torch.zeros(len(models), device=x.device)  # the training step's loss
    for name in STACKED:
        try:
            s = make(name, [copy.deepcopy(m) for m in models])
        except ConfigError:
            continue
        for i in range(steps + 1):
            if i == 1:
                _sync(x.device)
                t0 = time.perf_counter()
            torch.autograd.grad(cross_entropy(s.forward(x), y, smoothing).sum(), s.leaves)
        _sync(x.device)
        out[name] = round((time.perf_counter() - t0) / steps, 6)
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
