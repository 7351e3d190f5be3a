"""Inception-v4-like nets for 28x28.

inception_v4_light  the model-zoo study's lightweight Inception (khanrc/mnist inception_light.py):
                    a two-branch stem to 96 channels at 28x28, 2 Inception-A (96), Reduction-A to
                    256 at 14x14, 3 Inception-B (256), Reduction-B to 384 at 7x7, 1 Inception-C
                    (384), GAP, Dropout(0.2), FC. Every conv is conv (no bias) -> BN -> ReLU; the
                    average pools exclude padding, as TensorFlow's do. 1,243,562 parameters.
inception_v4        the paper's stem, Inception-A/B/C and Reduction-A/B (Szegedy et al. 2016) with
                    every width scaled by `width` and (4, 7, 3) blocks; the stem's first conv has
                    stride 1 and its last reduction is dropped, so the grid is 28 -> 14 -> 7 -> 4.
"""
from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model
from ._layers import Dropout, conv_bn


class Branches(nn.Module):
    """Parallel branches over one input, concatenated on channels."""

    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*b) if isinstance(b, (list, tuple)) else b for b in branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


def _scaler(width: float):
    """c(n): the paper's width n scaled by `width`, never below 8 channels."""
    return lambda n: max(8, int(n * width))


def _stem(c):
    return nn.Sequential(
        conv_bn(1, c(32)), conv_bn(c(32), c(32)), conv_bn(c(32), c(64)),
        Branches([nn.MaxPool2d(3, 2, 1)], [conv_bn(c(64), c(96), 3, 2)]),                      # 28 -> 14
        Branches([conv_bn(c(64) + c(96), c(64), 1), conv_bn(c(64), c(96))],
                 [conv_bn(c(64) + c(96), c(64), 1), conv_bn(c(64), c(64), (7, 1)), conv_bn(c(64), c(64), (1, 7)),
                  conv_bn(c(64), c(96))]),
    ), 2 * c(96)


def _block_a(cin, c):
    return Branches([nn.AvgPool2d(3, 1, 1), conv_bn(cin, c(96), 1)], [conv_bn(cin, c(96), 1)],
                    [conv_bn(cin, c(64), 1), conv_bn(c(64), c(96))],
                    [conv_bn(cin, c(64), 1), conv_bn(c(64), c(96)), conv_bn(c(96), c(96))]), 4 * c(96)


def _reduction_a(cin, c):
    return Branches([nn.MaxPool2d(3, 2, 1)], [conv_bn(cin, c(384), 3, 2)],
                    [conv_bn(cin, c(192), 1), conv_bn(c(192), c(224)), conv_bn(c(224), c(256), 3, 2)]), \
        cin + c(384) + c(256)


def _block_b(cin, c):
    return Branches([nn.AvgPool2d(3, 1, 1), conv_bn(cin, c(128), 1)], [conv_bn(cin, c(384), 1)],
                    [conv_bn(cin, c(192), 1), conv_bn(c(192), c(224), (1, 7)), conv_bn(c(224), c(256), (7, 1))],
                    [conv_bn(cin, c(192), 1), conv_bn(c(192), c(192), (7, 1)), conv_bn(c(192), c(224), (1, 7)),
                     conv_bn(c(224), c(224), (7, 1)), conv_bn(c(224), c(256), (1, 7))]), \
        c(128) + c(384) + 2 * c(256)


def _reduction_b(cin, c):
    return Branches([nn.MaxPool2d(3, 2, 1)], [conv_bn(cin, c(192), 1), conv_bn(c(192), c(192), 3, 2)],
                    [conv_bn(cin, c(256), 1), conv_bn(c(256), c(256), (1, 7)), conv_bn(c(256), c(320), (7, 1)),
                     conv_bn(c(320), c(320), 3, 2)]), cin + c(192) + c(320)


class _SplitC(nn.Module):
    """Inception-C's forked tail: one input, a 1x3 and a 3x1 conv side by side."""

    def __init__(self, cin, cout):
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, (1, 3)), conv_bn(cin, cout, (3, 1))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


def _block_c(cin, c):
    return Branches([nn.AvgPool2d(3, 1, 1), conv_bn(cin, c(256), 1)], [conv_bn(cin, c(256), 1)],
                    [conv_bn(cin, c(384), 1), _SplitC(c(384), c(256))],
                    [conv_bn(cin, c(384), 1), conv_bn(c(384), c(448), (3, 1)), conv_bn(c(448), c(512), (1, 3)),
                     _SplitC(c(512), c(256))]), 6 * c(256)


class InceptionV4(nn.Module):
    def __init__(self, width: float = 0.25, blocks=(4, 7, 3), dropout: float = 0.2):
        super().__init__()
        if not 0 < width <= 2:  # width scales every channel count; 1 is the paper's net
            raise ValueError(f"width must be in (0, 2] (1 is the paper's Inception-v4), got {width}")
        c = _scaler(width)
        stem, ch = _stem(c)
        layers = [stem]
        for make, count, reduce in ((_block_a, blocks[0], _reduction_a), (_block_b, blocks[1], _reduction_b),
                                    (_block_c, blocks[2], None)):
            for _ in range(count):
                block, ch = make(ch, c)
                layers.append(block)
            if reduce is not None:
                block, ch = reduce(ch, c)
                layers.append(block)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dropout(dropout), nn.Linear(ch, 10))

    def forward(self, x):  # (N, 1, 28, 28) -> (N, 10)
        return self.head(self.features(x))


@register_model
def inception_v4(width: float = 0.25, dropout: float = 0.2) -> nn.Module:
    return InceptionV4(width, (4, 7, 3), dropout)


# ---------------------------------------------------------------- the study's lightweight Inception

def _avg_1x1(cin, cout):
    return [nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv_bn(cin, cout, 1)]


class _Fork(nn.Module):
    """One input, two convs side by side, concatenated (Inception-C's split tails)."""

    def __init__(self, cin, cout, k1, k2):
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, k1), conv_bn(cin, cout, k2)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


def _light_stem():
    return Branches([conv_bn(1, 32, 1), conv_bn(32, 48, 3)],
                    [conv_bn(1, 32, 1), conv_bn(32, 32, (1, 7)), conv_bn(32, 32, (7, 1)), conv_bn(32, 48, 3)])  # 96


def _light_a():  # 96 -> 96
    return Branches(_avg_1x1(96, 24), [conv_bn(96, 24, 1)], [conv_bn(96, 16, 1), conv_bn(16, 24, 3)],
                    [conv_bn(96, 16, 1), conv_bn(16, 24, 3), conv_bn(24, 24, 3)])


def _light_reduction_a():  # 96 -> 96 + 96 + 64 = 256, 28 -> 14
    return Branches([nn.MaxPool2d(3, 2, 1)], [conv_bn(96, 96, 3, 2)],
                    [conv_bn(96, 48, 1), conv_bn(48, 56, 3), conv_bn(56, 64, 3, 2)])


def _light_b():  # 256 -> 32 + 96 + 64 + 64 = 256
    return Branches(_avg_1x1(256, 32), [conv_bn(256, 96, 1)],
                    [conv_bn(256, 48, 1), conv_bn(48, 56, (1, 7)), conv_bn(56, 64, (7, 1))],
                    [conv_bn(256, 48, 1), conv_bn(48, 48, (1, 7)), conv_bn(48, 48, (7, 1)), conv_bn(48, 64, (1, 7)),
                     conv_bn(64, 64, (7, 1))])


def _light_reduction_b():  # 256 -> 256 + 48 + 80 = 384, 14 -> 7
    return Branches([nn.MaxPool2d(3, 2, 1)], [conv_bn(256, 48, 1), conv_bn(48, 48, 3, 2)],
                    [conv_bn(256, 64, 1), conv_bn(64, 64, (1, 7)), conv_bn(64, 80, (7, 1)), conv_bn(80, 80, 3, 2)])


def _light_c():  # 384 -> 64 * 6 = 384
    return Branches(_avg_1x1(384, 64), [conv_bn(384, 64, 1)], [conv_bn(384, 96, 1), _Fork(96, 64, (1, 3), (3, 1))],
                    [conv_bn(384, 96, 1), conv_bn(96, 112, (1, 3)), conv_bn(112, 128, (3, 1)),
                     _Fork(128, 64, (3, 1), (1, 3))])


class InceptionLight(nn.Module):
    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(_light_stem(), _light_a(), _light_a(), _light_reduction_a(),
                                      _light_b(), _light_b(), _light_b(), _light_reduction_b(), _light_c())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dropout(dropout), nn.Linear(384, 10))

    def forward(self, x):  # (N, 1, 28, 28) -> 28 -> 14 -> 7 -> (N, 10)
        return self.head(self.features(x))


@register_model
def inception_v4_light(dropout: float = 0.2) -> nn.Module:
    """The study's lightweight Inception-v4 for MNIST."""
    return InceptionLight(dropout)
