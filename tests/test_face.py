"""Face utilities on real inputs: detection, crop/paste-back, landmark image, regions, smoothing."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from metaportrait.errors import MultipleFacesWarning, NoFaceError
from metaportrait.evaluation.metrics import psnr
from metaportrait.face import (
    EDGE_PALETTE,
    FACE_OVAL,
    FACEMESH_EDGES,
    LEFT_EYE,
    MOUTH_INNER,
    MOUTH_OUTER,
    RIGHT_EYE,
    CropTransform,
    FaceAnalyzer,
    OneEuroFilter,
    draw_landmark_image,
    five_points,
    region_boxes,
    region_mask,
    smooth_track,
)


@pytest.fixture(scope="module")
def analyzer():
    with FaceAnalyzer() as a:
        yield a


@pytest.fixture(scope="module")
def astronaut_face(analyzer, astronaut):
    return analyzer.largest(astronaut)


@pytest.fixture(scope="module")
def franck_track(driving_frames):
    with FaceAnalyzer(static_image_mode=False) as a:
        return np.stack([a.largest(f).landmarks for f in driving_frames])


# -- detection -------------------------------------------------------------------------------
def test_astronaut_478_landmarks_inside_face_box(astronaut_face, astronaut):
    f = astronaut_face
    assert f.landmarks.shape == (478, 2) and f.landmarks.dtype == np.float32
    assert f.landmarks_3d.shape == (478, 3) and f.landmarks_3d.dtype == np.float32
    np.testing.assert_allclose(f.landmarks_3d[:, :2], f.landmarks)
    x0, y0, x1, y1 = f.box
    assert (f.landmarks[:, 0] >= x0).all() and (f.landmarks[:, 0] <= x1).all()
    assert (f.landmarks[:, 1] >= y0).all() and (f.landmarks[:, 1] <= y1).all()
    # the astronaut's face: upper middle-left of the 512² portrait, 60-160 px wide
    assert 150 < (x0 + x1) / 2 < 300 and 80 < (y0 + y1) / 2 < 200
    assert 60 < x1 - x0 < 160
    assert 0.5 <= f.score <= 1.0


def test_no_face_raises(analyzer, no_face_image):
    assert analyzer.detect(no_face_image) == []
    with pytest.raises(NoFaceError, match="400"):
        analyzer.largest(no_face_image)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64, 3), float)],
)
def test_invalid_input_raises(analyzer, bad):
    with pytest.raises(ValueError, match=r"shape|dtype"):
        analyzer.detect(bad)


def test_two_faces_largest_and_warning(analyzer, astronaut):
    small = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    two = np.concatenate([astronaut, np.pad(small, ((0, 128), (0, 0), (0, 0)))], axis=1)
    faces = analyzer.detect(two)
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    with pytest.warns(MultipleFacesWarning):
        big = analyzer.largest(two)
    assert big.box[2] < 512  # the full-size face, on the left


def test_small_face_in_large_frame(analyzer, astronaut):
    """A ~55 px face in a 1280×720 frame: the mesh alone misses it, the fallbacks find it."""
    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[300:600, 700:1000] = cv2.resize(astronaut, (300, 300), interpolation=cv2.INTER_AREA)
    face = analyzer.largest(frame)
    x0, y0, x1, y1 = face.box
    assert 790 < x0 < 820 and 330 < y0 < 355 and 850 < x1 < 875 and 395 < y1 < 415


def test_video_tracking_finds_every_frame(franck_track):
    assert franck_track.shape == (24, 478, 2)
    # face is in the middle of the 360×288 clip
    centre = franck_track.mean((0, 1))
    assert 100 < centre[0] < 260 and 80 < centre[1] < 220


# -- crop --------------------------------------------------------------------------------------
def test_crop_geometry_round_trip(astronaut_face, astronaut):
    t = CropTransform.from_landmarks(astronaut_face.landmarks, size=256)
    lm = astronaut_face.landmarks
    ext = float(max(lm.max(0) - lm.min(0)))
    assert 1.5 * ext < t.side < 2.5 * ext
    crop_pts = t.points_to_crop(lm)
    assert crop_pts.min() > 0 and crop_pts.max() < 256
    np.testing.assert_allclose(t.points_to_image(crop_pts), lm, atol=1e-3)
    m = t.matrix
    np.testing.assert_allclose(lm @ m[:, :2].T + m[:, 2], crop_pts, atol=1e-3)
    crop = t.crop(astronaut)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    # the crop shows the face: its landmarks re-detected in the crop match the mapped ones
    with FaceAnalyzer() as a:
        again = a.largest(crop).landmarks
    assert np.median(np.linalg.norm(again - crop_pts, axis=1)) < 3.0
    assert t.rescaled(512).points_to_crop(lm) == pytest.approx(crop_pts * 2, abs=1e-3)


def test_crop_beyond_image_border(astronaut):
    t = CropTransform(center=(20.0, 30.0), side=300.0, size=128)
    crop = t.crop(astronaut)
    assert crop.shape == (128, 128, 3)
    assert crop.std() > 10  # reflected content, not an empty border


def test_paste_back_round_trip(astronaut_face, astronaut):
    t = CropTransform.from_landmarks(astronaut_face.landmarks, size=512)
    crop = t.crop(astronaut)
    out = t.paste_back(astronaut, crop)
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    x0, y0, x1, y1 = t.box
    inside = np.zeros(astronaut.shape[:2], bool)
    inside[max(0, int(np.floor(y0))) : int(np.ceil(y1)) + 1,
           max(0, int(np.floor(x0))) : int(np.ceil(x1)) + 1] = True
    assert np.array_equal(out[~inside], astronaut[~inside])
    assert psnr(out[inside], astronaut[inside]) > 30
    # a different generated image changes only the box, with a feathered (not hard) edge
    grey = np.full_like(crop, 128)
    pasted = t.paste_back(astronaut, grey)
    assert np.array_equal(pasted[~inside], astronaut[~inside])
    cy, cx = int(t.center[1]), int(t.center[0])
    assert np.abs(pasted[cy, cx].astype(int) - 128).max() <= 1
    mask = t.paste_mask(astronaut.shape)
    assert 0 < mask[cy, int(x0) + 3] < 0.5  # near the box edge: mostly the original


# -- landmark image ----------------------------------------------------------------------------
def test_edges_and_palette():
    assert FACEMESH_EDGES.ndim == 2 and FACEMESH_EDGES.shape[1] == 2
    assert (FACEMESH_EDGES[:, 0] < FACEMESH_EDGES[:, 1]).all()
    assert len({tuple(e) for e in FACEMESH_EDGES.tolist()}) == len(FACEMESH_EDGES)
    assert FACEMESH_EDGES.max() == 477  # irises included
    assert EDGE_PALETTE.shape == (len(FACEMESH_EDGES), 3) and EDGE_PALETTE.dtype == np.uint8
    assert EDGE_PALETTE.max(1).min() >= 150  # never near-black
    assert len({tuple(c) for c in EDGE_PALETTE.tolist()}) > 0.95 * len(EDGE_PALETTE)


def test_landmark_image_deterministic_and_nontrivial(astronaut_face):
    t = CropTransform.from_landmarks(astronaut_face.landmarks, size=256)
    pts = t.points_to_crop(astronaut_face.landmarks)
    a = draw_landmark_image(pts, 256)
    b = draw_landmark_image(pts.copy(), 256)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    lit = a.max(2) > 0
    assert lit.mean() > 0.1
    assert len(np.unique(a[lit].reshape(-1, 3), axis=0)) > 500
    # outside the face hull the canvas stays black
    assert not lit[:, :10].any() and not lit[:10].any()
    # sub-pixel input moves the drawing
    c = draw_landmark_image(pts + 0.25, 256)
    assert c.tobytes() != a.tobytes()


# -- regions -----------------------------------------------------------------------------------
def test_region_constants():
    assert len(LEFT_EYE) == len(RIGHT_EYE) == 16 and 33 in LEFT_EYE and 263 in RIGHT_EYE
    assert len(MOUTH_OUTER) == len(MOUTH_INNER) == 20 and 61 in MOUTH_OUTER and 78 in MOUTH_INNER
    assert len(FACE_OVAL) == 36 and 152 in FACE_OVAL


def test_five_points_order(astronaut_face):
    p = five_points(astronaut_face.landmarks)
    assert p.shape == (5, 2) and p.dtype == np.float32
    left_eye, right_eye, nose, mouth_l, mouth_r = p
    assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    assert left_eye[0] < nose[0] < right_eye[0]


def test_region_boxes_and_masks(astronaut_face):
    t = CropTransform.from_landmarks(astronaut_face.landmarks, size=256)
    pts = t.points_to_crop(astronaut_face.landmarks)
    boxes = region_boxes(pts, 256)
    for box in (boxes.left_eye, boxes.right_eye, boxes.mouth):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
    assert boxes.left_eye[2] <= boxes.right_eye[0] + 5
    assert boxes.mouth[1] > boxes.left_eye[3]
    eyes = region_mask(pts, 256, "eyes")
    mouth = region_mask(pts, 256, "mouth")
    face = region_mask(pts, 256, "face")
    for m in (eyes, mouth, face):
        assert m.dtype == np.float32 and m.shape == (256, 256) and 0 <= m.min() and m.max() == 1
    assert eyes.sum() < mouth.sum() * 3 and face.sum() > 5 * (eyes.sum() + mouth.sum())
    assert (face[mouth > 0] > 0).mean() > 0.99  # the mouth lies inside the face
    x0, y0, x1, y1 = boxes.mouth
    assert mouth[y0:y1, x0:x1].sum() == mouth.sum()
    assert region_mask(pts, 256, "eyes", dilate=0).sum() < eyes.sum()
    with pytest.raises(ValueError, match="nose"):
        region_mask(pts, 256, "nose")  # type: ignore[arg-type]


# -- smoothing ---------------------------------------------------------------------------------
def test_one_euro_filter_smooths_noise_and_follows_steps():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    noisy = 5.0 + rng.normal(0, 1.0, size=(200, 3))
    out = np.stack([f(x, i / 30) for i, x in enumerate(noisy)])
    assert out[50:].std() < 0.5 * noisy[50:].std()
    f.reset()
    assert np.array_equal(f(np.array([1.0, 2.0]), 0.0), [1.0, 2.0])
    with pytest.raises(ValueError, match="time must increase"):
        f(np.array([1.0, 2.0]), 0.0)


def test_smooth_track_reduces_jitter_keeps_mouth(franck_track):
    stable = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 33, 133, 362, 263]

    def jitter(t):
        return np.linalg.norm(t[2:, stable] - 2 * t[1:-1, stable] + t[:-2, stable], axis=-1).mean()

    smooth = smooth_track(franck_track, fps=24)
    assert smooth.shape == franck_track.shape and smooth.dtype == np.float32
    assert jitter(smooth) < 0.8 * jitter(franck_track)
    mouth_raw = np.linalg.norm(franck_track[:, 13] - franck_track[:, 14], axis=-1)
    mouth_s = np.linalg.norm(smooth[:, 13] - smooth[:, 14], axis=-1)
    assert np.sqrt(((mouth_s - mouth_raw) ** 2).mean()) < 1.5
