"""The six nets of the tiny-net study (EVA6-Group-15/MNIST_99_4) and gridrun's own tinynet_7k.

The study's nets, layer for layer from its notebooks (MNIST_99_57_best.ipynb for the 9,320-
parameter net, MNIST_99_Dev.ipynb for the 6,290-parameter ones) and, where a notebook is not
in the repository (the 48 runs of "Notebook 1"), from the best notebook's net and the study's
parameter counts, which pin every remaining choice. Their conventions: 3x3 convs with bias,
applied as conv -> ReLU -> BN; a 1x1 "transition" conv with no activation after the max-pool;
log-softmax on the logits (here the loss applies it).

Layer codes for the lists below (spatial size for a 28x28 input after each arrow):
  C(c, pad)  3x3 conv with bias -> ReLU -> BN (+ Dropout when the net has one there)
  c(c, pad)  3x3 conv with bias -> ReLU, no BN
  L(c, pad)  3x3 conv with bias only (no ReLU, no BN)
  D(c, pad)  3x3 conv with bias -> ReLU -> Dropout (the 'with dropout' first layer)
  T(c)       1x1 conv with bias, no activation (transition)
  M          2x2 max-pool      G  global average pool + flatten
  F(c)       linear to c (ReLU between two linears)
"""
from __future__ import annotations

import re

from torch import nn

from ._layers import Dropout
from ._registry import register_model

# vanilla, 9,186: C4 C8 C12 C16 C20 ->28, M ->14, T4, C8(p0) ->12, C12(p0) ->10, c16(p0) ->8, G, F10
VANILLA = [("C", 4, 1), ("C", 8, 1), ("C", 12, 1), ("C", 16, 1), ("C", 20, 1), ("M",), ("T", 4),
           ("C", 8, 0), ("C", 12, 0), ("c", 16, 0), ("G",), ("F", 10)]
# dropout, 9,178: vanilla with Dropout instead of the first BN
DROPOUT = [("D", 4, 1)] + VANILLA[1:]
# gap_transition_fc, 9,320 (the study's best run): dropout net, BN after the last 3x3 conv,
# a 1x1 conv to 10, GAP over 8x8, then a 10->10 linear
GAP_TRANSITION_FC = DROPOUT[:-3] + [("C", 16, 0), ("T", 10), ("G",), ("F", 10)]
# gap_transition, 9,210: the same without the linear; the GAP output is the logits
GAP_TRANSITION = GAP_TRANSITION_FC[:-1]
# two_maxpool, 6,290: C8 C8 ->28, M ->14, C8 C8 ->14, M ->7, C16(p0) ->5, L16(p0) ->3, G (3x3),
#   F32, F10; the dropout variant adds Dropout(0.05) after each C
TWO_MAXPOOL = [("C", 8, 1), ("C", 8, 1), ("M",), ("C", 8, 1), ("C", 8, 1), ("M",), ("C", 16, 0), ("L", 16, 0),
               ("G",), ("F", 32), ("F", 10)]
# one_maxpool, 6,290: C8 C8 ->28, M ->14, C8(p0) ->12, C8(p0) ->10, C16(p0) ->8, L16(p0) ->6,
#   G (6x6), F32, F10 (the same layers, one pool: the GAP sees 6x6)
ONE_MAXPOOL = [("C", 8, 1), ("C", 8, 1), ("M",), ("C", 8, 0), ("C", 8, 0), ("C", 16, 0), ("L", 16, 0),
               ("G",), ("F", 32), ("F", 10)]


class StudyNet(nn.Sequential):
    """A plain stack built from one of the study's layer lists (see the module docstring).
    `dropout` is the rate of its Dropout layers (D, and after each C when `dropout_after_conv`)."""

    def __init__(self, layers, dropout: float = 0.0, dropout_after_conv: bool = False):
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        mods, c, n_linear = [], 1, sum(1 for k, *_ in layers if k == "F")
        for kind, *arg in layers:
            if kind in ("C", "c", "L", "D"):
                mods.append(nn.Conv2d(c, arg[0], 3, padding=arg[1]))
                c = arg[0]
                if kind != "L":
                    mods.append(nn.ReLU(inplace=True))
                if kind == "C":
                    mods.append(nn.BatchNorm2d(c))
                if kind == "D" or (kind == "C" and dropout_after_conv):
                    mods.append(Dropout(dropout))
            elif kind == "T":
                mods.append(nn.Conv2d(c, arg[0], 1))
                c = arg[0]
            elif kind == "M":
                mods.append(nn.MaxPool2d(2))
            elif kind == "G":
                mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            elif kind == "F":
                n_linear -= 1
                mods.append(nn.Linear(c, arg[0]))
                c = arg[0]
                if n_linear:
                    mods.append(nn.ReLU(inplace=True))
        super().__init__(*mods)


@register_model
def vanilla() -> nn.Module:
    """The study's 'Vanilla' net (Batch Norm + FC + GAP), 9,186 parameters."""
    return StudyNet(VANILLA)


@register_model
def dropout(dropout: float = 0.069) -> nn.Module:
    """'With dropout': Dropout instead of the first BN (rate: the study's 0.069), 9,178."""
    return StudyNet(DROPOUT, dropout)


@register_model
def gap_transition_fc(dropout: float = 0.069) -> nn.Module:
    """'With GAP and transition layer' + FC, 9,320: the study's best single run (99.57%)."""
    return StudyNet(GAP_TRANSITION_FC, dropout)


@register_model
def gap_transition(dropout: float = 0.069) -> nn.Module:
    """'GAP and transition layer without FC', 9,210."""
    return StudyNet(GAP_TRANSITION, dropout)


@register_model
def two_maxpool(dropout: float = 0.0) -> nn.Module:
    """'2 MaxPools + BatchNorm + GAP + FC', 6,290; dropout=0.05 is the study's DropOut variant."""
    return StudyNet(TWO_MAXPOOL, dropout, dropout_after_conv=True)


@register_model
def one_maxpool(dropout: float = 0.0) -> nn.Module:
    """'1 MaxPool + BatchNorm + GAP + FC', 6,290; dropout=0.05 is the study's DropOut variant."""
    return StudyNet(ONE_MAXPOOL, dropout, dropout_after_conv=True)


# ---------------------------------------------------------------- gridrun's own

# tinynet_7k (7,594): conv -> BN -> ReLU with no bias (BN follows), codes as in TinyNet:
#   C10(p0) ->26, C16(p0) ->24, M ->12, T10, C14(p0) ->10, C16(p0) ->8, C16(p0) ->6, O, G.
#   Spends its parameters where the image is still large and ends in a 1x1 classifier on the
#   GAP, so no FC weights sit on a tiny spatial map.
TINYNET_7K = [("C", 10, 0), ("C", 16, 0), ("M",), ("T", 10), ("C", 14, 0), ("C", 16, 0),
              ("C", 16, 0), ("O",), ("G",)]


class TinyNet(nn.Sequential):
    """gridrun's plain stack: C(c, p) 3x3 conv (no bias) + BN + ReLU + channel dropout (skipped
    at rate 0), S(c, p) the same with a depthwise-separable 3x3 conv (3x3 per channel, then 1x1
    to c: 9 c_in + c_in c weights instead of 9 c_in c, so more layers, a larger receptive field
    under the same budget), T(c) 1x1 conv + BN + ReLU + channel dropout, M max-pool, O 1x1 conv
    to 10, G GAP."""

    def __init__(self, layers, dropout: float = 0.0, in_ch: int = 1, classes: int = 10):
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        mods, c = [], in_ch
        for kind, *arg in layers:
            if kind in ("C", "T", "S"):
                k, pad = (1, 0) if kind == "T" else (3, arg[1])
                conv = ([nn.Conv2d(c, c, 3, padding=pad, groups=c, bias=False), nn.Conv2d(c, arg[0], 1, bias=False)]
                        if kind == "S" else [nn.Conv2d(c, arg[0], k, padding=pad, bias=False)])
                mods += [*conv, nn.BatchNorm2d(arg[0]), nn.ReLU(inplace=True), Dropout(dropout, channelwise=True)]
                c = arg[0]
            elif kind == "M":
                mods.append(nn.MaxPool2d(2))
            elif kind == "O":
                mods.append(nn.Conv2d(c, classes, 1, bias=False))
                c = classes
            elif kind == "G":
                mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*mods)


ARCH_HELP = ("write layers such as 'C10:0 C16:0 M T10 C14:0 C16:0 C16:0 O G': C<channels>[:padding], "
             "S<channels>[:padding] (3x3, padding 0 or 1), T<channels>, M, O (1x1 conv to the 10 classes), then G")
MAX_ARCH_LAYERS, MAX_CHANNELS = 64, 512
_TOKEN = re.compile(r"^(?:([CS])(\d{1,6})(?::(\d{1,6}))?|(T)(\d{1,6})|([MOG]))$", re.ASCII)


def parse_arch(arch: str, image_size: tuple[int, int] = (28, 28)) -> list[tuple]:
    """'C10:0 C16:0 M T10 C14 O G' -> TinyNet's layer list (C<c>[:pad], S<c>[:pad], T<c>, M, O, G),
    checked as it is read: known tokens, channels in 1..512, padding 0 or 1, feature maps that
    stay at least 1x1 from a 28x28 input, and O (the 10 class maps) followed only by the final G."""
    if not isinstance(arch, str):
        raise ValueError(f"arch must be a string of layer tokens, got {type(arch).__name__}: {ARCH_HELP}")
    tokens = arch.split()
    if not tokens or len(tokens) > MAX_ARCH_LAYERS:
        raise ValueError(f"arch has {len(tokens)} layers (1..{MAX_ARCH_LAYERS}): {ARCH_HELP}")
    layers, size = [], min(image_size)  # spatial size after each layer (the shorter side)
    for i, tok in enumerate(tokens):
        m = _TOKEN.match(tok)
        if m is None:
            raise ValueError(f"arch token {tok!r} is not a layer: {ARCH_HELP}")
        if layers and layers[-1][0] == "G" or (layers and layers[-1][0] == "O" and tok != "G"):
            raise ValueError(f"arch token {tok!r} follows {layers[-1][0]}: O (the 10 class maps) is followed only "
                             f"by the final G; {ARCH_HELP}")
        if m[1]:
            c, pad = int(m[2]), int(m[3] if m[3] is not None else 1)
            if pad > 1:
                raise ValueError(f"arch token {tok!r}: padding is 0 (valid) or 1 (same) for a 3x3 conv, got {pad}")
            layers.append((m[1], c, pad))
            size = size - 2 + 2 * pad
        elif m[4]:
            c = int(m[5])
            layers.append(("T", c))
        else:
            layers.append((m[6],))
            size = size // 2 if m[6] == "M" else size
        if layers[-1][0] in "CST" and not 1 <= c <= MAX_CHANNELS:
            raise ValueError(f"arch token {tok!r}: channels must be in 1..{MAX_CHANNELS}")
        if size < 1:
            raise ValueError(f"arch token {tok!r} (layer {i + 1}) shrinks the {'x'.join(map(str, image_size))} image "
                             f"to nothing: remove a "
                             f"max-pool or pad the convs (C<c>:1)")
    if layers[-1][0] != "G" or len(layers) < 2 or layers[-2][0] != "O":
        raise ValueError(f"arch must end with O G (a 1x1 conv to the 10 classes, then global pooling): {ARCH_HELP}")
    return layers


@register_model
def tinynet_7k(dropout: float = 0.0, in_channels: int = 1, num_classes: int = 10, image_size=(28, 28)) -> nn.Module:
    return TinyNet(TINYNET_7K, dropout, in_channels, num_classes)


@register_model
def tinynet(arch: str = "C10:0 C16:0 M T10 C14:0 C16:0 C16:0 O G", dropout: float = 0.0, in_channels: int = 1,
            num_classes: int = 10, image_size=(28, 28)) -> nn.Module:
    """TinyNet from a layer string, for width and depth searches under a parameter budget
    (the default string is tinynet_7k)."""
    return TinyNet(parse_arch(arch, tuple(image_size)), dropout, in_channels, num_classes)
