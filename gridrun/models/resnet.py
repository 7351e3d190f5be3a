"""CIFAR-style ResNets (He et al. 2016) for 28x28, as the model-zoo study built them
(khanrc/mnist resnet.py): depth 6n+2, stages of 16/32/64 channels at 28x28, 14x14 and 7x7, a
3x3 stem conv -> BN -> ReLU, basic blocks conv-BN-ReLU-conv-BN, and at each downsampling a
1x1 strided projection with bias and no BN (the paper's option B); GAP, FC.
resnet20: 272,090 parameters; resnet32: 466,522."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._registry import register_model

N_RANGE = range(3, 19)  # the study's --resnet_layer_n: 6n+2 with n in {3, 5, 7, 9, ..., 18}


def blocks_for(depth: int) -> int:
    """n for a depth of 6n+2; any other depth is an error naming the valid ones."""
    n, rem = divmod(depth - 2, 6)
    if rem or n not in N_RANGE:
        valid = ", ".join(str(6 * k + 2) for k in N_RANGE)
        raise ValueError(f"depth {depth} is not 6n+2 with n in 3..18; valid depths: {valid}")
    return n


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Conv2d(cin, cout, 1, stride)  # projection with bias, no BN (the study's)

    def forward(self, x):
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, depth: int = 20, widths=(16, 32, 64), block=BasicBlock, preact: bool = False,
                 n: int | None = None, stem_width: int | None = None, in_channels: int = 1, num_classes: int = 10):
        """n blocks per stage (default: from a 6n+2 depth); the stem is widths[0] wide unless
        stem_width says otherwise (Wide ResNets keep a 16-wide stem)."""
        super().__init__()
        n = blocks_for(depth) if n is None else n
        c = stem_width or widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False))
        if not preact:  # pre-activation nets normalise inside each block instead
            self.stem.append(nn.BatchNorm2d(c))
            self.stem.append(nn.ReLU(inplace=True))
        layers = []
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(block(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(*([nn.BatchNorm2d(c), nn.ReLU(inplace=True)] if preact else []),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x):  # (N, C, 28, 28) -> 28 -> 14 -> 7 -> (N, classes)
        return self.head(self.layers(self.stem(x)))


@register_model
def resnet(depth: int = 20, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return ResNet(depth, in_channels=in_channels, num_classes=num_classes)


@register_model
def resnet20(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return ResNet(20, in_channels=in_channels, num_classes=num_classes)


@register_model
def resnet32(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return ResNet(32, in_channels=in_channels, num_classes=num_classes)


@register_model
def resnet56(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return ResNet(56, in_channels=in_channels, num_classes=num_classes)
