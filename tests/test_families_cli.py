"""The few-shot family at inference, temporal SR on videos, the evaluation metrics and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from metaportrait.errors import WeightsError
from metaportrait.weights import write_model_index

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _count(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as c:
        frames = [f for f in c.decode(video=0)]
    return len(frames), (frames[0].height, frames[0].width)


# ---------------------------------------------------------------- few-shot family
@pytest.fixture(scope="module")
def fewshot_weights(tmp_path_factory) -> Path:
    from metaportrait.training.fewshot import build_models

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fs")
    e, g, d = build_models("tiny", num_videos=2)
    for name, m in [("embedder", e), ("generator", g), ("discriminator", d)]:
        m.save_pretrained(folder / "fewshot" / name)
    write_model_index(folder, fewshot="fewshot")
    return folder


@pytest.mark.parametrize("feed_forward", [True, False])
def test_fewshot_personalize_and_reenact(fewshot_weights, tmp_path, feed_forward):
    from metaportrait.fewshot_pipeline import FewShotPipeline
    from metaportrait.person import collect_frames
    from metaportrait.pipeline import ReenactResult
    from metaportrait.training.fewshot_finetune import personalize_fewshot

    person = collect_frames(EXAMPLES / "driving_webcam.mp4", size=256, max_frames=8)
    res = personalize_fewshot(person, tmp_path / "me", weights=fewshot_weights, steps=2, feed_forward=feed_forward)
    info = json.loads((tmp_path / "me" / "person.json").read_text())
    assert info["frames"] == 8 and info["steps"] == (0 if feed_forward else 2) == res.steps and info["size"] == 256
    result = FewShotPipeline.from_pretrained(tmp_path / "me", device="cpu").reenact(
        EXAMPLES / "driving_franck.mp4", tmp_path / "out.mp4")
    assert isinstance(result, ReenactResult) and result.output_path == tmp_path / "out.mp4"
    n, (h, w) = _count(result.output_path)
    assert n == result.num_frames == 120 and (h, w) == (256, 256)
    assert result.fps == pytest.approx(24) and not result.has_audio and result.frames_without_face == 0
    assert {"landmarks", "generation", "encoding"} <= set(result.timings)


@pytest.fixture(scope="module")
def fewshot_person(fewshot_weights, tmp_path_factory) -> Path:
    """A feed-forward few-shot personalization (8 frames of a real webcam clip)."""
    from metaportrait.person import collect_frames
    from metaportrait.training.fewshot_finetune import personalize_fewshot

    out = tmp_path_factory.mktemp("fewshot_person")
    person = collect_frames(EXAMPLES / "driving_webcam.mp4", size=256, max_frames=8)
    personalize_fewshot(person, out, weights=fewshot_weights, feed_forward=True)
    return out


def test_fewshot_no_face_in_the_driving_video(fewshot_person, tmp_path, no_face_image):
    """A driving video without a face: NoFaceError, and no output file."""
    from metaportrait.errors import NoFaceError
    from metaportrait.fewshot_pipeline import FewShotPipeline
    from metaportrait.video import VideoWriter

    driving = tmp_path / "cup.mp4"
    with VideoWriter(driving, fps=25) as w:
        for _ in range(6):
            w.write(np.ascontiguousarray(no_face_image[:256, :256]))
    out = tmp_path / "out.mp4"
    with pytest.raises(NoFaceError, match="no face"):
        FewShotPipeline.from_pretrained(fewshot_person, device="cpu").reenact(driving, out)
    assert not out.exists()


def test_fewshot_driving_landmarks_are_smoothed(fewshot_person, driving_frames):
    """The driving landmarks go through the One-Euro filter (as in MetaPortraitPipeline): the frame-to-
    frame acceleration of the transferred landmarks is lower with smoothing than without."""
    from metaportrait.fewshot_pipeline import FewShotPipeline
    from metaportrait.pipeline import ReenactOptions

    pipe = FewShotPipeline.from_pretrained(fewshot_person, device="cpu")
    tracks = {}
    for smooth in (True, False):
        stats: dict[str, float] = {}
        lms = list(pipe.driving_landmarks(driving_frames, ReenactOptions(smooth_landmarks=smooth), stats, fps=24))
        assert all(lm is not None and lm.shape == (478, 2) for lm in lms) and stats["landmarks"] > 0
        tracks[smooth] = np.stack(lms)
    jitter = {k: float(np.abs(np.diff(t, n=2, axis=0)).mean()) for k, t in tracks.items()}
    assert jitter[True] < 0.8 * jitter[False], jitter
    # the first frame is the reference: the person's own landmarks, unmoved
    np.testing.assert_allclose(tracks[True][0], pipe.reference, atol=1e-3)


def test_fewshot_sizes_come_from_the_folder_and_the_options(fewshot_person, tmp_path):
    """The crop size is the personalization's (``size`` in person.json), the output side
    ``ReenactOptions.size`` when given; options the family cannot honour are refused by name."""
    import shutil

    from metaportrait.fewshot_pipeline import FewShotPipeline
    from metaportrait.pipeline import ReenactOptions

    small = tmp_path / "small"
    shutil.copytree(fewshot_person, small)
    info = json.loads((small / "person.json").read_text())
    (small / "person.json").write_text(json.dumps({**info, "size": 128}))
    np.save(small / "reference_landmarks.npy", np.load(fewshot_person / "reference_landmarks.npy") / 2)
    pipe = FewShotPipeline.from_pretrained(small, device="cpu")
    assert pipe.size == 128
    driving = EXAMPLES / "driving_franck.mp4"
    result = pipe.reenact(driving, tmp_path / "a.mp4", ReenactOptions(max_seconds=0.25))
    assert _count(result.output_path) == (6, (128, 128))
    result = pipe.reenact(driving, tmp_path / "b.mp4", ReenactOptions(max_seconds=0.25, size=512))
    assert _count(result.output_path) == (6, (512, 512))
    with pytest.raises(ValueError, match="paste_back, smile"):
        pipe.reenact(driving, tmp_path / "c.mp4", ReenactOptions(paste_back=True, smile=0.5))
    with pytest.raises(ValueError, match="relative"):
        pipe.reenact(driving, tmp_path / "c.mp4", ReenactOptions(mode="absolute"))
    assert not (tmp_path / "c.mp4").exists()
    (small / "person.json").unlink()
    with pytest.raises(WeightsError, match="person.json"):
        FewShotPipeline.from_pretrained(small)


def test_fewshot_missing_component(tmp_path):
    from metaportrait.fewshot_pipeline import load_fewshot

    write_model_index(tmp_path, generator="base")
    with pytest.raises(WeightsError, match="few-shot"):
        load_fewshot(tmp_path)


# ---------------------------------------------------------------- temporal SR on videos
def test_upscale_and_compare_video(tmp_path):
    from metaportrait.models.temporal_sr import TemporalSRConfig, TemporalSuperResolution
    from metaportrait.superres import compare_video, load_sr_model, upscale_video
    from metaportrait.video import VideoWriter, iter_frames

    torch.manual_seed(0)
    model = TemporalSuperResolution(TemporalSRConfig.from_preset("tiny"))
    model.save_pretrained(tmp_path / "w" / "sr")
    write_model_index(tmp_path / "w", sr="sr")
    src = tmp_path / "face.mp4"
    side = model.config.out_size - 16  # a face crop with fewer pixels than SR's output: SR runs
    with VideoWriter(src, fps=24) as w:
        for i, f in enumerate(iter_frames(EXAMPLES / "driving_franck.mp4", max_frames=12)):
            w.write(cv2.resize(np.ascontiguousarray(f[:, 36:324][:288, :288]), (side, side), interpolation=cv2.INTER_AREA))
    loaded = load_sr_model(tmp_path / "w")
    out = upscale_video(src, tmp_path / "up.mp4", model=loaded)
    n, (h, w_) = _count(out)
    assert n == 12 and (h, w_) == (model.config.out_size, model.config.out_size)
    cmp = compare_video(src, tmp_path / "cmp.mp4", model=loaded)
    n, (h, w_) = _count(cmp)
    assert n == 12 and w_ == 2 * h


def test_upscale_non_square_video_pastes_the_face_back(tmp_path):
    """A whole (non-square) video is no longer refused: its face is upscaled and pasted back at the
    model's scale factor (see also tests/test_temporal_sr.py)."""
    from metaportrait.models.temporal_sr import TemporalSRConfig, TemporalSuperResolution
    from metaportrait.superres import upscale_video
    from metaportrait.video import probe_video

    from metaportrait.video import VideoWriter, iter_frames

    # the tiny network at the real scale (256² → 512²): franck's face (~150 px) is smaller than 512
    model = TemporalSuperResolution(TemporalSRConfig.from_preset("tiny", in_size=256, out_size=512))
    clip = tmp_path / "franck12.mp4"
    with VideoWriter(clip, fps=24) as w:
        for f in iter_frames(EXAMPLES / "driving_franck.mp4", max_frames=12):
            w.write(f)
    said: list[str] = []
    out = upscale_video(clip, tmp_path / "x.mp4", model=model, report=said.append)
    assert said == []  # SR ran
    info = probe_video(out)
    assert (info.width, info.height) == (720, 576) and info.num_frames == 12


@pytest.mark.parametrize("face", ["crop", "paste", "auto"])
def test_upscale_skips_sr_where_the_face_already_has_the_pixels(tmp_path, face):
    """SR's input is an in_size² crop: on a face that already has ≥ out_size px across it would only throw detail
    away. Then the frames come from the video itself, and the caller is told why."""
    import cv2

    from metaportrait.models.temporal_sr import TemporalSRConfig, TemporalSuperResolution
    from metaportrait.superres import upscale_video
    from metaportrait.video import VideoWriter, iter_frames

    model = TemporalSuperResolution(TemporalSRConfig.from_preset("tiny"))
    big = tmp_path / "big.mp4"
    frames = [cv2.resize(f[:, 36:324], (640, 640), interpolation=cv2.INTER_CUBIC)
              for f in iter_frames(EXAMPLES / "driving_franck.mp4", max_frames=6)]
    with VideoWriter(big, fps=24) as w:
        for f in frames:
            w.write(f)
    said: list[str] = []
    out = upscale_video(big, tmp_path / "o.mp4", model=model, face=face, report=said.append)
    assert len(said) == 1 and "super-resolution skipped" in said[0]
    got = list(iter_frames(out))
    assert len(got) == 6
    if face == "paste":  # the whole frame at the model's factor, no network in it
        factor = model.config.out_size / model.config.in_size
        assert got[0].shape[:2] == (round(640 * factor), round(640 * factor))
    elif face == "auto":  # square: the whole video resampled to out_size
        ref = cv2.resize(list(iter_frames(big))[0], (model.config.out_size,) * 2, interpolation=cv2.INTER_AREA)
        assert np.abs(got[0].astype(int) - ref).mean() < 8  # H.264 at 64² costs ~4 levels; a random network is far off
    else:
        assert got[0].shape[:2] == (model.config.out_size,) * 2


# ---------------------------------------------------------------- evaluation metrics
def test_landmark_error_known_answers():
    from metaportrait.evaluation.reenactment import landmark_errors

    rng = np.random.default_rng(0)
    target = rng.uniform(50, 200, size=(478, 2)).astype(np.float64)
    assert landmark_errors(target, target) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    theta = np.deg2rad(10)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    posed = (target - 128) @ rot.T * 1.1 + 128 + 5  # pure similarity: all pose, no expression
    total, expr, pose = landmark_errors(posed, target)
    assert expr < 1e-6 and pose > 0.05 and total == pytest.approx(pose, rel=1e-6)


def test_psnr_ssim_known_answers(astronaut):
    from metaportrait.evaluation.reenactment import psnr, ssim

    assert psnr(astronaut, astronaut) == float("inf")
    assert ssim(astronaut, astronaut) == pytest.approx(1.0)
    noisy = np.clip(astronaut.astype(int) + 10, 0, 255).astype(np.uint8)
    assert 25 < psnr(astronaut, noisy) < 30


# ---------------------------------------------------------------- CLI
def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaportrait.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_cli_help_lists_every_subcommand():
    out = _cli("--help")
    assert out.returncode == 0
    for name in ("reenact", "prepare-data", "train-base", "evaluate", "meta-train", "personalize", "train-sr",
                 "upscale", "train-fewshot", "reenact-fewshot"):
        assert name in out.stdout, name


def test_cli_reenact_clear_error_and_no_output(tmp_path, no_face_image):
    from PIL import Image

    cup = tmp_path / "cup.png"
    Image.fromarray(no_face_image).save(cup)
    weights = tmp_path / "w"
    from metaportrait.models.generator import MetaPortraitGenerator, generator_config

    MetaPortraitGenerator(generator_config("tiny")).save_pretrained(weights / "base")
    write_model_index(weights, generator="base")
    out = tmp_path / "o.mp4"
    res = _cli("reenact", "--source", str(cup), "--driving", str(EXAMPLES / "driving_webcam.mp4"), "--output", str(out),
               "--weights", str(weights), "--quiet")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error: no face" in res.stderr.lower()
    assert "Traceback" not in res.stderr
    assert not out.exists()
    # with the progress bar on, the error is still the last thing on the screen (the bar is closed first)
    res = _cli("reenact", "--source", str(cup), "--driving", str(EXAMPLES / "driving_webcam.mp4"), "--output", str(out),
               "--weights", str(weights))
    last = [line for line in res.stderr.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last.startswith("metaportrait reenact: error:"), res.stderr[-500:]


def test_cli_missing_weights(tmp_path):
    res = _cli("reenact", "--source", str(EXAMPLES / "astronaut.jpg"), "--driving", str(EXAMPLES / "driving_webcam.mp4"),
               "--output", str(tmp_path / "o.mp4"), "--weights", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_sr_bicubic_residual_starts_at_bicubic():
    """The demo SR head adds to bicubic with zeroed to-RGB layers: step 0 is the bicubic baseline, and one
    optimiser step already moves the decoder (no zero-gain saddle)."""
    import torch.nn.functional as F

    from metaportrait.models.temporal_sr import TemporalSRConfig, TemporalSuperResolution

    torch.manual_seed(0)
    model = TemporalSuperResolution(TemporalSRConfig.from_preset("tiny", output="bicubic_residual")).eval()
    x = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y = model(x).frames[0]
    ref = F.interpolate(x[0], size=(64, 64), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.allclose(y, ref, atol=1e-6)
    target = torch.rand(3, 3, 64, 64) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    (model(x).frames[0] - target).abs().mean().backward()
    rgb = model.stylegan_decoder.to_rgbs[-1].modulated_conv.weight
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    opt.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x).frames[0], ref, atol=1e-4)


# ---------------------------------------------------------------- output paths (checked before any work)
@pytest.fixture(scope="module")
def tiny_cli_weights(tmp_path_factory) -> Path:
    from metaportrait.models.generator import MetaPortraitGenerator, generator_config

    weights = tmp_path_factory.mktemp("w")
    MetaPortraitGenerator(generator_config("tiny")).save_pretrained(weights / "base")
    write_model_index(weights, generator="base")
    return weights


@pytest.mark.parametrize("case", ["directory", "dir_named_mp4", "avi", "no_suffix"])
def test_cli_reenact_refuses_bad_outputs_before_any_work(tmp_path, tiny_cli_weights, case):
    if case == "directory":
        out, expect = tmp_path, "existing folder"
    elif case == "dir_named_mp4":
        out = tmp_path / "x.mp4"
        out.mkdir()
        expect = "existing folder"
    elif case == "avi":
        out, expect = tmp_path / "o.avi", "'.avi'"
    else:
        out, expect = tmp_path / "o", "'(none)'"
    # the driving video does not exist either: the error names the output, so it was checked first
    res = _cli("reenact", "--source", str(EXAMPLES / "astronaut.jpg"), "--driving", str(tmp_path / "missing.mp4"),
               "--output", str(out), "--weights", str(tiny_cli_weights), "--quiet")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "missing.mp4" not in res.stderr
    assert expect in res.stderr and ".mp4" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("metaportrait reenact: error:")
    assert not list(tmp_path.glob("*.mp4")) or case == "dir_named_mp4"


def test_cli_reenact_creates_missing_folders_and_trims_long_videos(tmp_path, tiny_cli_weights):
    from metaportrait.video import probe_video

    out = tmp_path / "new" / "deeper" / "o.mp4"
    res = _cli("reenact", "--source", str(EXAMPLES / "astronaut.jpg"), "--driving", str(EXAMPLES / "driving_franck.mp4"),
               "--output", str(out), "--weights", str(tiny_cli_weights), "--quiet", "--max-seconds", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    info = probe_video(out)
    assert info.num_frames == 24  # the first second of a 24 fps clip
    # --max-seconds under the limit trims a video that is over it
    from metaportrait.io import InputLimits
    from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions

    strict = MetaPortraitPipeline.from_pretrained(tiny_cli_weights, device="cpu", limits=InputLimits(max_video_seconds=2.0))
    r = strict.reenact(EXAMPLES / "astronaut.jpg", EXAMPLES / "driving_franck.mp4", tmp_path / "t.mp4",
                       ReenactOptions(max_seconds=1.5))
    assert r.num_frames == 36


def test_cli_upscale_and_personalize_refuse_bad_outputs(tmp_path):
    existing = tmp_path / "file.txt"
    existing.write_text("x")
    res = _cli("upscale", "--input", str(EXAMPLES / "driving_webcam.mp4"), "--output", str(tmp_path / "o.avi"))
    assert res.returncode == 2 and "'.avi'" in res.stderr and "Traceback" not in res.stderr
    res = _cli("personalize", "--video", str(EXAMPLES / "driving_webcam.mp4"), "--output", str(existing),
               "--steps", "1")
    assert res.returncode == 2 and "existing file" in res.stderr and "Traceback" not in res.stderr
    assert existing.read_text() == "x"


def test_cli_debug_shows_the_traceback(tmp_path):
    res = _cli("reenact", "--source", str(EXAMPLES / "astronaut.jpg"), "--driving", str(EXAMPLES / "driving_webcam.mp4"),
               "--output", str(tmp_path / "o.avi"), "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_cli_personalize_on_the_embedded_weights(tmp_path):
    """`metaportrait personalize` end to end on the shipped weights: the start chosen on held-back
    frames (both starts measured), the mouth network's check, an adapter the pipeline loads."""
    out = tmp_path / "me"
    res = _cli("personalize", "--video", str(EXAMPLES / "driving_speech.mp4"), "--output", str(out),
               "--steps", "1", "--max-frames", "16")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "started from the" in res.stdout and "meta-learned" in res.stdout and "plain" in res.stdout
    assert "mouth network:" in res.stdout
    assert (out / "adapter.safetensors").is_file()
    from metaportrait.pipeline import MetaPortraitPipeline

    MetaPortraitPipeline.from_pretrained(device="cpu", adapter=out)  # strict: the adapter fits the start it names
