import math

import pytest
import torch

from gridrun import GridrunError
from gridrun.augment import OPS, Augment, deskew, parse_policy

POLICIES = ["rotate", "affine", "jitter", "elastic", "rotate+affine+jitter", "affine+elastic"]


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


@pytest.mark.parametrize("policy", POLICIES)
def test_keeps_shape_dtype_device_and_range(policy):
    x = batch()
    out = Augment(policy)(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all() and not torch.equal(out, x)


@pytest.mark.parametrize("policy", POLICIES + ["eva", "khanrc_affine", "khanrc_align"])
def test_output_stays_in_the_unit_range(policy):
    x = batch(64)
    out = Augment(policy, {"brightness": 0.9, "contrast": 0.9} if "jitter" in policy else None)(
        x, torch.Generator().manual_seed(3))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_named_recipes_and_their_strengths():
    from gridrun.augment import POLICIES as NAMED, make_params

    assert parse_policy("eva") == ("rotate", "affine", "jitter")
    p = make_params({"rotate_deg": 7}, "eva")
    assert (p.rotate_deg, p.affine_deg, p.translate, p.scale, p.brightness) == (7, 8, 0.15, 0.15, 0.1)
    assert set(NAMED) >= {"eva", "eva_rotate", "khanrc_affine", "khanrc_align"}
    with pytest.raises(GridrunError, match="out of range"):
        make_params({"translate": 5})
    with pytest.raises(GridrunError, match="twice"):
        parse_policy("rotate+rotate")


@pytest.mark.parametrize("policy", POLICIES)
def test_zero_strength_is_identity(policy):
    zero = dict(rotate_deg=0, affine_deg=0, translate=0, scale=0, shear_deg=0, brightness=0,
                contrast=0, elastic_alpha=0)
    x = batch()
    assert torch.equal(Augment(policy, zero)(x, torch.Generator().manual_seed(1)), x)


def test_identity_grid_reproduces_image():
    # The sampling path itself is exact at zero displacement (not only skipped).
    aug = Augment("rotate", {"rotate_deg": 1e-9})
    x = batch()
    assert torch.allclose(aug(x, torch.Generator().manual_seed(0)), x, atol=1e-5)


@pytest.mark.parametrize("policy", POLICIES)
def test_each_sample_gets_its_own_parameters(policy):
    x = batch(1).repeat(8, 1, 1, 1)  # eight copies of one image
    out = Augment(policy)(x, torch.Generator().manual_seed(2))
    diffs = [(out[0] - out[i]).abs().max().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3


def test_rotation_magnitude_follows_strength():
    # A centred horizontal bar: its measured angle after `rotate` stays within the strength.
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 13:15, 4:24] = 1
    out = Augment("rotate", {"rotate_deg": 20})(x, torch.Generator().manual_seed(0))
    angles = [abs(_bar_angle(o[0])) for o in out]
    assert max(angles) <= 22 and max(angles) > 8


def _bar_angle(img):
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = img / img.sum()
    cx, cy = (w * xs).sum(), (w * ys).sum()
    cxx, cyy, cxy = (w * (xs - cx) ** 2).sum(), (w * (ys - cy) ** 2).sum(), (w * (xs - cx) * (ys - cy)).sum()
    return math.degrees(0.5 * math.atan2(2 * cxy, cxx - cyy))


def _skew(img):
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = img / img.sum()
    cx, cy = (w * xs).sum(), (w * ys).sum()
    return ((w * (xs - cx) * (ys - cy)).sum() / (w * (ys - cy) ** 2).sum()).item()


def test_align_straightens_a_slanted_bar():
    x = torch.zeros(1, 1, 28, 28)
    for r in range(4, 24):  # a bar leaning right: column grows 0.4 px per row, off-centre
        c = int(round(6 + 0.4 * (r - 4)))
        x[0, 0, r, c:c + 2] = 1
    assert abs(_skew(x[0, 0])) > 0.3
    out = deskew(x)
    assert abs(_skew(out[0, 0])) < 0.05
    # and it is centred: centre of mass near the middle
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = out[0, 0] / out[0, 0].sum()
    assert abs((w * xs).sum() - 13.5) < 1 and abs((w * ys).sum() - 13.5) < 1


def test_policy_parsing_and_errors():
    assert parse_policy("rotate+affine+jitter") == ("rotate", "affine", "jitter")
    assert parse_policy("none") == ()
    assert set(OPS) >= {"none", "rotate", "affine", "jitter", "elastic", "align"}
    with pytest.raises(GridrunError, match="unknown augmentation 'blur'"):
        parse_policy("rotate+blur")
    with pytest.raises(GridrunError, match="strength"):
        Augment("rotate", {"rotate_degrees": 3})
