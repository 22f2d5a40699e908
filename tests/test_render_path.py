"""The sharp render path: full-head geometry, native-resolution rendering, blinks and the neutral
mouth, on real faces and real video with the embedded weights (examples/README.md)."""

from __future__ import annotations

import itertools
import warnings

import cv2
import numpy as np
import pytest

from metaportrait.evaluation.reenactment import detail_ratio, eye_opening, face_box, mouth_opening, psnr
from metaportrait.face import CropTransform, FaceAnalyzer
from metaportrait.face.head_mesh import flipped_triangles, head_mesh, head_points, source_triangles, with_anchors
from metaportrait.face.motion import close_mouth, irises_inside_eyelids, relative_landmarks
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.render import displacement, render_crop, render_into_photo
from metaportrait.video import iter_frames

from conftest import EXAMPLES


@pytest.fixture(scope="module")
def pipe() -> MetaPortraitPipeline:
    return MetaPortraitPipeline.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def big_astronaut(astronaut) -> np.ndarray:
    """The astronaut at 1400² (a photo whose face crop has more than 512 px)."""
    return cv2.resize(astronaut, (1400, 1400), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def big_source(pipe, big_astronaut):
    return pipe.prepare_source(big_astronaut)


def _box_psnr(a: np.ndarray, b: np.ndarray, landmarks: np.ndarray) -> float:
    x0, y0, x1, y1 = face_box(landmarks, a.shape)
    return psnr(a[y0:y1, x0:x1], b[y0:y1, x0:x1])


def test_identity_grid_renders_the_photo_exactly(astronaut):
    n = 64
    lin = (np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0
    grid = np.stack(np.meshgrid(lin, lin), axis=-1)
    assert np.abs(displacement(grid)).max() < 1e-6
    face = astronaut[100:356, 150:406].copy()
    assert np.array_equal(render_crop(face, grid), face)
    crop = CropTransform(center=(250.0, 220.0), side=300.0, size=n)
    assert np.array_equal(render_into_photo(astronaut, crop, grid), astronaut)
    # a residual is added only where it has content
    residual = np.zeros((n, n, 3), np.float32)
    residual[20:30, 20:30] = 0.5
    out = render_crop(face, grid, residual).astype(int)
    assert out[100:110, 100:110].mean() > face[100:110, 100:110].astype(int).mean() + 20
    assert np.array_equal(out[:50, :50], face[:50, :50].astype(int))
    with pytest.raises(ValueError, match="grid must be"):
        render_crop(face, grid[:, :10])


def test_known_answer_native_resolution(pipe, big_astronaut, big_source):
    """Every driving frame equals the source: the output is the source, at 512², ≥ 40 dB."""
    assert big_source.crop.side >= 512
    out = list(pipe.animate(big_source, [big_astronaut] * 3, ReenactOptions(visible_label=False)))
    assert out[0].shape == (512, 512, 3)  # default size: 512 when the photo has the pixels
    ref = big_source.face_at(512)
    lm512 = big_source.landmarks * (512 / pipe.size)
    for frame in out:
        assert _box_psnr(frame, ref, lm512) >= 40.0
    pasted = list(pipe.animate(big_source, [big_astronaut] * 2, ReenactOptions(visible_label=False, paste_back=True)))
    assert pasted[0].shape == big_astronaut.shape
    lm_photo = big_source.crop.points_to_image(big_source.landmarks)
    assert _box_psnr(pasted[-1], big_astronaut, lm_photo) >= 40.0


@pytest.mark.parametrize("size", [256, 512, 1024])
def test_output_sizes(pipe, big_source, size):
    out = pipe.generate(big_source, [big_source.landmarks], size=size)
    assert out.shape == (1, size, size, 3)
    # sampled from the photo at that size: as sharp as the photo's own crop
    ref = big_source.face_at(size)
    lm = big_source.landmarks * (size / pipe.size)
    assert detail_ratio(out[0], ref, lm) > 0.97


def test_small_face_defaults_to_working_size(pipe, astronaut):
    src = pipe.prepare_source(astronaut)
    assert src.crop.side < 512
    frames = list(pipe.animate(src, [astronaut], ReenactOptions(visible_label=False)))
    assert frames[0].shape == (256, 256, 3)
    with pytest.raises(ValueError, match="size must be 256, 512 or 1024"):
        ReenactOptions(size=300)


def test_super_resolution_only_where_the_photo_lacks_the_pixels(pipe, astronaut, big_source, driving_frames):
    """``super_resolution``: a 202 px face is rendered at 256² and upscaled by the temporal SR network
    to 512², with more fine detail than sampling the small photo at 512² (measured 38.4 vs 37.0 mean
    Sobel, +4 %) and the same colours; a face that already has the pixels is rendered at 512² from
    the photo (bit for bit), and a warning says SR was skipped."""
    frames = driving_frames[:6]
    small = pipe.prepare_source(astronaut)
    assert small.crop.side < 512
    stats: dict[str, float] = {}
    sr = list(pipe.animate(small, frames, ReenactOptions(super_resolution=True, visible_label=False), stats))
    plain = list(pipe.animate(small, frames, ReenactOptions(size=512, visible_label=False)))
    assert len(sr) == len(plain) == len(frames) and sr[0].shape == (512, 512, 3)
    assert stats["super_resolution"] > 0
    lm = small.landmarks * (512 / pipe.size)
    box = face_box(lm, sr[0].shape)
    from metaportrait.evaluation.reenactment import sobel_detail

    assert np.mean([sobel_detail(f, box) for f in sr]) > 1.02 * np.mean([sobel_detail(f, box) for f in plain])
    x0, y0, x1, y1 = box
    colour = lambda fs: np.mean([f[y0:y1, x0:x1].reshape(-1, 3).mean(0) for f in fs], 0)
    assert np.abs(colour(sr) - colour(plain)).max() < 3
    assert psnr(sr[3], plain[3]) > 28  # the same picture, not another one
    with pytest.warns(UserWarning, match="super-resolution skipped: the face is 5[0-9][0-9] px"):
        big = list(pipe.animate(big_source, frames[:2], ReenactOptions(super_resolution=True, visible_label=False)))
    direct = list(pipe.animate(big_source, frames[:2], ReenactOptions(size=512, visible_label=False)))
    assert all(np.array_equal(a, b) for a, b in zip(big, direct))
    with pytest.raises(ValueError, match="super_resolution upscales the face crop"):
        ReenactOptions(super_resolution=True, paste_back=True)
    with pytest.raises(ValueError, match="super_resolution gives 512"):
        ReenactOptions(super_resolution=True, size=1024)


def test_reenactment_keeps_the_photos_detail(pipe, big_source, driving_frames):
    """Cross-identity reenactment by a real talking face keeps ≥ 90 % of the source's fine detail
    in the face box (the blurred 256² path kept 79-80 %)."""
    out = list(pipe.animate(big_source, driving_frames[:12], ReenactOptions(visible_label=False)))
    ref = big_source.face_at(512)
    lm = big_source.landmarks * (512 / pipe.size)
    ratios = [detail_ratio(f, ref, lm) for f in out]
    assert min(ratios) >= 0.9, ratios
    # the face did move
    assert min(_box_psnr(f, ref, lm) for f in out[1:]) < 36


def test_paste_back_changes_only_the_head(pipe, big_astronaut, big_source, driving_frames):
    frames = list(pipe.animate(big_source, driving_frames[:6], ReenactOptions(visible_label=False, paste_back=True)))
    assert frames[0].shape == big_astronaut.shape
    diff = np.abs(frames[-1].astype(int) - big_astronaut.astype(int)).max(axis=2)
    x0, y0, x1, y1 = big_source.crop.box
    outside = np.ones(diff.shape, bool)
    outside[max(int(y0) - 1, 0):int(y1) + 2, max(int(x0) - 1, 0):int(x1) + 2] = False
    assert diff[outside].max() == 0  # no square, no seam: the photo's own pixels
    assert diff.max() > 30  # the head moved


def _rotate(l3: np.ndarray, yaw: float, pitch: float, roll: float) -> np.ndarray:
    c = l3.mean(0)
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ((l3 - c) @ (rz @ rx @ ry).T + c)[:, :2]


def _poses():
    single = [(a, 0, 0) for a in (-30, -15, 15, 30)] + [(0, a, 0) for a in (-30, -15, 15, 30)] + [
        (0, 0, a) for a in (-30, -15, 15, 30)]
    combos = list(itertools.product((-15, 0, 15), repeat=3))
    return single + combos


def test_extended_mesh_never_folds(astronaut):
    """No triangle of the head extension (rings B/C and the still border) flips orientation for head
    rotations of ±30° about one axis and ±15° about all three."""
    with FaceAnalyzer() as analyzer:
        det = analyzer.largest(astronaut)
    crop = CropTransform.from_landmarks(det.landmarks, size=256)
    l3 = crop.points_to_crop(det.landmarks_3d)
    src = l3[:, :2]
    rings = head_points(src, 256, 256)
    src_all = np.concatenate([src, rings.points])
    tris = source_triangles(src_all, 256, 256)
    s_anch = with_anchors(src_all, 256, 256)
    no_face = (tris >= len(src)).all(axis=1)
    for pose in _poses():
        _, drv_all = head_mesh(src, _rotate(l3, *pose), rings, 256, 256, triangles=tris)
        flips = flipped_triangles(s_anch, with_anchors(drv_all, 256, 256), tris[no_face])
        assert len(flips) == 0, (pose, len(flips))
    # the frame border stays where it is and the hair ring moves with the head
    _, drv_all = head_mesh(src, _rotate(l3, 0, 0, 20), rings, 256, 256, triangles=tris)
    ring_b = slice(len(src) + 36, len(src) + 72)
    assert np.linalg.norm(drv_all[ring_b] - src_all[ring_b], axis=1).mean() > 5.0


def test_blink_reaches_the_output(pipe, big_source):
    """A real blink (examples/driving_webcam.mp4, frames 30-70: the eyes close at ~48) closes the
    output's eyes: the eye opening detected on the output dips by ≥ 50 % (the driver keeps them
    half shut after it, frames 15-35)."""
    frames = list(iter_frames(EXAMPLES / "driving_webcam.mp4", max_frames=70))[30:70]
    out = list(pipe.animate(big_source, frames, ReenactOptions(visible_label=False, size=512)))
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as analyzer:
        opening = []
        for f in out:
            dets = analyzer.detect(f)
            opening.append(eye_opening(dets[0].landmarks) if dets else np.nan)
    opening = np.asarray(opening)
    open_level = np.nanmedian(opening[:10])
    assert np.nanmin(opening[15:35]) <= 0.5 * open_level, np.round(opening / open_level, 2)


@pytest.fixture(scope="module")
def open_mouth_landmarks() -> np.ndarray:
    """Landmarks of a real open mouth: the frame of examples/driving_speech.mp4 that opens it most."""
    best, best_lm = -1.0, None
    with FaceAnalyzer(static_image_mode=False, max_faces=1) as analyzer:
        for frame in iter_frames(EXAMPLES / "driving_speech.mp4", max_frames=60):
            dets = analyzer.detect(frame)
            if dets and mouth_opening(dets[0].landmarks) > best:
                best, best_lm = mouth_opening(dets[0].landmarks), dets[0].landmarks
    assert best > 0.12, best
    return np.asarray(best_lm)


def test_close_mouth_and_relative_mode_close_an_open_mouth(open_mouth_landmarks, astronaut):
    lm = open_mouth_landmarks
    closed = close_mouth(lm)
    assert mouth_opening(closed) < 0.25 * mouth_opening(lm)
    # eyes, nose and forehead stay where they were
    assert np.abs(closed[[1, 10, 33, 263, 168]] - lm[[1, 10, 33, 263, 168]]).max() < 1e-3
    # a closed mouth is left (almost) alone
    with FaceAnalyzer() as analyzer:
        still = close_mouth(analyzer.largest(astronaut).landmarks)
    assert np.abs(close_mouth(still) - still).max() < 0.5
    # relative mode: the open-mouthed "photo" driven by a closed-mouth driver that does not move
    out = relative_landmarks(lm, still, still, neutral_mouth=True)
    assert mouth_opening(out) < 0.25 * mouth_opening(lm)
    old = relative_landmarks(lm, still, still)
    assert mouth_opening(old) == pytest.approx(mouth_opening(lm), rel=0.05)


def test_irises_stay_between_closed_lids(open_mouth_landmarks):
    lm = open_mouth_landmarks.copy()
    # close both eyes: lower lids onto the upper lids
    for upper, lower in ((159, 145), (386, 374), (158, 153), (160, 144), (385, 380), (387, 373)):
        lm[lower] = lm[upper]
    fixed = irises_inside_eyelids(lm)
    for iris, (a, b) in ((468, (159, 145)), (473, (386, 374))):
        lid_y = (fixed[a, 1] + fixed[b, 1]) / 2
        assert abs(fixed[iris, 1] - lid_y) < abs(lm[iris, 1] - lid_y) + 1e-6
        assert abs(fixed[iris, 1] - lid_y) < 1.0
    assert np.array_equal(fixed[:468], lm[:468].astype(np.float32))


def test_geometry_only_shortcut_is_exact(pipe, big_source, driving_frames):
    """The embedded weights' flow and residual heads are zero, so the pipeline skips the networks;
    the output is bit-identical to running them. A model whose heads draw something is never skipped."""
    import torch

    from metaportrait.models.generator import MetaPortraitGenerator, generator_config

    assert pipe.geometry_only
    frames = driving_frames[:4]
    fast = list(pipe.animate(big_source, frames, ReenactOptions(visible_label=False, size=256)))
    pipe.geometry_only = False
    try:
        slow = list(pipe.animate(big_source, frames, ReenactOptions(visible_label=False, size=256)))
    finally:
        pipe.geometry_only = True
    for a, b in zip(fast, slow):
        assert np.array_equal(a, b)
    gen = MetaPortraitGenerator(generator_config("tiny-blend"))
    assert gen.is_geometry_only()
    with torch.no_grad():
        gen.warping.flow_head.bias[0] = 1e-3
    assert not gen.is_geometry_only()
    assert not MetaPortraitGenerator(generator_config("tiny-direct")).is_geometry_only()


def test_turned_portrait_cheek_does_not_fold(pipe, mona_lisa):
    """The 3/4-view Mona Lisa driven by the talking, slightly turning person of
    examples/driving_speech.mp4 (frames 28-39, where her far cheek used to tear into a saw-tooth of
    hair and skin): no triangle of the outer face band folds in the warped mesh, the eyes and lips
    keep their exact motion, and without the untangling the same targets do fold."""
    from metaportrait.face.mesh_warp import signed_areas
    from metaportrait.face.regions import FACE_OVAL
    from metaportrait.face.untangle import outer_band, untangle_outer_face

    src = pipe.prepare_source(mona_lisa)
    options = ReenactOptions()
    frames = list(itertools.islice(iter_frames(EXAMPLES / "driving_speech.mp4"), 40))
    lms = [lm for _f, lm in pipe.driving_landmarks(frames, options, {})]
    s = src.landmarks.astype(np.float64)
    n = len(s)
    face_tris = src.triangles[(src.triangles < n).all(1)]
    band = outer_band(s)
    all_band = face_tris[band[face_tris].all(1)]
    before = after = 0
    for lm in lms[28:40]:
        target = relative_landmarks(src.landmarks, lm, lms[0])
        fixed = untangle_outer_face(s, target, src.triangles)
        before += int((np.sign(signed_areas(target, all_band)) != np.sign(signed_areas(s, all_band))).sum())
        after += int((np.sign(signed_areas(fixed, all_band)) != np.sign(signed_areas(s, all_band))).sum())
        np.testing.assert_array_equal(fixed[~band], np.asarray(target, np.float64)[~band])
        # the warp itself uses the untangled targets
        _, drv_all = head_mesh(s, target, src.rings, pipe.size, pipe.size, triangles=src.triangles)
        inner = band.copy()
        inner[list(FACE_OVAL)] = False  # the outline itself may be pushed out to enclose the cheek
        np.testing.assert_allclose(drv_all[:n][inner], fixed[inner])
    assert before >= 20, before
    assert after == 0, after


def test_reenact_cli_sr_flag(tmp_path, capsys):
    """`metaportrait reenact --sr` writes 512² frames for a 202 px face and says what SR cost."""
    from metaportrait.cli import main as cli_main
    from metaportrait.video import probe_video

    out = tmp_path / "sr.mp4"
    assert cli_main(["reenact", "--source", str(EXAMPLES / "astronaut.jpg"), "--driving",
                     str(EXAMPLES / "driving_webcam.mp4"), "--output", str(out), "--sr", "--max-seconds", "0.3",
                     "--device", "cpu", "--quiet"]) == 0
    info = probe_video(out)
    assert (info.width, info.height) == (512, 512) and info.num_frames >= 7
    assert "super-resolution" in capsys.readouterr().out
