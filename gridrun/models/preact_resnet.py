"""Pre-activation ResNets (He et al. 2016, "Identity Mappings"): BN-ReLU before each conv,
the identity path left clean. Same 6n+2 depths and stages as resnet.py."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._layers import Dropout
from ._registry import register_model
from .resnet import ResNet


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.b1 = nn.BatchNorm2d(cin)
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.drop = Dropout(dropout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.b1(x))
        short = self.short(out) if self.short is not None else x
        out = self.c1(out)
        out = self.c2(self.drop(F.relu(self.b2(out))))
        return out + short


@register_model
def preact_resnet(depth: int = 20, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return ResNet(depth, block=PreActBlock, preact=True, in_channels=in_channels, num_classes=num_classes)


@register_model
def preact_resnet20(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return ResNet(20, block=PreActBlock, preact=True, in_channels=in_channels, num_classes=num_classes)


@register_model
def preact_resnet32(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return ResNet(32, block=PreActBlock, preact=True, in_channels=in_channels, num_classes=num_classes)
