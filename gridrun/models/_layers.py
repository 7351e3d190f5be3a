"""Layers shared by the model families."""
from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, k=3, stride: int = 1, pad=None) -> nn.Sequential:
    """Conv (no bias: BN follows) -> BN -> ReLU, 'same' padding unless told."""
    if isinstance(k, int):
        k = (k, k)
    pad = tuple(x // 2 for x in k) if pad is None else pad
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
