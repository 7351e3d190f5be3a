"""VGG-like nets for 28x28.

vgg_allconv    the model-zoo study's "VGG + all conv" (khanrc/mnist vggnet.py, build_vggnet):
               conv -> BN -> ReLU -> Dropout(0.3) blocks without bias; stages 64, 64 | 128, 128 |
               256, 256, 1x1 256, each ending in a 5x5 stride-2 conv that doubles the width
               (28 -> 14 -> 7 -> 4); flatten 4x4x512 -> linear to 10. 5,964,362 parameters.
vgg_inception  the study's "VGG + inception V2 intuition" (vggnet.py, build_vggnet2): the same
               stages, but each ends by concatenating a 3x3 stride-2 conv (same width, no
               dropout) with a 2x2 max-pool, then Dropout(0.3). 2,436,810 parameters.
vgg            gridrun's plain VGG (3x3 conv stacks, max-pools, an FC classifier), kept as a
               cheap conventional baseline (0.58M parameters).

TensorFlow's 'SAME' padding pads odd amounts on the bottom/right; here padding is symmetric,
which gives the same sizes and parameter counts (the grids differ by half a pixel).
"""
from __future__ import annotations

import torch
from torch import nn

from ._layers import Dropout, conv_bn
from ._registry import register_model

# Per-stage channel lists; "M" is a 2x2 max-pool. 28 -> 14 -> 7 -> 3.
CFG = {"small": [32, 32, "M", 64, 64, "M", 128, 128, "M"],
       "base": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]}
# The study's stages: 3x3 convs of each stage (a 1x1 conv closes the last one).
STUDY_STAGES = [[(64, 3), (64, 3)], [(128, 3), (128, 3)], [(256, 3), (256, 3), (256, 1)]]


def _cbd(cin: int, cout: int, k: int, stride: int, dropout: float) -> nn.Sequential:
    """The study's conv_bn_activ_dropout: conv (no bias) -> BN -> ReLU -> Dropout."""
    return nn.Sequential(*conv_bn(cin, cout, k, stride), Dropout(dropout))


def _study_features(dropout: float, downsample) -> tuple[nn.Sequential, int]:
    """The study's three stages of conv_bn_activ_dropout, each ended by `downsample(c)`, which
    doubles the channels; returns the layers and their output channels."""
    layers, c = [], 1
    for stage in STUDY_STAGES:
        for w, k in stage:
            layers.append(_cbd(c, w, k, 1, dropout))
            c = w
        layers += downsample(c)
        c *= 2
    return nn.Sequential(*layers), c


class AllConv(nn.Module):
    def __init__(self, dropout: float = 0.3):
        super().__init__()
        # a 5x5 strided "pooling" conv ends each stage
        self.features, c = _study_features(dropout, lambda c: [_cbd(c, 2 * c, 5, 2, dropout)])  # 28 -> 14 -> 7 -> 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * 4 * 4, 10))

    def forward(self, x):  # (N, 1, 28, 28) -> (N, 10)
        return self.classifier(self.features(x))


class _ConvPool(nn.Module):
    """Inception-v2-style downsampling: a 3x3 stride-2 conv beside a 2x2 max-pool, concatenated."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = conv_bn(c, c, 3, 2)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)  # 7 -> 4, like TF's 'SAME'

    def forward(self, x):
        return torch.cat([self.conv(x), self.pool(x)], 1)


class VGGInception(nn.Module):
    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.features, c = _study_features(dropout, lambda c: [_ConvPool(c), Dropout(dropout)])  # 28 -> 14 -> 7 -> 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * 4 * 4, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class VGG(nn.Module):
    def __init__(self, cfg: list, hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        layers, c = [], 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn(c, v))
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), Dropout(dropout), nn.Linear(c * 3 * 3, hidden),
                                        nn.ReLU(inplace=True), Dropout(dropout), nn.Linear(hidden, 10))

    def forward(self, x):  # (N, 1, 28, 28) -> (N, 10)
        return self.classifier(self.features(x))


@register_model
def vgg_allconv(dropout: float = 0.3) -> nn.Module:
    return AllConv(dropout)


@register_model
def vgg_inception(dropout: float = 0.3) -> nn.Module:
    return VGGInception(dropout)


@register_model
def vgg(cfg: str = "small", dropout: float = 0.5) -> nn.Module:
    if cfg not in CFG:
        raise ValueError(f"cfg must be one of {', '.join(CFG)}")
    return VGG(CFG[cfg], dropout=dropout)
