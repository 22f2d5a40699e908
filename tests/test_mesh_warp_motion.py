"""Classical mesh warp (docs/METHOD.md §4.1) and cross-identity relative motion (§3) on real faces."""

from __future__ import annotations

import time

import numpy as np
import pytest

from metaportrait.face import (
    CropTransform,
    FaceAnalyzer,
    mesh_warp_grid,
    mesh_warp_image,
    relative_landmarks,
    transfer_landmarks,
)


def _identity_grid(n: int) -> np.ndarray:
    c = (np.arange(n) + 0.5) / n * 2 - 1
    gx, gy = np.meshgrid(c, c)
    return np.stack([gx, gy], -1)


@pytest.fixture(scope="module")
def clip(driving_video):
    """Every 6th frame of the whole 120-frame clip (the man opens his mouth after frame 24)."""
    import av

    with av.open(str(driving_video)) as c:
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i % 6 == 0]


@pytest.fixture(scope="module")
def faces(astronaut, clip):
    with FaceAnalyzer() as a:
        astro = a.largest(astronaut)
        f0 = a.largest(clip[0])
        later = [a.largest(f) for f in clip[1:]]
    return astro, f0, later


def _gap(lm: np.ndarray) -> float:
    """Mouth opening relative to face height."""
    return float(np.linalg.norm(lm[13] - lm[14]) / np.linalg.norm(lm[10] - lm[152]))


@pytest.fixture(scope="module")
def mouth_moved(faces):
    """(index into ``clip``, face) of the later frame whose mouth opening differs most from 0."""
    _, f0, later = faces
    k = int(np.argmax([abs(_gap(f.landmarks) - _gap(f0.landmarks)) for f in later]))
    assert abs(_gap(later[k].landmarks) - _gap(f0.landmarks)) > 0.03
    return k + 1, later[k]


def _face_props(lm: np.ndarray) -> np.ndarray:
    h = np.linalg.norm(lm[10] - lm[152])
    return np.array([np.linalg.norm(lm[468] - lm[473]) / h, np.linalg.norm(lm[234] - lm[454]) / h])


# -- mesh warp ---------------------------------------------------------------------------------
def test_identity_grid(faces):
    t = CropTransform.from_landmarks(faces[0].landmarks, size=256)
    lm = t.points_to_crop(faces[0].landmarks)
    for n in (256, 64):
        g = mesh_warp_grid(lm, lm, 256, out_size=n)
        assert g.shape == (n, n, 2) and g.dtype == np.float32
        assert np.abs(g - _identity_grid(n)).max() < 1e-4


def test_grid_speed(faces):
    _, f0, later = faces
    t = CropTransform.from_landmarks(f0.landmarks, size=256)
    a, b = t.points_to_crop(f0.landmarks), t.points_to_crop(later[-1].landmarks)
    mesh_warp_grid(a, b, 256)
    start = time.process_time()
    for _ in range(10):
        mesh_warp_grid(a, b, 256)
    per_call = (time.process_time() - start) / 10
    assert per_call < 0.05  # ≈ 14 ms measured; generous bound for busy CI machines


def test_translation_moves_face(faces, astronaut):
    lm = faces[0].landmarks
    shift = np.array([7.0, -5.0], np.float32)
    warped = mesh_warp_image(astronaut, lm, lm + shift)
    assert warped.shape == astronaut.shape and warped.dtype == np.uint8
    # inside the (shrunken) face hull the output is the source translated by `shift`
    lo, hi = lm.min(0) + 15, lm.max(0) - 15
    x0, y0 = (lo + shift).astype(int)
    x1, y1 = (hi + shift).astype(int)
    got = warped[y0:y1, x0:x1].astype(float)
    want = astronaut[y0 + 5 : y1 + 5, x0 - 7 : x1 - 7].astype(float)
    assert np.abs(got - want).mean() < 2.0
    # and it is not the untranslated source
    assert np.abs(astronaut[y0:y1, x0:x1].astype(float) - want).mean() > 5.0
    # the frame border stays put (anchors)
    assert np.abs(warped[:3].astype(float) - astronaut[:3]).mean() < 2.0


def test_mesh_warp_beats_no_motion_on_real_pair(clip, faces, mouth_moved):
    _, f0, _ = faces
    k, fk = mouth_moved
    src, drv = clip[0], clip[k]
    warped = mesh_warp_image(src, f0.landmarks, fk.landmarks)
    x0, y0, x1, y1 = (int(v) for v in fk.box)
    box = (slice(y0, y1), slice(x0, x1))
    l1_none = np.abs(src[box].astype(float) - drv[box]).mean()
    l1_warp = np.abs(warped[box].astype(float) - drv[box]).mean()
    assert l1_warp < l1_none


def test_grid_matches_image_warp(faces, astronaut):
    """The normalised grid and the cv2 warp describe the same map (grid_sample semantics)."""
    lm = faces[0].landmarks
    drv = lm + np.array([4.0, 3.0], np.float32)
    g = mesh_warp_grid(lm, drv, 512, out_size=64)
    px = (g + 1) / 2 * 512  # continuous source positions
    cx, cy = (lm.min(0) + lm.max(0)) / 2 / 512 * 64
    i, j = int(cy), int(cx)
    np.testing.assert_allclose(px[i, j], [(j + 0.5) * 8 - 4, (i + 0.5) * 8 - 3], atol=1e-2)


def test_mesh_warp_rejects_bad_input(faces):
    lm = faces[0].landmarks
    with pytest.raises(ValueError, match="differ in length"):
        mesh_warp_grid(lm, lm[:100], 256)
    with pytest.raises(ValueError, match="size"):
        mesh_warp_grid(lm, lm, 0)


# -- relative motion ---------------------------------------------------------------------------
@pytest.mark.parametrize("use_3d", [False, True])
def test_relative_identity(faces, use_3d):
    astro, f0, _ = faces
    s = astro.landmarks_3d if use_3d else astro.landmarks
    r = f0.landmarks_3d if use_3d else f0.landmarks
    out = relative_landmarks(s, r, r)
    assert out.shape == (478, 2) and out.dtype == np.float32
    assert np.abs(out - astro.landmarks).max() < 1e-3
    # relative to the neutral faces: only the mouth and jaw may move (to close the source's mouth)
    neutral = relative_landmarks(s, r, r, neutral_mouth=True)
    still = [1, 10, 33, 133, 168, 263, 362, 468, 473]
    assert np.abs(neutral[still] - astro.landmarks[still]).max() < 1e-3


@pytest.mark.parametrize("use_3d", [False, True])
def test_driver_shape_does_not_leak(faces, mouth_moved, use_3d):
    astro, f0, _ = faces
    _, fk = mouth_moved
    if use_3d:
        out = relative_landmarks(astro.landmarks_3d, fk.landmarks_3d, f0.landmarks_3d)
    else:
        out = relative_landmarks(astro.landmarks, fk.landmarks, f0.landmarks)
    p_src, p_drv, p_out = _face_props(astro.landmarks), _face_props(fk.landmarks), _face_props(out)
    assert np.abs(p_src - p_drv).min() > 0.03  # the two people really differ
    assert (np.abs(p_out - p_src) < np.abs(p_out - p_drv)).all()
    # while the expression moved: the mouth opened by about as much as the driver's did
    d_out = _gap(out) - _gap(astro.landmarks)
    d_drv = _gap(fk.landmarks) - _gap(f0.landmarks)
    assert np.sign(d_out) == np.sign(d_drv) and 0.5 < d_out / d_drv < 1.5


def test_relative_transfers_head_pose(faces):
    """A pure in-plane rotation + shift of the driver rotates/shifts the source the same way."""
    astro, f0, _ = faces
    ang = np.deg2rad(10.0)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]], np.float32)
    c = f0.landmarks.mean(0)
    drv = (f0.landmarks - c) @ rot.T + c + np.array([5.0, 0.0], np.float32)
    out = relative_landmarks(astro.landmarks, drv, f0.landmarks)
    v_src = astro.landmarks[263] - astro.landmarks[33]
    v_out = out[263] - out[33]
    turned = np.arctan2(v_out[1], v_out[0]) - np.arctan2(v_src[1], v_src[0])
    assert np.rad2deg(turned) == pytest.approx(10.0, abs=0.5)


def test_transfer_modes(faces, mouth_moved):
    astro, f0, _ = faces
    _, fk = mouth_moved
    np.testing.assert_array_equal(
        transfer_landmarks(astro.landmarks, fk.landmarks, f0.landmarks, "absolute"), fk.landmarks
    )
    np.testing.assert_array_equal(
        transfer_landmarks(astro.landmarks, fk.landmarks, f0.landmarks, "relative"),
        relative_landmarks(astro.landmarks, fk.landmarks, f0.landmarks),
    )
    with pytest.raises(ValueError, match="mode"):
        transfer_landmarks(astro.landmarks, fk.landmarks, f0.landmarks, "both")  # type: ignore[arg-type]
