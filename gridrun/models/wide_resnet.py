"""Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, stages 16k/32k/64k wide.

wide_resnet14   the model-zoo study's "wide resnet-14" (khanrc/mnist wide_resnet.py): depth
                counted like its ResNets (6n+2, n = 2), widen factor 4 (stages 64/128/256), a
                64-wide stem conv -> BN -> ReLU, blocks [BN-ReLU] conv3x3 -> Dropout(0.3) ->
                BN-ReLU -> conv3x3 (the first block of the first stage skips its BN-ReLU: the stem
                already applied it), a 1x1 strided projection with bias at each downsampling, a
                final BN-ReLU, GAP, FC. 2,776,138 parameters.
wide_resnet     the paper's WRN-d-k (n = (d-4)/6 blocks per stage, a 16-wide stem), and
wrn_16_4        WRN-16-4: the paper's closest net to the study's, kept for comparison.
"""
from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import nn

from ._layers import Dropout
from ._registry import register_model
from .preact_resnet import PreActBlock
from .resnet import ResNet


class WideResNet(ResNet):
    def __init__(self, depth: int = 16, widen: int = 4, dropout: float = 0.0, in_channels: int = 1,
                 num_classes: int = 10):
        n, rem = divmod(depth - 4, 6)
        if rem or not 1 <= n <= 16:  # bounds: a spec-time build on `meta` stays cheap, a trial fits a device
            raise ValueError(f"WRN depth must be 6n+4 with n in 1..16 (10, 16, 22, 28, ... 100), got {depth}")
        if not 1 <= widen <= 16:
            raise ValueError(f"WRN widen must be 1..16 (stages 16k, 32k, 64k wide), got {widen}")
        super().__init__(widths=(16 * widen, 32 * widen, 64 * widen), block=partial(PreActBlock, dropout=dropout),
                         preact=True, n=n, stem_width=16, in_channels=in_channels, num_classes=num_classes)


class StudyWideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float, first: bool):
        super().__init__()
        self.b1 = nn.Identity() if first else nn.BatchNorm2d(cin)
        self.first = first
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.drop = Dropout(dropout)
        self.b2 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = x if self.first else F.relu(self.b1(x))
        out = self.c2(F.relu(self.b2(self.drop(self.c1(out)))))
        return out + (self.short(x) if self.short is not None else x)


class StudyWideResNet(nn.Module):
    def __init__(self, n: int = 2, widen: int = 4, dropout: float = 0.3):
        super().__init__()
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(StudyWideBlock(c, w, 2 if (i > 0 and j == 0) else 1, dropout, first=(i == 0 and j == 0)))
                c = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(c, 10))

    def forward(self, x):  # (N, 1, 28, 28) -> 28 -> 14 -> 7 -> (N, 10)
        return self.head(self.layers(self.stem(x)))


@register_model
def wide_resnet14(dropout: float = 0.3) -> nn.Module:
    """The study's wide resnet-14 (n = 2, k = 4, dropout 0.3)."""
    return StudyWideResNet(2, 4, dropout)


@register_model
def wide_resnet(depth: int = 16, widen: int = 4, dropout: float = 0.0, in_channels: int = 1,
                num_classes: int = 10) -> nn.Module:
    return WideResNet(depth, widen, dropout, in_channels, num_classes)


@register_model
def wrn_16_4(dropout: float = 0.0, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return WideResNet(16, 4, dropout, in_channels, num_classes)
