"""End-to-end reenactment: the real pipeline on the astronaut and real driving clips.

A tiny generator (use_prior + residual output: at initialisation it reproduces the classical
mesh warp exactly) keeps the suite fast; the embedded weights are exercised in test_weights.py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from metaportrait.errors import InputTooLargeError, InvalidImageError, InvalidVideoError, MultipleFacesWarning, NoFaceError
from metaportrait.face import FaceAnalyzer
from metaportrait.face.regions import region_boxes
from metaportrait.io import InputLimits
from metaportrait.models.generator import MetaPortraitGenerator, generator_config
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.video import read_metadata
from metaportrait.weights import write_model_index


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    cfg = generator_config("tiny")  # 64²; 128² so MediaPipe can read the outputs
    cfg = cfg.replace(warping=cfg.warping.replace(image_size=128), refinement=cfg.refinement.replace(image_size=128))
    gen = MetaPortraitGenerator(cfg)
    gen.save_pretrained(folder / "base")
    write_model_index(folder, generator="base")
    return folder


@pytest.fixture(scope="module")
def pipe(tiny_weights) -> MetaPortraitPipeline:
    return MetaPortraitPipeline.from_pretrained(tiny_weights, device="cpu")


def decode(path: Path) -> tuple[list[np.ndarray], float, bool]:
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        has_audio = bool(c.streams.audio)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return frames, fps, has_audio


def test_end_to_end_with_audio(pipe, tmp_path, driving_video_audio):
    out = tmp_path / "out.mp4"
    res = pipe.reenact(EXAMPLE("astronaut.jpg"), driving_video_audio, out, ReenactOptions(mode="absolute"))
    frames, fps, has_audio = decode(out)
    assert len(frames) == res.num_frames == 100
    assert fps == pytest.approx(25.0)
    assert has_audio, "the driving clip's audio must be kept"
    meta = read_metadata(out)
    assert any("AI-generated" in v for v in meta.values()), meta
    # the mouth and eyes move with the driving motion: those regions change across the video
    src = pipe.prepare_source(EXAMPLE("astronaut.jpg"))
    boxes = region_boxes(src.landmarks, frames[0].shape[0])
    x0, y0, x1, y1 = boxes.mouth
    mouth = np.stack([f[y0:y1, x0:x1].astype(np.float32) for f in frames])
    assert mouth.std(axis=0).mean() > 2.0, "the mouth region does not change: output is a copy of the source"
    ex0, ey0, ex1, ey1 = boxes.left_eye
    eyes = np.stack([f[ey0:ey1, ex0:ex1].astype(np.float32) for f in frames])
    assert eyes.std(axis=0).mean() > 0.5


def EXAMPLE(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "examples" / name


def test_no_audio_clip_and_frame_count(pipe, tmp_path, driving_video):
    out = tmp_path / "out.mp4"
    res = pipe.reenact(EXAMPLE("mona_lisa.jpg"), driving_video, out, ReenactOptions(max_seconds=2.0, paste_back=True))
    frames, fps, has_audio = decode(out)
    assert len(frames) == res.num_frames == 48
    assert fps == pytest.approx(24.0)
    assert not has_audio
    src = np.asarray(Image.open(EXAMPLE("mona_lisa.jpg")).convert("RGB"))
    h, w = src.shape[:2]
    assert abs(frames[0].shape[0] - h) <= 1 and abs(frames[0].shape[1] - w) <= 1, "paste-back keeps the photo size"


def test_relative_mode_keeps_source_face_shape(pipe, driving_frames, astronaut):
    """Cross-identity: the output's face proportions follow the source, not the driver."""
    src = pipe.prepare_source(astronaut)
    frames = list(pipe.animate(src, driving_frames[:8], ReenactOptions(mode="relative", visible_label=False)))
    abs_frames = list(pipe.animate(src, driving_frames[:8], ReenactOptions(mode="absolute", visible_label=False)))

    def ratio(lm):
        from metaportrait.evaluation.reenactment import interocular

        return interocular(lm) / (lm[:, 1].max() - lm[:, 1].min())

    with FaceAnalyzer(static_image_mode=True) as fa:
        r_src = ratio(src.landmarks)
        r_rel = ratio(fa.largest(frames[-1]).landmarks)
        r_abs = ratio(fa.largest(abs_frames[-1]).landmarks)
    assert abs(r_rel - r_src) < abs(r_abs - r_src) + 1e-6, (r_src, r_rel, r_abs)


def test_streaming_does_not_buffer(pipe, astronaut, driving_frames):
    """animate() yields frames before the driving iterator is exhausted (frames stream)."""
    consumed = []

    def gen():
        for i, f in enumerate(driving_frames):
            consumed.append(i)
            yield f

    src = pipe.prepare_source(astronaut)
    it = pipe.animate(src, gen(), ReenactOptions(batch_size=4))
    next(it)
    assert len(consumed) <= 4 + 1


# ------------------------------------------------------------------------- bad inputs
def test_no_face_source(pipe, tmp_path, driving_video, no_face_image):
    img = tmp_path / "coffee.png"
    Image.fromarray(no_face_image).save(img)
    out = tmp_path / "out.mp4"
    with pytest.raises(NoFaceError):
        pipe.reenact(img, driving_video, out)
    assert not out.exists()


def test_several_faces_uses_largest(pipe, astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((384, 384)))
    canvas = np.zeros((512, 896, 3), np.uint8)
    canvas[:, :512] = astronaut
    canvas[64:448, 512:] = small
    with pytest.warns(MultipleFacesWarning):
        src = pipe.prepare_source(canvas)
    assert src.crop.center[0] < 512


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK"])
def test_odd_image_modes(pipe, tmp_path, astronaut, mode):
    im = Image.fromarray(astronaut)
    if mode == "I;16":
        arr = (np.asarray(im.convert("L")).astype(np.uint16) * 257)
        im = Image.fromarray(arr)  # uint16 -> mode I;16
        path = tmp_path / "x16.png"
    elif mode == "CMYK":
        im = im.convert("CMYK")
        path = tmp_path / "x.jpg"
    else:
        im = im.convert(mode)
        path = tmp_path / f"x_{mode}.png"
    im.save(path)
    src = pipe.prepare_source(path)
    assert src.face.shape == (pipe.size, pipe.size, 3)


def test_text_file_renamed(pipe, tmp_path, driving_video):
    fake = tmp_path / "photo.png"
    fake.write_text("definitely not an image\n")
    with pytest.raises(InvalidImageError):
        pipe.reenact(fake, driving_video, tmp_path / "o.mp4")
    fake_vid = tmp_path / "clip.mp4"
    fake_vid.write_text("not a video either\n")
    out = tmp_path / "o2.mp4"
    with pytest.raises(InvalidVideoError):
        pipe.reenact(EXAMPLE("astronaut.jpg"), fake_vid, out)
    assert not out.exists()


def test_truncated_and_empty_video(pipe, tmp_path, driving_video):
    data = driving_video.read_bytes()
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(data[: len(data) // 3])
    out = tmp_path / "o.mp4"
    with pytest.raises(InvalidVideoError):
        pipe.reenact(EXAMPLE("astronaut.jpg"), trunc, out)
    assert not out.exists()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InvalidVideoError):
        pipe.reenact(EXAMPLE("astronaut.jpg"), empty, out)
    assert not out.exists()


def test_video_limits(tiny_weights, tmp_path, driving_video):
    strict = MetaPortraitPipeline.from_pretrained(tiny_weights, device="cpu",
                                                  limits=InputLimits(max_video_seconds=2.0))
    out = tmp_path / "o.mp4"
    with pytest.raises(InputTooLargeError, match="s"):
        strict.reenact(EXAMPLE("astronaut.jpg"), driving_video, out)
    assert not out.exists()
    small = MetaPortraitPipeline.from_pretrained(tiny_weights, device="cpu", limits=InputLimits(max_video_side=200))
    with pytest.raises(InputTooLargeError):
        small.reenact(EXAMPLE("astronaut.jpg"), driving_video, out)
    assert not out.exists()


def test_decompression_bomb(pipe, tmp_path):
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png)
    with pytest.raises(InputTooLargeError):
        pipe.prepare_source(bomb)


def test_model_index_json(tiny_weights):
    index = json.loads((tiny_weights / "model_index.json").read_text())
    assert index["generator"] == "base"


def test_from_pretrained_hub_repo_id_offline_cache(tiny_weights, tmp_path, monkeypatch):
    """A Hub repo id resolves through a hand-built Hub cache with HF_HUB_OFFLINE=1 (no network)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--metaportrait-tiny"
    shutil.copytree(tiny_weights, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    pipe = MetaPortraitPipeline.from_pretrained("someone/metaportrait-tiny", device="cpu")
    assert pipe.size == 128
    from metaportrait.errors import WeightsError

    with pytest.raises(WeightsError, match="Hub"):
        MetaPortraitPipeline.from_pretrained("someone/not-in-cache", device="cpu")
