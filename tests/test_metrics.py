"""One PSNR and one SSIM: every evaluation path computes the same number for the same images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metaportrait.evaluation import reenactment
from metaportrait.evaluation.metrics import PSNR_CAP_DB, psnr, ssim
from metaportrait.evaluation.temporal import psnr_frames, ssim_frames


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_convention_is_skimage_on_uint8_with_range_255(pair):
    a, b = pair[0][0], pair[1][0]
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    assert ssim(a, b) == pytest.approx(structural_similarity(a, b, channel_axis=2, data_range=255), abs=1e-12)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)


def test_reenactment_uses_the_same_functions():
    assert reenactment.psnr is psnr and reenactment.ssim is ssim


def test_sequence_metrics_are_means_of_the_frame_metrics(pair):
    a, b = pair
    assert psnr_frames(b, a) == pytest.approx(np.mean([psnr(x, y) for x, y in zip(b, a)]), abs=1e-9)
    assert ssim_frames(b, a) == pytest.approx(np.mean([ssim(x, y) for x, y in zip(b, a)]), abs=1e-12)
    assert psnr_frames(a, a) == PSNR_CAP_DB
    # float frames in [0, 1] are the same frames on the 0..255 scale
    assert psnr_frames(b / 255.0, a / 255.0) == pytest.approx(psnr_frames(b, a), abs=1e-9)


def test_stretch_scores_cover_only_the_mask(astronaut):
    """Stretch-region PSNR and detail look only at the masked pixels; too small a mask gives nothing."""
    import cv2

    truth = np.ascontiguousarray(astronaut[100:228, 180:308])
    mask = np.zeros(truth.shape[:2], bool)
    mask[40:80, 40:80] = True
    changed = truth.copy()
    changed[~mask] = 0  # outside the mask: ignored
    assert reenactment.stretch_scores(changed, truth, mask)["stretch_psnr"] == float("inf")
    assert reenactment.stretch_scores(truth, truth, mask)["stretch_detail"] == 1.0
    blurred = truth.copy()
    blurred[mask] = cv2.GaussianBlur(truth, (0, 0), 2.0)[mask]
    worse = reenactment.stretch_scores(blurred, truth, mask)
    assert worse["stretch_psnr"] < 40 and worse["stretch_detail"] < 0.8
    tiny = np.zeros_like(mask)
    tiny[:4, :4] = True
    assert reenactment.stretch_scores(blurred, truth, tiny) == {}
