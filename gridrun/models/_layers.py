"""Layers shared by the model families."""
from __future__ import annotations

import torch
from torch import nn

_M32 = 0xFFFFFFFF
_IDX: dict = {}  # (numel, device) -> arange, reused across steps


def conv_bn(cin: int, cout: int, k=3, stride: int = 1, pad=None) -> nn.Sequential:
    """Conv (no bias: BN follows) -> BN -> ReLU, 'same' padding unless told."""
    if isinstance(k, int):
        k = (k, k)
    pad = tuple(x // 2 for x in k) if pad is None else pad
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def keep_mask(shape, seed: torch.Tensor, step: torch.Tensor, p: torch.Tensor, device) -> torch.Tensor:
    """Which elements survive dropout: a 32-bit integer hash of (element index, seed, step),
    compared with p. Every product stays below 2**63, so int64 never overflows. seed, step and
    p may carry leading member dims shaped to broadcast (K, 1, ...): the masks of K members."""
    n = 1
    for s in shape:
        n *= int(s)
    key = (n, str(device))
    if key not in _IDX:
        _IDX.clear() if len(_IDX) > 64 else None
        _IDX[key] = (torch.arange(n, device=device, dtype=torch.int64) * 0x9E3779B1) & _M32
    mix = (seed ^ ((step * 0x85EBCA77) & _M32)) & _M32
    h = (_IDX[key].view(shape) + mix) & _M32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x2C1B3C6D) & _M32
    h = h ^ (h >> 16)
    return h.to(torch.float32) * (1.0 / 4294967296.0) >= p


class Dropout(nn.Module):
    """Dropout whose rate and randomness live in buffers: the mask is a counter-based hash of
    (seed, step, element) instead of a draw from the global generator. So a model draws the
    same masks trained alone, fused with others under torch.func.vmap (where each member's
    rate, seed and step are its own slice of a stacked buffer), or resumed from a checkpoint
    (the trainer saves the steps with its state). `channelwise` drops whole channels
    (Dropout2d). A model keeps its Dropout layers at rate 0 too, so its structure and
    state_dict never depend on the rate; at rate 0 the layer is skipped (`active`)."""

    def __init__(self, p: float = 0.5, channelwise: bool = False):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.channelwise = channelwise
        self.active = p > 0
        # Non-persistent: model.pt holds weights and BN statistics only.
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)
        self.register_buffer("seed", torch.tensor(0, dtype=torch.int64), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.active:
            return x
        shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.channelwise else tuple(x.shape)
        keep = keep_mask(shape, self.seed, self.step, self.p, x.device)
        self.step.add_(1)
        return x * keep.to(x.dtype) / (1 - self.p).to(x.dtype)


def cached_indices() -> list[torch.Tensor]:
    """The index tensors the masks read (reused across steps): a CUDA graph that recorded a mask
    must keep them alive as long as it is replayed."""
    return list(_IDX.values())


def dropouts(model: nn.Module) -> list[Dropout]:
    return [m for m in model.modules() if isinstance(m, Dropout)]


def seed_dropout(model: nn.Module, seed: int) -> None:
    """Give every Dropout layer of a model its own seed, derived from the trial's seed."""
    for i, m in enumerate(dropouts(model)):
        m.seed.fill_(hash32(seed, i))


def set_dropout_rate(model: nn.Module, p: float, active: bool | None = None) -> None:
    for m in dropouts(model):
        m.p.fill_(float(p))
        m.active = p > 0 if active is None else active


def dropout_steps(model: nn.Module) -> list[int]:
    return [int(m.step) for m in dropouts(model)]


def load_dropout_steps(model: nn.Module, steps: list[int]) -> None:
    layers = dropouts(model)
    if len(layers) != len(steps):
        raise ValueError(f"{len(steps)} dropout steps saved for {len(layers)} dropout layers")
    for m, s in zip(layers, steps):
        m.step.fill_(int(s))


def hash32(*values: int) -> int:
    """A 32-bit mix of a few integers (splitmix-style), stable across runs and machines."""
    h = 0x243F6A88
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _M32
