"""Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, stages 16k/32k/64k wide.

WRN-d-k has n = (d - 4) / 6 blocks per stage (the paper counts the stem, the classifier and
the projection shortcuts). The study's "wide resnet-14" counts like its ResNets (6n + 2), so
n = 2: the same net as the paper's WRN-16-k; `wide_resnet14` is that net at k = 4.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from ._registry import register_model
from .preact_resnet import PreActBlock
from .resnet import ResNet


class WideResNet(ResNet):
    def __init__(self, depth: int = 16, widen: int = 4, dropout: float = 0.0):
        n, rem = divmod(depth - 4, 6)
        if rem or n < 1:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        super().__init__(widths=(16 * widen, 32 * widen, 64 * widen), block=partial(PreActBlock, dropout=dropout),
                         preact=True, n=n, stem_width=16)


@register_model
def wide_resnet(depth: int = 16, widen: int = 4, dropout: float = 0.0) -> nn.Module:
    return WideResNet(depth, widen, dropout)


@register_model
def wrn_16_4(dropout: float = 0.0) -> nn.Module:
    return WideResNet(16, 4, dropout)


@register_model
def wide_resnet14(dropout: float = 0.0) -> nn.Module:
    """The study's 'wide resnet-14': two blocks per stage, widen factor 4 (= WRN-16-4)."""
    return WideResNet(16, 4, dropout)
