"""VGG-like nets for 28x28 (the model-zoo study's three VGG variants).

vgg            3x3 conv+BN+ReLU stacks, max-pool between stages, FC classifier.
vgg_allconv    "VGG + all conv" (Springenberg et al. 2015): stride-2 convs instead of pools,
               a convolutional classifier (1x1 to 10) and global average pooling.
vgg_inception  "VGG + inception V2 intuition": 3x3 convs factorised into 3x1 + 1x3, and a
               block of parallel branches (1x1 | 1x1-3x3 | 1x1-3x1-1x3 | pool-1x1) per stage.
"""
from __future__ import annotations

import torch
from torch import nn

from ._layers import conv_bn
from ._registry import register_model

# Per-stage channel lists; "M" is a 2x2 max-pool. 28 -> 14 -> 7 -> 3.
CFG = {"small": [32, 32, "M", 64, 64, "M", 128, 128, "M"],
       "base": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]}


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
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * 3 * 3, hidden),
                                        nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, 10))

    def forward(self, x):  # (N, 1, 28, 28) -> (N, 10)
        return self.classifier(self.features(x))


class AllConv(nn.Module):
    """Stages of 3x3 convs; each stage ends in a stride-2 conv; 1x1 classifier + GAP."""

    def __init__(self, widths=(32, 64, 128), dropout: float = 0.2):
        super().__init__()
        layers, c = [], 1
        for w in widths:
            layers += [conv_bn(c, w), conv_bn(w, w), conv_bn(w, w, stride=2), nn.Dropout2d(dropout)]
            c = w
        self.features = nn.Sequential(*layers)  # 28 -> 14 -> 7 -> 4
        self.classifier = nn.Sequential(conv_bn(c, c, 1), nn.Conv2d(c, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


class Mixed(nn.Module):
    """Inception-v2-style block: four parallel branches concatenated (out = 4 * b channels)."""

    def __init__(self, cin: int, b: int):
        super().__init__()
        self.b1 = conv_bn(cin, b, 1)
        self.b2 = nn.Sequential(conv_bn(cin, b, 1), conv_bn(b, b, 3))
        self.b3 = nn.Sequential(conv_bn(cin, b, 1), conv_bn(b, b, (3, 1)), conv_bn(b, b, (1, 3)))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, b, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class VGGInception(nn.Module):
    def __init__(self, widths=(32, 64, 128), dropout: float = 0.3):
        super().__init__()
        layers, c = [], 1
        for w in widths:  # factorised 3x3 (3x1 then 1x3), then a Mixed block, then pool
            layers += [conv_bn(c, w, (3, 1)), conv_bn(w, w, (1, 3)), Mixed(w, w // 4), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)  # 28 -> 14 -> 7 -> 3
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, 10))

    def forward(self, x):
        return self.head(self.features(x))


@register_model
def vgg(cfg: str = "small", dropout: float = 0.5) -> nn.Module:
    if cfg not in CFG:
        raise ValueError(f"cfg must be one of {', '.join(CFG)}")
    return VGG(CFG[cfg], dropout=dropout)


@register_model
def vgg_allconv(dropout: float = 0.2) -> nn.Module:
    return AllConv(dropout=dropout)


@register_model
def vgg_inception(dropout: float = 0.3) -> nn.Module:
    return VGGInception(dropout=dropout)
