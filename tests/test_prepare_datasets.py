"""prepare-data (docs/DATA_FORMAT.md) and the training datasets, on real clips from examples/."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaportrait.training.datasets import (
    MIRROR_INDEX,
    ClipDataset,
    IdentityFramesDataset,
    MotionParams,
    PairDataset,
    SyntheticMotionDataset,
    collate_pairs,
    mirror_landmarks,
    synthetic_landmark_motion,
)
from metaportrait.training.prepare import Manifest, discover_clips, prepare_data

N_FRAMES = 20


def _write_coffee_video(path: Path, n: int = 4) -> None:
    """A real video without a face: scikit-image's coffee photo, slowly panning."""
    import av
    from skimage import data

    img = data.coffee()[:384, :512]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 480, 384, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:, i * 4 : i * 4 + 480]), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory, driving_video, driving_video_audio) -> Path:
    root = tmp_path_factory.mktemp("raw")
    (root / "franck" / "talk").mkdir(parents=True)
    shutil.copy(driving_video, root / "franck" / "talk" / "franck.mp4")
    (root / "speaker" / "interview").mkdir(parents=True)
    shutil.copy(driving_video_audio, root / "speaker" / "interview" / "speech.mp4")
    (root / "broken.mp4").write_text("this is a text file, not a video\n")
    (root / "coffee" / "cup").mkdir(parents=True)
    _write_coffee_video(root / "coffee" / "cup" / "coffee.mp4")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, raw_dir) -> tuple[Path, Manifest, float]:
    out = tmp_path_factory.mktemp("prepared")
    t0 = time.perf_counter()
    m = prepare_data(raw_dir, out, max_frames_per_clip=N_FRAMES, workers=1, heldout_identities=["speaker"],
                     heldout_fraction=0.25, progress=False)
    return out, m, time.perf_counter() - t0


def test_discover_layouts(tmp_path, raw_dir):
    clips = {c.id: c for c in discover_clips(raw_dir)}
    assert set(clips) == {"franck/talk/franck", "speaker/interview/speech", "broken", "coffee/cup/coffee"}
    assert clips["broken"].identity == "broken"  # flat video: identity = stem
    assert clips["franck/talk/franck"].identity == "franck"
    frames = tmp_path / "ann" / "v1"
    frames.mkdir(parents=True)
    for i in range(3):
        (frames / f"{i:04d}.png").write_bytes(b"")
    (c,) = discover_clips(tmp_path)
    assert (c.id, c.identity, c.kind) == ("ann/v1", "ann", "frames")


def test_manifest_lists_clips_splits_and_skipped(prepared):
    out, m, _ = prepared
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["format"] == "metaportrait-prepared-v1"
    assert on_disk["heldout_identities"] == ["speaker"]
    clips = {c["id"]: c for c in on_disk["clips"]}
    assert set(clips) == {"franck/talk/franck", "speaker/interview/speech"}
    fr, sp = clips["franck/talk/franck"], clips["speaker/interview/speech"]
    assert fr["split"] == "train" and fr["num_frames"] == N_FRAMES and fr["heldout_frames_from"] == 15
    assert fr["fps"] == pytest.approx(24.0) and fr["has_512"] is True
    assert sp["split"] == "heldout_identity" and sp["identity"] == "speaker"
    reasons = {Path(s["source_file"]).name: s["reason"] for s in on_disk["skipped"]}
    assert set(reasons) == {"broken.mp4", "coffee.mp4"}
    assert "not a readable video" in reasons["broken.mp4"]
    assert "no face" in reasons["coffee.mp4"]


def test_arrays_follow_the_format(prepared):
    out, m, _ = prepared
    for c in m.clips:
        d = out / "clips" / c.id
        f256 = np.load(d / "frames_256.npy", mmap_mode="r")
        f512 = np.load(d / "frames_512.npy", mmap_mode="r")
        lm = np.load(d / "landmarks_256.npy")
        valid = np.load(d / "valid.npy")
        assert f256.shape == (N_FRAMES, 256, 256, 3) and f256.dtype == np.uint8
        assert f512.shape == (N_FRAMES, 512, 512, 3) and f512.dtype == np.uint8
        assert lm.shape == (N_FRAMES, 478, 2) and lm.dtype == np.float32
        assert valid.dtype == bool and valid.all()
        assert lm.min() > 0 and lm.max() < 256  # the face is inside its crop
        # the 512 crop is the same box: downscaled it matches the 256 crop
        down = f512[0].reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        assert np.abs(down - f256[0].astype(np.float64)).mean() < 4.0
        assert not list(d.glob("*.part"))


def test_landmarks_match_the_frames(prepared):
    """Stored (smoothed) landmarks agree with a fresh detection on the stored crop."""
    from metaportrait.face import FaceAnalyzer

    out, m, _ = prepared
    c = m.clips[0]
    d = out / "clips" / c.id
    frames = np.load(d / "frames_256.npy", mmap_mode="r")
    lm = np.load(d / "landmarks_256.npy")
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as fa:
        det = fa.largest(np.array(frames[10])).landmarks
    assert np.median(np.linalg.norm(det - lm[10], axis=1)) < 3.0


def test_second_run_is_a_noop(prepared, raw_dir):
    out, m, first_seconds = prepared
    files = sorted(p for p in (out / "clips").rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in files]
    t0 = time.perf_counter()
    m2 = prepare_data(raw_dir, out, max_frames_per_clip=N_FRAMES, workers=1, heldout_identities=["speaker"],
                      heldout_fraction=0.25, progress=False)
    assert time.perf_counter() - t0 < max(2.0, first_seconds / 4)
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert m2.to_dict() == m.to_dict()


def test_pair_dataset_items(prepared):
    out, m, _ = prepared
    ds = PairDataset(out, "train", augment=True, seed=0)
    assert len(ds) == 15  # franck's first 15 frames (the last 5 are held out in time)
    s = ds[3]
    for name in ("source", "driving", "source_landmark_image", "driving_landmark_image"):
        t = getattr(s, name)
        assert t.shape == (3, 256, 256) and t.dtype == torch.float32
        assert t.min() >= -1.0 and t.max() <= 1.0
    assert s.source_landmark_image.max() > 0 and (s.source_landmark_image > -1).float().mean() < 0.3
    assert s.source_landmarks.shape == (478, 2) and s.driving_landmarks.shape == (478, 2)
    assert s.prior_grid.shape == (256, 256, 2) and s.prior_grid.abs().max() <= 1.5
    assert s.driving_boxes.shape == (3, 4) and s.source_five_points.shape == (5, 2)
    assert s.clip_id == "franck/talk/franck" and s.identity == "franck"
    # seeded: the same item twice is identical; another epoch draws differently
    again = ds[3]
    assert torch.equal(s.source, again.source) and torch.equal(s.driving, again.driving)
    batch = collate_pairs([ds[i] for i in range(4)])
    assert batch.source.shape == (4, 3, 256, 256) and batch.prior_grid.shape == (4, 256, 256, 2)
    assert batch.clip_id == ["franck/talk/franck"] * 4 and batch.batch_size == 4


def test_min_source_side_keeps_only_native_resolution_clips(prepared):
    out, m, _ = prepared
    side = Manifest.load(out).clips[0].source_side
    assert side is not None and side > 100  # franck's face box in the source frame
    assert len(PairDataset(out, "train", min_source_side=side)) == 15
    assert len(PairDataset(out, "train", min_source_side=side + 1)) == 0


def test_pairs_come_from_one_clip_and_splits_are_disjoint(prepared):
    out, m, _ = prepared
    frames = {c.id: np.load(out / "clips" / c.id / "frames_256.npy") for c in m.clips}
    seen: dict[str, set[tuple[str, int]]] = {}
    for split in ("train", "heldout_frames", "heldout_identity"):
        ds = PairDataset(out, split, augment=False, seed=1)
        assert len(ds) > 0
        used = set()
        for i in range(len(ds)):
            entry, d = ds.locate(i)
            s = ds[i]
            clip = frames[s.clip_id]
            img = ((s.source.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
            drv = ((s.driving.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
            src_idx = int(np.argmin(np.abs(clip.astype(np.int16) - img).reshape(len(clip), -1).mean(1)))
            assert np.abs(clip[src_idx].astype(np.int16) - img).max() <= 1  # the source is a frame of this clip
            assert np.abs(clip[d].astype(np.int16) - drv).max() <= 1
            assert src_idx != d and src_idx in set(entry.frames.tolist())  # same clip, same split
            used |= {(s.clip_id, src_idx), (s.clip_id, d)}
        seen[split] = used
    assert not seen["train"] & seen["heldout_frames"]
    assert not (seen["train"] | seen["heldout_frames"]) & seen["heldout_identity"]
    assert {c for c, _ in seen["heldout_identity"]} == {"speaker/interview/speech"}
    assert all(f >= 15 for c, f in seen["heldout_frames"])


def test_prior_grid_maps_driving_landmarks_to_source_landmarks(prepared):
    out, _, _ = prepared
    ds = PairDataset(out, "train", augment=True, seed=2)
    for i in (0, 5, 9):
        s = ds[i]
        pos = (s.driving_landmarks[:468] / 256.0) * 2 - 1  # normalised driving positions
        sampled = F.grid_sample(s.prior_grid.permute(2, 0, 1)[None], pos[None, None], align_corners=False)
        src_px = (sampled[0, :, 0].T + 1) / 2 * 256
        inside = ((s.driving_landmarks[:468] > 2) & (s.driving_landmarks[:468] < 254)).all(1)
        err = (src_px - s.source_landmarks[:468]).norm(dim=1)[inside]
        assert err.median() < 1.0


def test_flip_keeps_landmark_semantics(driving_frames):
    """MIRROR_INDEX: landmarks detected on the mirrored frame equal the mirrored landmarks."""
    from metaportrait.face import FaceAnalyzer, five_points
    from metaportrait.face.regions import LEFT_EYE, RIGHT_EYE

    assert np.array_equal(MIRROR_INDEX[MIRROR_INDEX], np.arange(478))
    assert set(MIRROR_INDEX[list(LEFT_EYE)]) == set(RIGHT_EYE)
    frame = driving_frames[0]
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as fa:
        lm = fa.largest(frame).landmarks
        lm_flipped_detected = fa.largest(np.ascontiguousarray(frame[:, ::-1])).landmarks
    mirrored = mirror_landmarks(lm, frame.shape[1])
    face = np.ptp(lm[:, 0])
    assert np.median(np.linalg.norm(mirrored - lm_flipped_detected, axis=1)) < 0.03 * face
    naive = lm.copy()
    naive[:, 0] = frame.shape[1] - naive[:, 0]  # without the permutation the indices are wrong
    assert np.median(np.linalg.norm(naive - lm_flipped_detected, axis=1)) > 0.1 * face
    p = five_points(mirrored)
    assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0]  # image-left before image-right after flipping


def test_identity_frames_and_clip_datasets(prepared):
    out, m, _ = prepared
    ids = IdentityFramesDataset(out, frames_per_identity=4, split="train")
    assert ids.identities == ["franck"]
    b = ids[0]
    assert b.source.shape == (4, 3, 256, 256) and set(b.identity) == {"franck"}
    clips = ClipDataset(out, clip_len=5, size=512, split="train")
    assert len(clips) == 15 - 5 + 1
    c = clips[2]
    assert c.frames.shape == (5, 3, 512, 512) and c.frames_256.shape == (5, 3, 256, 256)
    f512 = np.load(out / "clips" / "franck/talk/franck" / "frames_512.npy", mmap_mode="r")
    expect = torch.from_numpy(np.array(f512[2:7])).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(c.frames, expect, atol=1e-5)
    assert c.landmarks.shape == (5, 478, 2) and c.landmarks.max() > 256  # scaled to the 512 crop
    held = ClipDataset(out, clip_len=5, size=256, split="heldout_identity")
    assert {held.data.manifest.clips[i].id for i, _ in held.windows} == {"speaker/interview/speech"}


def test_synthetic_motion_on_the_astronaut(astronaut):
    ds = SyntheticMotionDataset([astronaut], size=256, num_samples=6, seed=0, augment=False, swap_probability=0.0)
    _, still, lm = ds.stills[0]
    moved = synthetic_landmark_motion(lm, MotionParams(mouth_open=1.0), 256)
    # the lower lip (14, 17) and chin (152) drop; the upper lip (13, 0) and eyes stay
    assert moved[14, 1] - lm[14, 1] > 5 and moved[152, 1] - lm[152, 1] > 5
    assert np.abs(moved[[13, 0, 468, 473]] - lm[[13, 0, 468, 473]]).max() < 0.5
    s = ds.render(still, lm, moved, rng=np.random.default_rng(0))
    assert (s.driving - s.source).abs().mean() > 0.005
    mouth = s.driving_boxes[2].long()
    region = (s.driving - s.source)[:, mouth[1] : mouth[3], mouth[0] : mouth[2]].abs().mean()
    assert region > 3 * (s.driving - s.source).abs().mean()  # the change is at the mouth
    assert torch.allclose(s.driving_landmarks, torch.from_numpy(moved))
    # the prior grid reproduces the synthetic target exactly
    warped = F.grid_sample(s.source[None], s.prior_grid[None], padding_mode="border", align_corners=False)[0]
    assert bool(s.prior_is_exact) and (warped - s.driving).abs().max() < 1e-5
    item = ds[1]
    assert item.source.shape == (3, 256, 256) and not torch.equal(item.source, item.driving)
