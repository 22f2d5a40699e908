"""train-audio on a real talking clip (examples/driving_speech.mp4: its landmarks and its own speech):
the in-time validation folds, the visemes input and the written model that `speak` loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metaportrait.audio import analyse_audio, read_audio
from metaportrait.face import FaceAnalyzer
from metaportrait.models.audio_to_motion import AudioToMotion
from metaportrait.training import train_speech
from metaportrait.video import read_frames
from metaportrait.visemes import NUM_VISEMES

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "examples" / "driving_speech.mp4"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A speech-data folder as `prepare-audio` writes it: the example clip as two training people
    (its two halves) and a held-out one that must never be read."""
    frames = read_frames(SPEECH)
    lm2 = np.zeros((len(frames), 478, 2), np.float32)
    lm3 = np.zeros((len(frames), 478, 3), np.float32)
    valid = np.zeros(len(frames), bool)
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as fa:
        for i, f in enumerate(frames):
            d = fa.detect(np.ascontiguousarray(f))
            if d:
                lm2[i], lm3[i], valid[i] = d[0].landmarks, d[0].landmarks_3d, True
    wave, info = read_audio(SPEECH), analyse_audio(SPEECH)
    folder = tmp_path_factory.mktemp("speech")
    half, samples = len(frames) // 2, len(frames) // 2 * 640
    for name, sl, ws in (("clip_a", slice(0, half), slice(0, samples)), ("clip_b", slice(half, None), slice(samples, None))):
        np.savez(folder / f"{name}.npz", landmarks=lm2[sl], landmarks_3d=lm3[sl], valid=valid[sl], wave=wave[ws],
                 fps=np.float32(25.0), reference_db=np.float32(info.reference_db),
                 speech_threshold_db=np.float32(info.speech_threshold_db), split=np.array("train"))
    np.savez(folder / f"{train_speech.HELDOUT[0]}.npz", broken=np.zeros(1))  # read it and the run fails
    return folder


@pytest.mark.parametrize("fold", [0, 4])
def test_train_audio_with_visemes_holds_out_a_block_in_time(tmp_path, data, fold):
    out = tmp_path / f"audio{fold}"
    args = ["--data", str(data), "--output", str(out), "--steps", "20", "--batch-size", "16", "--n-mels", "8",
            "--hidden", "8", "--context", "6", "--visemes", "--vtlp", "0.1", "--mouth-loss", "1", "--fold", str(fold),
            "--cache", str(tmp_path / "cache")]
    assert train_speech.main(args) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["data"] == ["clip_a", "clip_b"]
    assert record["fold"] == fold and record["visemes"]
    frames = sum(int(np.load(data / f"{c}.npz")["valid"].sum()) for c in ("clip_a", "clip_b"))
    assert record["frames"]["validation"] == pytest.approx(0.2 * frames, abs=2)
    assert record["frames"]["train"] + record["frames"]["validation"] == frames
    assert np.isfinite(record["best"]["val_mouth_r"])
    model = AudioToMotion.from_pretrained(out)
    assert model.config.num_visemes == NUM_VISEMES and model.config.channels == 8 + NUM_VISEMES
    assert len(list((tmp_path / "cache").glob("clip_*.npz"))) == 2
    # a second run reads the cached features and targets and trains the same model
    assert train_speech.main(args[:3] + [str(tmp_path / "again")] + args[4:]) == 0
    again = json.loads((tmp_path / "again" / "training.json").read_text())
    assert again["log"] == record["log"]
