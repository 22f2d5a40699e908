"""Synthetic degradations for training temporal super-resolution (MetaPortrait §3.3; docs/METHOD.md §9).

GFPGAN/basicsr-style first-order model ``y = JPEG_q( resize( (x ⊛ k)↓s ) + n )``:

1. blur with a random isotropic or anisotropic Gaussian kernel ``k`` (size ``kernel_size``, standard
   deviations in ``sigma_range`` HR pixels, random rotation);
2. downsample to ``lr_size / extra_scale`` (``extra_scale`` in ``downscale_range``; random
   interpolation among area, bilinear, bicubic) and resize back to ``lr_size`` (bilinear), so the
   network sees inputs softer than a clean 2× reduction, like the base model's 256² outputs;
3. additive Gaussian noise with ``sigma`` in ``noise_range`` (0..255 units);
4. JPEG at quality in ``jpeg_range``.

**Temporal consistency**: one :class:`DegradationParams` is drawn per clip and applied to every frame
(same kernel, scale, noise level and JPEG quality; the noise *realisation* is drawn per frame, as
sensor noise is). All draws come from a ``numpy.random.Generator`` passed in, so a seed reproduces
a clip exactly.

numpy frames are ``uint8`` RGB ``H×W×3`` (a clip: ``T×H×W×3``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from metaportrait.models.hub import ModelConfig

__all__ = [
    "DegradationConfig",
    "DegradationParams",
    "apply_degradation",
    "degrade_clip",
    "gaussian_kernel",
    "sample_degradation",
]

_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)


@dataclass(frozen=True)
class DegradationConfig(ModelConfig):
    """Ranges of the random degradation (all ranges inclusive ``(low, high)``)."""

    kernel_size: int = 21
    isotropic_prob: float = 0.5
    sigma_range: tuple[float, float] = (0.2, 3.0)
    downscale_range: tuple[float, float] = (1.0, 2.0)
    noise_range: tuple[float, float] = (0.0, 10.0)
    jpeg_range: tuple[int, int] = (60, 100)

    def validate(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        if not 0.0 <= self.isotropic_prob <= 1.0:
            raise ValueError(f"isotropic_prob must be in [0, 1], got {self.isotropic_prob}")
        for name, (lo, hi), minimum in (
            ("sigma_range", self.sigma_range, 1e-3),
            ("downscale_range", self.downscale_range, 1.0),
            ("noise_range", self.noise_range, 0.0),
            ("jpeg_range", self.jpeg_range, 1),
        ):
            if not minimum <= lo <= hi:
                raise ValueError(f"{name} must satisfy {minimum} <= low <= high, got {(lo, hi)}")
        if self.jpeg_range[1] > 100:
            raise ValueError(f"jpeg_range must lie in [1, 100], got {self.jpeg_range}")


@dataclass(frozen=True)
class DegradationParams:
    """One draw of the degradation, shared by all frames of a clip."""

    kernel: np.ndarray  # k×k float32, sums to 1
    extra_scale: float
    interpolation: int
    noise_sigma: float
    jpeg_quality: int


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Normalised (an)isotropic Gaussian ``size×size`` kernel rotated by ``theta`` radians."""
    r = size // 2
    ax = np.arange(-r, r + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    inv = np.linalg.inv(cov)
    pts = np.stack([xx, yy], -1)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", pts, inv, pts))
    return (k / k.sum()).astype(np.float32)


def sample_degradation(config: DegradationConfig, rng: np.random.Generator) -> DegradationParams:
    """Draw one :class:`DegradationParams` from ``config``'s ranges."""
    lo, hi = config.sigma_range
    if rng.random() < config.isotropic_prob:
        sx = sy = float(rng.uniform(lo, hi))
        theta = 0.0
    else:
        sx, sy = (float(v) for v in rng.uniform(lo, hi, size=2))
        theta = float(rng.uniform(0.0, math.pi))
    return DegradationParams(
        kernel=gaussian_kernel(config.kernel_size, sx, sy, theta),
        extra_scale=float(rng.uniform(*config.downscale_range)),
        interpolation=int(_INTERPOLATIONS[rng.integers(len(_INTERPOLATIONS))]),
        noise_sigma=float(rng.uniform(*config.noise_range)),
        jpeg_quality=int(rng.integers(config.jpeg_range[0], config.jpeg_range[1] + 1)),
    )


def apply_degradation(
    frames: np.ndarray, params: DegradationParams, lr_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Degrade a clip ``T×H×W×3`` uint8 to ``T×lr_size×lr_size×3`` uint8 with ``params`` (noise from ``rng``)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 T×H×W×3 frames, got {frames.dtype} {frames.shape}")
    if lr_size < 1:
        raise ValueError(f"lr_size must be >= 1, got {lr_size}")
    small = max(1, int(round(lr_size / params.extra_scale)))
    out = np.empty((frames.shape[0], lr_size, lr_size, 3), np.uint8)
    for i, frame in enumerate(frames):
        x = cv2.filter2D(frame.astype(np.float32), -1, params.kernel, borderType=cv2.BORDER_REFLECT_101)
        x = cv2.resize(x, (small, small), interpolation=params.interpolation)
        if small != lr_size:
            x = cv2.resize(x, (lr_size, lr_size), interpolation=cv2.INTER_LINEAR)
        if params.noise_sigma > 0:
            x = x + rng.normal(0.0, params.noise_sigma, size=x.shape).astype(np.float32)
        x8 = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        if params.jpeg_quality < 100:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(x8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            x8 = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        out[i] = x8
    return out


def degrade_clip(frames: np.ndarray, config: DegradationConfig, lr_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one degradation and apply it to every frame of ``frames`` (``T×H×W×3`` uint8)."""
    return apply_degradation(frames, sample_degradation(config, rng), lr_size, rng)
