"""The eye-interior network in the render path (issue 15): strict loading, drawing only inside the
eye mask while the driving eye closes further than the source's, nothing at all otherwise."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from metaportrait.errors import WeightsError
from metaportrait.eyes import EYES, EyeFiller, eye_frame, eye_mask, eye_opening, fill_strength
from metaportrait.face.controls import set_eye_opening
from metaportrait.models.eye_interior import EyeInteriorConfig, EyeInteriorNetwork
from metaportrait.mouth import apply_affine, index_affine
from metaportrait.pipeline import MetaPortraitPipeline, draw

from conftest import REPO

SHIPPED = REPO / "weights" / "eye_interior"


@pytest.fixture(scope="module")
def pipe():
    return MetaPortraitPipeline.from_pretrained(device="cpu", mouth_interior=False)


@pytest.fixture(scope="module")
def source(pipe, mona_lisa):
    return pipe.prepare_source(mona_lisa)


def test_shipped_weights_load_strictly(tmp_path):
    net = EyeInteriorNetwork.from_pretrained(SHIPPED)
    assert net.num_parameters() < 1_000_000
    assert (SHIPPED / "model.safetensors").stat().st_size <= 2_000_000
    assert json.loads((SHIPPED / "config.json").read_text())["eye_width"] == net.config.eye_width
    (tmp_path / "config.json").write_text((SHIPPED / "config.json").read_text())
    tensors = load_file(str(SHIPPED / "model.safetensors"))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError):
        EyeInteriorNetwork.from_pretrained(tmp_path)


def test_pipeline_loads_the_eye_network_when_shipped(pipe):
    assert pipe.eyes is not None
    assert MetaPortraitPipeline.from_pretrained(device="cpu", mouth_interior=False, eye_interior=False).eyes is None


def test_fill_strength_ramps_with_the_closing(source):
    lm = source.landmarks
    assert [fill_strength(lm, lm, e) for e in (0, 1)] == [0.0, 0.0]
    assert [fill_strength(set_eye_opening(lm, 1.2), lm, e) for e in (0, 1)] == [0.0, 0.0]  # opened wider
    ramp = [fill_strength(set_eye_opening(lm, v), lm, 0) for v in (0.0, 0.3, 0.5, 0.7)]
    assert ramp[0] == 1.0 and all(a >= b for a, b in zip(ramp, ramp[1:]))


def test_eye_frames_put_the_outer_corner_left(source):
    lm = source.landmarks
    for eye, outer, inner in ((0, 33, 133), (1, 263, 362)):
        a = eye_frame(lm, eye, 48, 24.0)
        (xo, yo), (xi, yi) = apply_affine(a, lm[[outer, inner]])
        assert xo == pytest.approx(12.0) and xi == pytest.approx(36.0) and yo == pytest.approx(24.0)
    with pytest.raises(ValueError, match="eye corners"):
        eye_frame(np.zeros((478, 2)), 0, 48, 24.0)


def _mask_in_frame(pipe, source, lm: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Union over both eyes of the eye mask mapped into the output frame (``lm``: frame pixels)."""
    filler = pipe.eyes
    s, width = filler.crop_size, filler.eye_width
    total = np.zeros(shape[:2], np.float32)
    for eye in (0, 1):
        a = eye_frame(lm, eye, s, width)
        src_contour = filler.source_inputs(source.face, source.landmarks, eye)[1]
        mask = eye_mask(apply_affine(a, lm[list(EYES[eye][1])]), src_contour, width, s)
        total = np.maximum(total, cv2.warpAffine(mask, index_affine(a), (shape[1], shape[0]),
                                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return total


@pytest.mark.parametrize("paste_back", [False, True])
def test_closing_eyes_are_drawn_inside_the_mask_only(pipe, source, paste_back):
    target = set_eye_opening(source.landmarks, 0.0)
    assert min(fill_strength(target, source.landmarks, e) for e in (0, 1)) == 1.0
    grid = pipe.prior_grid(source, target)
    warp = draw(source, grid, None, paste_back, 256)
    ours = draw(source, grid, None, paste_back, 256, target=target, eyes=pipe.eyes)
    lm = target[:, :2].astype(np.float64)
    if paste_back:
        lm = source.crop.points_to_image(lm)
    mask = _mask_in_frame(pipe, source, lm, warp.shape)
    changed = np.any(ours != warp, axis=2)
    assert not np.any(changed & (mask == 0))  # exactly the warp outside the mask
    inside = mask > 0.99
    assert inside.sum() > 40
    diff = np.abs(ours[inside].astype(np.float32) - warp[inside].astype(np.float32)).mean()
    assert diff > 3.0  # the squeezed open eye is redrawn as a lid


def test_eyes_as_open_as_the_source_leave_the_frame_unchanged(pipe, source):
    for target in (source.landmarks, set_eye_opening(source.landmarks, 1.2)):
        grid = pipe.prior_grid(source, target)
        for paste_back in (False, True):
            warp = draw(source, grid, None, paste_back, 256)
            assert np.array_equal(draw(source, grid, None, paste_back, 256, target=target, eyes=pipe.eyes), warp)


def test_untrained_network_gives_the_warp_back(source):
    filler = EyeFiller(EyeInteriorNetwork(EyeInteriorConfig(base_channels=8, max_channels=16, levels=2)))
    target = set_eye_opening(source.landmarks, 0.0)
    out = filler(source.face, target, source.face, source.landmarks)
    diff = np.abs(out.astype(np.float32) - source.face.astype(np.float32))
    assert diff.max() > 0 and diff[diff > 0].mean() < 6.0  # the crop's resampling there and back only
    assert eye_opening(target, 0) < 0.02
