"""Batched on-device augmentation: per-sample random parameters, one grid_sample per batch.

A policy is a `+`-joined list of ops, e.g. "rotate+affine+jitter", or one named recipe from
POLICIES (the studies' own augmentations). Geometric ops (rotate, affine, elastic) are fused
into a single sampling grid; `jitter` acts on intensities; `align` (deskew by image moments) is
preprocessing applied once to every split, not per batch. Images are float in [0, 1], shape
(N, 1, H, W); augmentation runs before normalisation so that padding is background (0).

Random parameters are drawn (`draw`) apart from being applied (`apply`), in a fixed order from
the caller's generator, so fused trials can draw each member's parameters from its own
generator and still warp all members' batches in one call.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from .errors import GridrunError, did_you_mean

OPS = ("none", "rotate", "affine", "jitter", "elastic", "align")


@dataclass
class AugParams:
    """Strengths of each op; 0 turns an op into the identity."""

    rotate_deg: float = 10.0     # rotate: angle ~ U(-d, d), degrees
    affine_deg: float = 5.0      # affine: its own rotation, degrees
    translate: float = 0.1       # affine: shift ~ U(-t, t) as a fraction of the image side
    scale: float = 0.1           # affine: zoom ~ U(1-s, 1+s)
    shear_deg: float = 5.0       # affine: shear angle ~ U(-d, d), degrees
    brightness: float = 0.2      # jitter: intensity * U(1-b, 1+b)
    contrast: float = 0.2        # jitter: (x - mean) * U(1-c, 1+c) + mean
    elastic_alpha: float = 34.0  # elastic: displacement scale, pixels (Simard et al. 2003)
    elastic_sigma: float = 4.0   # elastic: smoothing of the displacement field, pixels


# The studies' recipes, as ops plus strengths (a spec's `aug:` still overrides any strength).
POLICIES = {
    # EVA6-Group-15/MNIST_99_4, the 9k-parameter nets: RandomRotation(5) then
    # RandomAffine(degrees=8, translate=(0.15, 0.15), scale=(0.85, 1.15)) then
    # ColorJitter(brightness=0.1, contrast=0.1). torchvision resamples twice; we once.
    "eva": ("rotate+affine+jitter", dict(rotate_deg=5, affine_deg=8, translate=0.15, scale=0.15, shear_deg=0,
                                         brightness=0.1, contrast=0.1)),
    # The same study's 6,290-parameter nets: RandomRotation(12).
    "eva_rotate": ("rotate", dict(rotate_deg=12)),
    # khanrc/mnist "affine": keras ImageDataGenerator(rotation_range=15, width_shift_range=0.1,
    # height_shift_range=0.1, zoom_range=0.1). Keras zooms each axis independently and fills
    # with the nearest pixel; here the zoom is isotropic and the fill is background (0).
    "khanrc_affine": ("rotate+affine", dict(rotate_deg=15, affine_deg=0, translate=0.1, scale=0.1, shear_deg=0)),
    # khanrc/mnist "align" trained on AlignMNIST, 75 precomputed epochs of learned
    # class-dependent diffeomorphisms (Hauberg et al. 2016) that cannot be had offline.
    # Stand-in: smooth random elastic warps (Simard et al. 2003) on top of the affine recipe.
    "khanrc_align": ("rotate+affine+elastic", dict(rotate_deg=15, affine_deg=0, translate=0.1, scale=0.1,
                                                   shear_deg=0, elastic_alpha=34.0, elastic_sigma=4.0)),
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """'rotate+jitter' -> ('rotate', 'jitter'); a named recipe -> its ops; unknown names are one error."""
    if not isinstance(policy, str):
        raise GridrunError(f"augmentation policy {policy!r} must be a string such as 'rotate+affine'")
    if policy in POLICIES:
        policy = POLICIES[policy][0]
    ops = tuple(p.strip() for p in policy.split("+") if p.strip())
    bad = [p for p in ops if p not in OPS]
    if bad or not ops:
        name = bad[0] if bad else policy
        if name in POLICIES:  # a recipe inside a '+' policy: it is its own ops and strengths, not one op
            raise GridrunError(f"augmentation recipe {name!r} cannot be joined with '+' in policy {policy!r}: "
                               f"use {name!r} alone, or its ops ({POLICIES[name][0]}) joined with yours")
        raise GridrunError(f"unknown augmentation {name!r} in policy {policy!r}{did_you_mean(name, [*OPS, *POLICIES])}: "
                           f"use ops from {', '.join(OPS)} joined with '+', or one of {', '.join(POLICIES)}")
    if len(set(ops)) != len(ops):
        raise GridrunError(f"augmentation policy {policy!r} names an op twice: name each once")
    return tuple(p for p in ops if p != "none")


def make_params(overrides: dict | None, policy: str = "none") -> AugParams:
    """The policy's strengths (named recipes bring their own) with `overrides` on top."""
    if overrides is not None and not isinstance(overrides, dict):
        raise GridrunError(f"augmentation strengths must be a mapping such as {{rotate_deg: 5}}, got {overrides!r}")
    names = [f.name for f in fields(AugParams)]
    bad = sorted(set(overrides or {}) - set(names))
    if bad:
        raise GridrunError(f"unknown augmentation strength {bad[0]!r}{did_you_mean(bad[0], names)}")
    base = dict(POLICIES[policy][1]) if isinstance(policy, str) and policy in POLICIES else {}
    params = AugParams(**{**base, **(overrides or {})})
    for k, v in asdict(params).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                or (k == "elastic_sigma" and v == 0):
            raise GridrunError(f"augmentation strength {k}={v!r} must be a finite number >= 0 (elastic_sigma > 0)")
    limits = {"translate": 1.0, "scale": 0.99, "rotate_deg": 180, "affine_deg": 180, "shear_deg": 80,
              "brightness": 1.0, "contrast": 1.0, "elastic_alpha": 100.0, "elastic_sigma": 28.0}
    for k, hi in limits.items():
        if getattr(params, k) > hi:
            raise GridrunError(f"augmentation strength {k}={getattr(params, k)!r} is out of range: at most {hi}")
    return params


def check_policy(policy: str, overrides: dict | None) -> None:
    parse_policy(policy)
    make_params(overrides, policy)


def _uniform(n: int, half_width: float, gen, device) -> torch.Tensor:
    return (torch.rand(n, device=device, generator=gen) * 2 - 1) * half_width


@dataclass
class Draws:
    """One batch's random parameters; `key` says which parts are present (for grouping)."""

    theta: torch.Tensor | None = None     # (n, 2, 3) affine matrices, output -> input coords
    field: torch.Tensor | None = None     # (n, h, w, 2) elastic displacement, grid units
    jitter: torch.Tensor | None = None    # (n, 2): brightness and contrast factors

    @property
    def key(self) -> tuple[bool, bool, bool]:
        return self.theta is not None, self.field is not None, self.jitter is not None

    @staticmethod
    def cat(draws: list["Draws"]) -> "Draws":
        """Join the draws of several batches that have the same key."""
        def join(name):
            parts = [getattr(d, name) for d in draws]
            return torch.cat(parts) if parts[0] is not None else None
        return Draws(join("theta"), join("field"), join("jitter"))


class Augment:
    """Callable applying a policy to a batch: `x = Augment('rotate+jitter')(x, gen)`."""

    def __init__(self, policy: str = "none", params: AugParams | dict | None = None):
        self.ops = parse_policy(policy)
        self.p = params if isinstance(params, AugParams) else make_params(params, policy)
        self._kernels: dict = {}

    @property
    def align(self) -> bool:
        return "align" in self.ops

    def _theta(self, n, gen, device) -> torch.Tensor | None:
        """Per-sample 2x3 affine matrices (output -> input coordinates), or None for identity."""
        p, angle = self.p, torch.zeros(n, device=device)
        mats, shift = torch.eye(2, device=device).expand(n, 2, 2), torch.zeros(n, 2, device=device)
        used = False
        if "rotate" in self.ops and p.rotate_deg > 0:
            angle = angle + _uniform(n, math.radians(p.rotate_deg), gen, device)
            used = True
        if "affine" in self.ops and (p.affine_deg or p.translate or p.scale or p.shear_deg):
            angle = angle + _uniform(n, math.radians(p.affine_deg), gen, device)
            zoom = 1 + _uniform(n, p.scale, gen, device)
            shear = torch.tan(_uniform(n, math.radians(p.shear_deg), gen, device))
            sh = torch.zeros(n, 2, 2, device=device)
            sh[:, 0, 0], sh[:, 0, 1], sh[:, 1, 1] = 1, shear, 1
            mats = sh / zoom[:, None, None]  # sampling at 1/zoom enlarges the digit by zoom
            shift = torch.stack([_uniform(n, 2 * p.translate, gen, device) for _ in range(2)], 1)
            used = True
        if not used:
            return None
        c, s = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)
        return torch.cat([rot @ mats, shift[:, :, None]], 2)

    def _gauss(self, device) -> torch.Tensor:
        key = (str(device), self.p.elastic_sigma)
        if key not in self._kernels:
            sigma = self.p.elastic_sigma
            r = int(math.ceil(3 * sigma))
            k = torch.exp(-torch.arange(-r, r + 1, device=device, dtype=torch.float32) ** 2 / (2 * sigma**2))
            self._kernels[key] = k / k.sum()
        return self._kernels[key]

    def _elastic(self, n, h, w, gen, device) -> torch.Tensor:
        """Smoothed random displacement field (n, h, w, 2) in grid_sample's [-1, 1] units."""
        field = torch.rand(n * 2, 1, h, w, device=device, generator=gen) * 2 - 1
        k = self._gauss(device)
        pad = len(k) // 2
        mode = "reflect" if pad < min(h, w) else "replicate"
        field = F.conv2d(F.pad(field, (pad, pad, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        field = F.conv2d(F.pad(field, (0, 0, pad, pad), mode=mode), k.view(1, 1, -1, 1))
        field = field.view(n, 2, h, w)
        field[:, 0].mul_(self.p.elastic_alpha * 2 / w)  # pixels -> grid_sample's normalised units
        field[:, 1].mul_(self.p.elastic_alpha * 2 / h)
        return field.permute(0, 2, 3, 1)

    def draw(self, n: int, gen: torch.Generator | None, device, size: tuple[int, int] = (28, 28)) -> Draws:
        """This batch's random parameters, in a fixed order: geometry, elastic field, jitter."""
        d = Draws(theta=self._theta(n, gen, device))
        if "elastic" in self.ops and self.p.elastic_alpha > 0:
            d.field = self._elastic(n, size[0], size[1], gen, device)
        if "jitter" in self.ops and (self.p.brightness or self.p.contrast):
            b = 1 + _uniform(n, self.p.brightness, gen, device)
            c = 1 + _uniform(n, self.p.contrast, gen, device)
            d.jitter = torch.stack([b, c], 1)
        return d

    @staticmethod
    def apply(x: torch.Tensor, d: Draws) -> torch.Tensor:
        """Warp and jitter a batch with drawn parameters (one grid_sample for all geometry)."""
        n = x.shape[0]
        if d.theta is not None or d.field is not None:
            theta = d.theta if d.theta is not None else torch.eye(2, 3, device=x.device).expand(n, 2, 3)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            if d.field is not None:
                grid = grid + d.field.to(x.dtype)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if d.jitter is not None:
            b, c = d.jitter[:, 0].view(n, 1, 1, 1), d.jitter[:, 1].view(n, 1, 1, 1)
            mean = x.mean((1, 2, 3), keepdim=True)
            x = (((x - mean) * c + mean) * b).clamp(0, 1)
        return x

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.draw(x.shape[0], gen, x.device, tuple(x.shape[2:])))


def deskew(x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Straighten slanted digits: shear each image so its second-moment skew is zero and
    centre it on its centre of mass (the classic MNIST 'deskewing')."""
    out = []
    for xb in x.split(chunk):
        n, _, h, w = xb.shape
        img = xb[:, 0].float()
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device)  # pixel centres, normalised
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device)
        total = img.sum((1, 2)).clamp_min(1e-6)
        cy = (img.sum(2) * ys).sum(1) / total
        cx = (img.sum(1) * xs).sum(1) / total
        dy, dx = ys.view(1, h, 1) - cy.view(n, 1, 1), xs.view(1, 1, w) - cx.view(n, 1, 1)
        var_y = (img * dy**2).sum((1, 2)) / total
        cov = (img * dy * dx).sum((1, 2)) / total
        alpha = torch.where(var_y > 1e-6, cov / var_y.clamp_min(1e-6), torch.zeros_like(var_y))
        # Output (u, v) samples input (u + alpha * v + cx, v + cy): removes the x-on-y slope.
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = 1, alpha, cx
        theta[:, 1, 1], theta[:, 1, 2] = 1, cy
        grid = F.affine_grid(theta, list(xb.shape), align_corners=False)
        out.append(F.grid_sample(xb.float(), grid, align_corners=False).to(xb.dtype))
    return torch.cat(out) if out else x
