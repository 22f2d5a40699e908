"""Audio-driven talking heads (metaportrait.speak): the shipped audio-to-motion model, the rest pose in
silence, a real speech clip made into a video whose mouth opens and closes, bad audio refused, the CLI."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from metaportrait import cli
from metaportrait.audio import SAMPLE_RATE, analyse_audio, read_audio
from metaportrait.errors import InputTooLargeError, InvalidAudioError, NoSpeechError, WeightsError
from metaportrait.face import FaceAnalyzer
from metaportrait.face.controls import mouth_opening
from metaportrait.face.motion import close_mouth
from metaportrait.models.audio_to_motion import AudioToMotion
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.speak import (
    SpeakOptions,
    SpeechFeatures,
    espeak_available,
    load_audio_model,
    speak,
    speech_landmarks,
    synthesize_speech,
)
from metaportrait.video import probe_video, read_frames

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "examples" / "driving_speech.mp4"
AUDIO_WEIGHTS = REPO / "weights" / "audio"
FAST = SpeakOptions(controls=ReenactOptions(size=256, visible_label=False))


def write_audio(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """``samples`` (mono float in [-1, 1]) encoded by the file's suffix: wav, mp3, flac or m4a."""
    codec = {".wav": "pcm_s16le", ".mp3": "libmp3lame", ".flac": "flac", ".m4a": "aac"}[path.suffix]
    with av.open(str(path), "w") as c:
        stream = c.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        fifo = av.AudioFifo()
        frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = rate
        for f in resampler.resample(frame):
            fifo.write(f)
        size = stream.codec_context.frame_size or 1024
        pts = 0
        while fifo.samples:
            f = fifo.read(min(size, fifo.samples))
            f.pts = pts
            pts += f.samples
            for packet in stream.encode(f):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_audio(SPEECH)


@pytest.fixture(scope="module")
def pipe() -> MetaPortraitPipeline:
    return MetaPortraitPipeline.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def model() -> AudioToMotion:
    return load_audio_model()


@pytest.fixture(scope="module")
def source(pipe, astronaut):
    return pipe.prepare_source(astronaut)


def test_shipped_model_loads_strictly(tmp_path):
    model = AudioToMotion.from_pretrained(AUDIO_WEIGHTS)
    assert model.num_parameters() < 1_000_000
    assert float(model.components.abs().sum()) > 0  # the PCA basis is in the weights, not a default
    folder = tmp_path / "audio"
    shutil.copytree(AUDIO_WEIGHTS, folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "components"}, folder / "model.safetensors")
    with pytest.raises(WeightsError):
        AudioToMotion.from_pretrained(folder)


def test_silence_gives_the_closed_resting_mouth(tmp_path, model, source, speech):
    """Known answer: in silence the mouth is the source's own closed mouth (close_mouth), exactly;
    in speech it opens."""
    wav = write_audio(tmp_path / "gap.wav", np.concatenate([np.zeros(SAMPLE_RATE), speech[: 2 * SAMPLE_RATE],
                                                            np.zeros(SAMPLE_RATE)]))
    info = analyse_audio(wav)
    options = SpeakOptions(head_motion=0.0)
    frames = [lm for block in speech_landmarks(model, source, wav, info, options) for lm in block]
    assert len(frames) == 100
    rest = mouth_opening(close_mouth(source.landmarks))
    opening = np.array([mouth_opening(lm) for lm in frames])
    silent = np.r_[0:18, 82:100]  # 0.3 s away from the speech
    np.testing.assert_allclose(opening[silent], rest, atol=1e-4)
    assert opening[25:75].max() > rest + 0.08


def test_features_stream_in_constant_memory(model):
    """An hour-long stream holds only one block of samples at a time."""
    rng = np.random.default_rng(0)
    chunks = (rng.standard_normal(5 * SAMPLE_RATE).astype(np.float32) * 0.1 for _ in range(40))  # 200 s
    visemes = np.zeros(200 * 100, np.int8) if model.config.num_visemes else None  # 200 s of 10 ms classes
    feats = SpeechFeatures(model, chunks, reference_db=-20.0, fps=25.0, threshold_db=-50.0, visemes=visemes)
    largest = 0
    for f0 in range(0, 5000, 25):
        x, gates = feats.windows(f0, f0 + 25)
        assert x.shape == (25, model.config.channels, model.config.window)
        largest = max(largest, len(feats.buf))
    assert largest <= 6 * SAMPLE_RATE  # a block (1 s) + one decoded chunk (5 s) + the window margin


def test_same_seed_same_motion_and_head_motion_zero_keeps_the_head_still(tmp_path, model, source, speech):
    wav = write_audio(tmp_path / "s.wav", speech[: 2 * SAMPLE_RATE])
    info = analyse_audio(wav)

    def run(**kw):
        return np.stack([lm for b in speech_landmarks(model, source, wav, info, SpeakOptions(**kw)) for lm in b])

    a, b, c = run(seed=3), run(seed=3), run(seed=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1.0
    still = run(head_motion=0.0)
    nose_bridge = [234, 454, 127, 356]  # temples: far from the brows, eyes and mouth
    np.testing.assert_allclose(still[:, nose_bridge], np.broadcast_to(source.landmarks[nose_bridge], still[:, nose_bridge].shape), atol=0.5)
    assert np.abs(a[:, nose_bridge] - source.landmarks[nose_bridge]).max() > 2.0


def test_real_speech_gives_a_talking_video_with_the_audio(tmp_path, pipe, model, astronaut):
    out = tmp_path / "talk.mp4"
    result = speak(pipe, astronaut, SPEECH, out, FAST, model=model)
    duration = analyse_audio(SPEECH).duration
    info = probe_video(out)
    assert result.num_frames == info.num_frames == round(duration * 25)
    assert info.has_audio
    with av.open(str(out)) as c:
        assert abs(float(c.streams.audio[0].duration * c.streams.audio[0].time_base) - info.num_frames / 25) < 0.1
    opening = []
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as fa:
        for frame in read_frames(out):
            opening.append(mouth_opening(fa.largest(frame).landmarks))
    opening = np.asarray(opening)
    lo, hi = np.percentile(opening, 5), np.percentile(opening, 95)
    assert hi - lo > 0.05, (lo, hi)  # the mouth opens (by over 5 % of its width)
    mid = (lo + hi) / 2
    crossings = np.count_nonzero(np.diff((opening > mid).astype(int)) != 0)
    assert crossings >= 6, crossings  # ... and closes again, several times


@pytest.mark.parametrize("kind, error, message", [
    ("text", InvalidAudioError, "not an audio or video file"),
    ("image", InvalidAudioError, "not an audio or video file"),
    ("silent_video", InvalidAudioError, "no audio track"),
    ("empty", InvalidAudioError, "empty"),
    ("no_samples", InvalidAudioError, "holds no audio"),
    ("corrupt", InvalidAudioError, "not an audio or video file|corrupt"),
    ("silence", NoSpeechError, "no speech"),
    ("tone", NoSpeechError, "steady tone"),
    ("too_long", InputTooLargeError, "limit of 1 s"),
])
def test_bad_audio_is_refused_with_one_clear_error_and_no_output(tmp_path, pipe, model, astronaut, speech, kind,
                                                                   error, message):
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    options = FAST
    if kind == "text":
        audio = tmp_path / "notes.wav"
        audio.write_text("this is not audio\n" * 50)
    elif kind == "image":
        audio = REPO / "examples" / "astronaut.jpg"
    elif kind == "empty":
        audio = tmp_path / "empty.mp3"
        audio.write_bytes(b"")
    elif kind == "silent_video":
        audio = REPO / "examples" / "driving_franck.mp4"
    elif kind == "no_samples":  # a valid wav header and not one sample
        audio = tmp_path / "none.wav"
        with wave.open(str(audio), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
    elif kind == "corrupt":
        good = write_audio(tmp_path / "good.m4a", speech).read_bytes()
        audio = tmp_path / "corrupt.m4a"
        audio.write_bytes(good[:64] + bytes(np.random.default_rng(0).integers(0, 256, len(good) - 64, dtype=np.uint8)))
    elif kind == "silence":
        audio = write_audio(tmp_path / "silence.flac", np.zeros(3 * SAMPLE_RATE))
    elif kind == "tone":
        audio = write_audio(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 220 * t))
    else:
        audio = write_audio(tmp_path / "long.wav", speech)
        options = SpeakOptions(max_seconds=1.0, controls=FAST.controls)
    out = tmp_path / "out.mp4"
    with pytest.raises(error, match=message):
        speak(pipe, astronaut, audio, out, options, model=model)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4"] == []


@pytest.mark.parametrize("suffix", [".mp3", ".flac", ".m4a"])
def test_audio_formats_decode_to_the_same_speech(tmp_path, speech, suffix):
    path = write_audio(tmp_path / f"s{suffix}", speech)
    info, ref = analyse_audio(path), analyse_audio(SPEECH)
    assert abs(info.duration - ref.duration) < 0.1
    assert abs(info.reference_db - ref.reference_db) < 1.5


def test_cli_speak_writes_a_video_and_refuses_silence_in_one_line(tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    rc = cli.main(["speak", "--source", str(REPO / "examples" / "astronaut.jpg"), "--audio", str(SPEECH),
                   "--output", str(out), "--size", "256", "--head-motion", "0.5", "--seed", "2", "--quiet"])
    assert rc == 0 and probe_video(out).has_audio
    silent = write_audio(tmp_path / "silent.wav", np.zeros(2 * SAMPLE_RATE))
    bad = tmp_path / "bad.mp4"
    capsys.readouterr()
    rc = cli.main(["speak", "--source", str(REPO / "examples" / "astronaut.jpg"), "--audio", str(silent),
                   "--output", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no speech" in err[0]
    assert not bad.exists()


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_typed_text_is_spoken_offline(tmp_path):
    wav = synthesize_speech("Hello, this portrait can talk.", tmp_path / "t.wav")
    info = analyse_audio(wav)
    assert 1.0 < info.duration < 5.0 and info.speech_seconds > 0.5
    with pytest.raises(InvalidAudioError, match="no text"):
        synthesize_speech("   ")


def test_app_talk_tab_makes_a_video_and_refuses_a_missing_speech(repo_root):
    import gradio as gr

    import app

    photo = str(REPO / "examples" / "mona_lisa.jpg")
    out = app.talk(photo, str(SPEECH), head_motion=0.5, seed=1, progress=lambda *a, **k: None)
    assert probe_video(out).has_audio
    with pytest.raises(gr.Error, match="upload or record speech"):
        app.talk(photo, None, "", progress=lambda *a, **k: None)
    config = app.demo.config
    assert any(d.get("api_name") == "talk" for d in config["dependencies"])
