"""Visemes of a speech recording: phone recognition, then the phones grouped by how the mouth looks.

The audio-to-motion model learned from a couple of minutes of talking clips, far too little to learn
what a mouth does for each sound. Phonetic knowledge needs none of our data: CMU PocketSphinx
(Huggins-Daines et al., ICASSP 2006) ships an English acoustic model trained on hundreds of hours of
speech, and in its *allphone* mode (phone recognition under a phone bigram, no words) it labels every
10 ms frame with a phone, offline and about 25× faster than real time on one CPU thread.

The 39 CMU phones are grouped into visemes, the classes of phones that look alike on the lips
(Fisher, J. Speech Hear. Res. 1968; the consonant groups of Taylor et al., "Dynamic units of visual
speech", SCA 2012): closed lips (p b m), lip on teeth (f v), tongue between the teeth, the alveolar
and post-alveolar consonants, the back consonants, r, the rounded vowels, the open vowels, the spread
vowels, and silence/noise. :func:`viseme_track` gives one class per 10 ms frame, the same frames as
the model's log-mel columns; the model sees them one-hot beside the mels
(:class:`metaportrait.speak.SpeechFeatures`).

Memory stays flat for long recordings: the audio streams in chunks and the recogniser restarts every
``utterance_seconds`` (its search state grows with the utterance).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

# viseme classes: index -> the CMU phones in it (index 0: silence, noise, anything unknown)
VISEME_PHONES: tuple[tuple[str, ...], ...] = (
    ("SIL",),
    ("P", "B", "M"),
    ("F", "V"),
    ("TH", "DH"),
    ("T", "D", "N", "L"),
    ("S", "Z"),
    ("SH", "ZH", "CH", "JH"),
    ("K", "G", "NG", "HH", "Y"),
    ("R", "ER"),
    ("W", "UW", "UH", "OW", "OY", "AO"),
    ("AA", "AE", "AH", "AW", "AY"),
    ("EH", "EY", "IH", "IY"),
)
NUM_VISEMES = len(VISEME_PHONES)
PHONE_TO_VISEME = {p: i for i, group in enumerate(VISEME_PHONES) for p in group}
FRAME_SECONDS = 0.01  # the recogniser's frame (and the model's mel hop)
SAMPLE_RATE = 16_000


def _decoder():
    from pocketsphinx import Decoder, get_model_path

    model = get_model_path()
    return Decoder(hmm=os.path.join(model, "en-us", "en-us"),
                   allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
                   lw=2.0, beam=1e-20, pbeam=1e-20, samprate=SAMPLE_RATE, loglevel="FATAL")


def recognise_phones(chunks: Iterable[np.ndarray], utterance_seconds: float = 60.0) -> list[tuple[str, int, int]]:
    """``(phone, first frame, last frame)`` (10 ms frames from the first sample) of a stream of 16 kHz
    mono float chunks, by PocketSphinx allphone recognition."""
    decoder = _decoder()
    segments: list[tuple[str, int, int]] = []
    offset = 0  # frames before the current utterance
    fed = 0  # samples in the current utterance
    limit = int(utterance_seconds * SAMPLE_RATE)

    def finish() -> None:
        decoder.end_utt()
        # no hypothesis (an utterance without a frame, e.g. a stream ending on a restart): no segments
        segments.extend((s.word, offset + s.start_frame, offset + s.end_frame) for s in decoder.seg() or ())

    decoder.start_utt()
    for chunk in chunks:
        pcm = (np.clip(np.asarray(chunk, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
        for i in range(0, len(pcm), SAMPLE_RATE):  # 1 s pieces, so utterances restart on time
            piece = pcm[i:i + SAMPLE_RATE]
            decoder.process_raw(piece.tobytes(), False, False)
            fed += len(piece)
            if fed >= limit:
                finish()
                offset += fed // int(SAMPLE_RATE * FRAME_SECONDS)
                fed = 0
                decoder.start_utt()
    finish()
    return segments


def viseme_track(chunks: Iterable[np.ndarray], num_frames: int | None = None) -> np.ndarray:
    """Viseme class (int8, :data:`VISEME_PHONES`) of every 10 ms frame of the stream; frame ``k`` is
    the recording's time ``k · 10 ms``. ``num_frames`` fixes the length (silence past the end)."""
    segments = recognise_phones(chunks)
    end = max((s[2] + 1 for s in segments), default=0)
    track = np.zeros(max(end, num_frames or 0), np.int8)
    for phone, first, last in segments:
        track[first:last + 1] = PHONE_TO_VISEME.get(phone, 0)
    return track[:num_frames] if num_frames is not None else track


__all__ = ["NUM_VISEMES", "PHONE_TO_VISEME", "VISEME_PHONES", "recognise_phones", "viseme_track"]
