"""The one PSNR and the one SSIM of the package (reenactment tables, super-resolution evaluation,
personalization validation all call these).

Convention: both compare two uint8 ``H×W×3`` images with data range 255 (float input is accepted
on that 0..255 scale). PSNR is ``10·log10(255² / MSE)``, computed in float64, infinite for
identical images (callers that average cap it). SSIM is ``skimage.metrics.structural_similarity``
with its defaults — a 7×7 uniform window, sample covariance — over the three channels
(``channel_axis=2``); :func:`metaportrait.training.losses.ssim` is its differentiable twin.
"""

from __future__ import annotations

import numpy as np

# Where PSNRs are averaged, an identical pair (infinite PSNR) counts as this many dB.
PSNR_CAP_DB = 100.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images on the 0..255 scale (``inf`` when they are equal)."""
    mse = np.mean((np.asarray(a).astype(np.float64) - np.asarray(b).astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two ``H×W×3`` images on the 0..255 scale (7×7 uniform window, per channel)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


__all__ = ["PSNR_CAP_DB", "psnr", "ssim"]
