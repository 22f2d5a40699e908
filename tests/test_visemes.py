"""Visemes of real speech (metaportrait.visemes): phone recognition by PocketSphinx's shipped English
model, grouped into mouth shapes, streamed in chunks, and fed one-hot beside the mels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metaportrait.audio import SAMPLE_RATE, read_audio
from metaportrait.models.audio_to_motion import AudioToMotion, AudioToMotionConfig
from metaportrait.speak import SpeechFeatures
from metaportrait.visemes import NUM_VISEMES, PHONE_TO_VISEME, VISEME_PHONES, recognise_phones, viseme_track

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "examples" / "driving_speech.mp4"


@pytest.fixture(scope="module")
def padded() -> np.ndarray:
    """1 s of digital silence, the example's 4 s of speech, 1 s of silence."""
    speech = read_audio(SPEECH)
    silence = np.zeros(SAMPLE_RATE, np.float32)
    return np.concatenate([silence, speech, silence])


@pytest.fixture(scope="module")
def track(padded) -> np.ndarray:
    return viseme_track([padded])


def test_every_cmu_phone_has_one_viseme():
    phones = [p for group in VISEME_PHONES for p in group]
    assert len(phones) == len(set(phones)) == 40  # 39 CMU phones + silence
    assert NUM_VISEMES == len(VISEME_PHONES) == 12
    assert PHONE_TO_VISEME["SIL"] == 0 and PHONE_TO_VISEME["P"] == PHONE_TO_VISEME["M"]


def test_silence_and_speech_are_told_apart(padded, track):
    assert len(padded) / 160 - 8 < len(track) <= len(padded) / 160  # the last partial window is dropped
    assert (track[:90] == 0).all() and (track[-90:] == 0).all()  # the silent seconds
    speech = track[110:len(track) - 110]
    assert (speech != 0).mean() > 0.9
    assert len(np.unique(speech)) >= 8  # running speech passes through most mouth shapes


def test_phones_are_in_time_order_and_stream_in_chunks(padded, track):
    segments = recognise_phones([padded])
    starts = [s[1] for s in segments]
    assert starts == sorted(starts) and all(a <= b for _, a, b in segments)
    chunked = viseme_track(padded[i:i + 7000] for i in range(0, len(padded), 7000))
    np.testing.assert_array_equal(chunked, track)
    # the recogniser restarts every utterance_seconds (flat memory on long recordings): same timeline
    restarted = np.zeros_like(track)
    for phone, first, last in recognise_phones([padded], utterance_seconds=2.0):
        restarted[first:last + 1] = PHONE_TO_VISEME.get(phone, 0)
    assert (restarted == track).mean() > 0.85
    # a stream that ends exactly on a restart (4 s, restarts every 2 s) ends with an empty utterance
    ends_on_restart = recognise_phones([padded[:4 * SAMPLE_RATE]], utterance_seconds=2.0)
    assert ends_on_restart and ends_on_restart[-1][2] < 400


def test_features_carry_one_hot_visemes_aligned_with_the_mels(padded, track):
    config = AudioToMotionConfig(n_mels=20, hidden_channels=8, num_visemes=NUM_VISEMES, context_frames=6)
    model = AudioToMotion(config).eval()
    feats = SpeechFeatures(model, iter([padded]), reference_db=-20.0, fps=25.0, threshold_db=-50.0, visemes=track)
    x, _ = feats.windows(0, 150)
    assert x.shape == (150, config.channels, config.window)
    onehot = x[:, config.n_mels:]
    np.testing.assert_array_equal(onehot.sum(1).numpy(), 1.0)
    # the centre column of frame t is the recording's 10 ms frame 4·t (25 fps)
    centre = onehot[:, :, config.context_frames].argmax(1).numpy()
    np.testing.assert_array_equal(centre, track[np.arange(150) * 4])
    with torch.no_grad():
        assert model(x).coefficients.shape == (150, config.num_coefficients)
    with pytest.raises(ValueError, match="viseme_track"):
        SpeechFeatures(model, iter([padded]), reference_db=-20.0, fps=25.0, threshold_db=-50.0)
    with pytest.raises(ValueError, match=f"B×{config.channels}×"):
        model(torch.zeros(2, config.n_mels, config.window))
