"""The six nets of the tiny-net study (< 10k parameters) and gridrun's own tinynet_7k.

The study gives each net's layers as diagrams that are not in its text; these layer lists
are rebuilt from its prose (where the max-pools, transitions, GAP and FC sit) and match its
parameter counts to within 0.5%. Layer codes:
  C(c, p)  3x3 conv to c channels, padding p, no bias, then BN, ReLU (and Dropout2d when
           dropout > 0).
  T(c)     1x1 "transition" conv to c channels + BN + ReLU.
  M        2x2 max-pool.   G  global average pool.   F  linear classifier to 10 classes.
  O        1x1 conv to 10 channels (the output of the nets without FC).
Spatial sizes for a 28x28 input are given after each arrow.
"""
from __future__ import annotations

from torch import nn

from ._registry import register_model

# vanilla (9,182; study 9,186): C4 C16 C16 ->28, M ->14, T12, C16 C16 C12 (no pad) ->8, G, F
VANILLA = [("C", 4, 1), ("C", 16, 1), ("C", 16, 1), ("M",), ("T", 12),
           ("C", 16, 0), ("C", 16, 0), ("C", 12, 0), ("G",), ("F",)]
# gap_transition_fc (9,282; study 9,320): vanilla with O (1x1 to 10) after the last conv, G, F
GAP_TRANSITION_FC = VANILLA[:-2] + [("O",), ("G",), ("F",)]
# gap_transition (9,172; study 9,210): as above without the FC; the GAP output is the logits
GAP_TRANSITION = VANILLA[:-2] + [("O",), ("G",)]
# two_maxpool (6,302; study 6,290): C8 C8 ->28, M ->14, C8 C8, M ->7, C8 C8(p0) ->5,
#   C14(p0) ->3, C16 ->3, G (3x3), F
TWO_MAXPOOL = [("C", 8, 1), ("C", 8, 1), ("M",), ("C", 8, 1), ("C", 8, 1), ("M",),
               ("C", 8, 1), ("C", 8, 0), ("C", 14, 0), ("C", 16, 1), ("G",), ("F",)]
# one_maxpool (6,302; study 6,290): C8 C8 C8 ->28, M ->14, C8 C8 C8 C14 (no pad) ->6, C16 ->6,
#   G (6x6), F. Same layers as two_maxpool, one pool: GAP sees 6x6 instead of 3x3.
ONE_MAXPOOL = [("C", 8, 1), ("C", 8, 1), ("C", 8, 1), ("M",), ("C", 8, 0), ("C", 8, 0),
               ("C", 8, 0), ("C", 14, 0), ("C", 16, 1), ("G",), ("F",)]
# tinynet_7k (7,594; gridrun's own): C10(p0) ->26, C16(p0) ->24, M ->12, T10, C14(p0) ->10,
#   C16(p0) ->8, C16(p0) ->6, O, G. Spends its parameters where the image is still large and
#   ends in a 1x1 classifier on the GAP, so no FC weights sit on a tiny spatial map.
TINYNET_7K = [("C", 10, 0), ("C", 16, 0), ("M",), ("T", 10), ("C", 14, 0), ("C", 16, 0),
              ("C", 16, 0), ("O",), ("G",)]


class TinyNet(nn.Sequential):
    """A plain stack built from a layer list (see the module docstring)."""

    def __init__(self, layers, dropout: float = 0.0, first_bn: bool = True, in_ch: int = 1):
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        mods, c = [], in_ch
        for i, (kind, *arg) in enumerate(layers):
            if kind in ("C", "T"):
                k, out = (3, arg[0]) if kind == "C" else (1, arg[0])
                pad = arg[1] if kind == "C" else 0
                mods.append(nn.Conv2d(c, out, k, padding=pad, bias=False))
                # The study's dropout net trades the first BN for dropout.
                mods.append(nn.BatchNorm2d(out) if (first_bn or i > 0) else nn.Identity())
                mods.append(nn.ReLU(inplace=True))
                if dropout > 0 or (not first_bn and i == 0):
                    mods.append(nn.Dropout2d(dropout or 0.1))
                c = out
            elif kind == "M":
                mods.append(nn.MaxPool2d(2))
            elif kind == "O":
                mods.append(nn.Conv2d(c, 10, 1, bias=False))
                c = 10
            elif kind == "G":
                mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            elif kind == "F":
                mods.append(nn.Linear(c, 10))
        super().__init__(*mods)


@register_model
def vanilla(dropout: float = 0.0) -> nn.Module:
    return TinyNet(VANILLA, dropout)


@register_model
def dropout(dropout: float = 0.1) -> nn.Module:
    """Vanilla with Dropout2d instead of BN after the first conv (the study's 'with dropout')."""
    return TinyNet(VANILLA, dropout, first_bn=False)


@register_model
def gap_transition_fc(dropout: float = 0.0) -> nn.Module:
    return TinyNet(GAP_TRANSITION_FC, dropout, first_bn=False)


@register_model
def gap_transition(dropout: float = 0.0) -> nn.Module:
    return TinyNet(GAP_TRANSITION, dropout, first_bn=False)


@register_model
def two_maxpool(dropout: float = 0.0) -> nn.Module:
    return TinyNet(TWO_MAXPOOL, dropout)


@register_model
def one_maxpool(dropout: float = 0.0) -> nn.Module:
    return TinyNet(ONE_MAXPOOL, dropout)


@register_model
def tinynet_7k(dropout: float = 0.0) -> nn.Module:
    return TinyNet(TINYNET_7K, dropout)

