"""Speech input for audio-driven talking heads: decoding, checking and level analysis.

Any file FFmpeg reads (wav, mp3, m4a, flac, ogg, or the audio track of a video) is decoded through
PyAV, resampled to 16 kHz mono float32 and streamed in chunks, so memory stays flat however long
the recording is. The audio of a video is aligned to the video's first frame, as the muxer
(:class:`metaportrait.video.VideoWriter`) aligns it in the output.

:func:`analyse_audio` is the first of two passes over the file: it decodes everything once, keeps
only a histogram of the 10 ms frame levels, and refuses bad input with one clear error before any
output exists: not audio (:class:`InvalidAudioError`), empty, corrupt, too long
(:class:`InputTooLargeError`), no speech (:class:`NoSpeechError`). Its reference level (the 95th
percentile frame level) normalises the features the audio-to-motion model sees, so the model is
independent of the recording's gain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from metaportrait.errors import InputTooLargeError, InvalidAudioError, NoSpeechError
from metaportrait.video import AUDIO_FORMATS

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms level frames
MAX_AUDIO_SECONDS = 600.0
MAX_AUDIO_BYTES = 500 * 1024 * 1024
SILENCE_DB = -50.0  # frames below this level are silence whatever the noise floor
_BINS = np.arange(-120.0, 0.51, 0.5)  # level histogram edges, dBFS
MIN_SPEECH_SECONDS = 0.2
MIN_DYNAMIC_RANGE_DB = 6.0


@dataclass(frozen=True)
class AudioInfo:
    """What the first pass learned about a recording."""

    path: Path
    duration: float  # seconds (from the video's first frame for a video's track)
    reference_db: float  # 95th percentile of the 10 ms frame levels (dBFS)
    noise_db: float  # 10th percentile (the noise floor)
    speech_threshold_db: float  # frames above this level count as voiced
    speech_seconds: float


def frame_levels(wave: np.ndarray) -> np.ndarray:
    """RMS level (dBFS) of each whole 10 ms frame of a 16 kHz wave."""
    n = len(wave) // HOP
    if n == 0:
        return np.zeros(0, np.float32)
    power = np.square(wave[: n * HOP].reshape(n, HOP).astype(np.float64)).mean(1)
    return (10.0 * np.log10(power + 1e-12)).astype(np.float32)


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise InvalidAudioError(f"audio '{path}' does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise InvalidAudioError(f"audio '{path}' is empty (0 bytes)")
    if size > MAX_AUDIO_BYTES:
        raise InputTooLargeError(f"audio '{path}' is {size / 2**20:.0f} MiB, over the limit of {MAX_AUDIO_BYTES // 2**20} MiB")
    try:
        container = av.open(str(path), options={"format_whitelist": ",".join(AUDIO_FORMATS), "protocol_whitelist": "file"})
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise InvalidAudioError(f"'{path.name}' is not an audio or video file FFmpeg can read ({e})") from e
    if not container.streams.audio:
        container.close()
        raise InvalidAudioError(f"'{path.name}' has no audio track")
    return container


def iter_audio(
    path: str | Path, chunk_seconds: float = 5.0, max_seconds: float = MAX_AUDIO_SECONDS
) -> Iterator[np.ndarray]:
    """Stream the first audio track as 16 kHz mono float32 chunks of about ``chunk_seconds``.

    For a video the samples start at its first video frame (a track that starts later is padded
    with silence, an earlier one trimmed). Raises :class:`InvalidAudioError` on a corrupt stream and
    :class:`InputTooLargeError` past ``max_seconds``.
    """
    path = Path(path).expanduser()
    container = _open(path)
    try:
        stream = container.streams.audio[0]
        declared = float(container.duration) / 1e6 if container.duration else None
        if declared is not None and declared > max_seconds + 1.0:
            raise InputTooLargeError(f"audio '{path.name}' lasts {declared:.0f} s, over the limit of {max_seconds:g} s")
        offset = 0.0
        if container.streams.video and stream.start_time is not None:
            vs = container.streams.video[0]
            v_start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
            offset = float(stream.start_time * stream.time_base) - v_start
        skip = max(0, int(round(-offset * SAMPLE_RATE)))
        lead = max(0, int(round(offset * SAMPLE_RATE)))
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunk = max(HOP, int(chunk_seconds * SAMPLE_RATE))
        limit = int(max_seconds * SAMPLE_RATE)
        pending: list[np.ndarray] = [np.zeros(lead, np.float32)] if lead else []
        held = lead
        total = 0

        def decoded() -> Iterator[np.ndarray]:
            try:
                for packet in container.demux(stream):
                    for frame in packet.decode():
                        for f in resampler.resample(frame):
                            yield f.to_ndarray().reshape(-1)
                for f in resampler.resample(None):
                    yield f.to_ndarray().reshape(-1)
            except av.FFmpegError as e:
                raise InvalidAudioError(f"the audio of '{path.name}' is corrupt (FFmpeg: {e})") from e

        for samples in decoded():
            if skip:
                drop = min(skip, len(samples))
                samples, skip = samples[drop:], skip - drop
            if not len(samples):
                continue
            samples = np.nan_to_num(samples.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
            total += len(samples)
            if total > limit:
                raise InputTooLargeError(f"audio '{path.name}' is longer than the limit of {max_seconds:g} s")
            pending.append(samples)
            held += len(samples)
            if held >= chunk:
                block = np.concatenate(pending)
                pending, held = [], 0
                yield block
        if pending:
            yield np.concatenate(pending)
    finally:
        container.close()


def analyse_audio(path: str | Path, max_seconds: float = MAX_AUDIO_SECONDS) -> AudioInfo:
    """Decode the whole recording once (memory: one chunk and a level histogram) and check it."""
    path = Path(path).expanduser()
    hist = np.zeros(len(_BINS) - 1, np.int64)
    samples = 0
    tail = np.zeros(0, np.float32)
    for chunk in iter_audio(path, max_seconds=max_seconds):
        samples += len(chunk)
        chunk = np.concatenate([tail, chunk])
        n = len(chunk) // HOP * HOP
        levels = np.clip(frame_levels(chunk[:n]), _BINS[0], _BINS[-1] - 1e-3)
        hist += np.histogram(levels, _BINS)[0]
        tail = chunk[n:]
    duration = samples / SAMPLE_RATE
    if hist.sum() < 10:  # under 0.1 s
        raise InvalidAudioError(f"'{path.name}' holds no audio ({duration * 1000:.0f} ms of samples)")
    cdf = np.cumsum(hist) / hist.sum()
    centres = (_BINS[:-1] + _BINS[1:]) / 2

    def percentile(q: float) -> float:
        return float(centres[min(int(np.searchsorted(cdf, q)), len(centres) - 1)])

    ref, noise = percentile(0.95), percentile(0.10)
    threshold = max(SILENCE_DB, noise + 10.0)
    speech = float(hist[centres > threshold].sum()) * HOP / SAMPLE_RATE
    if ref - noise < MIN_DYNAMIC_RANGE_DB and ref > SILENCE_DB:
        raise NoSpeechError(f"'{path.name}' has no speech: its level varies by only {ref - noise:.1f} dB "
                            "(a steady tone or noise; speech varies by more than 6 dB)")
    if speech < MIN_SPEECH_SECONDS or ref <= SILENCE_DB:
        raise NoSpeechError(f"'{path.name}' has no speech: {speech:.2f} s of its {duration:.1f} s are louder than "
                            f"{threshold:.0f} dBFS (loudest 5 %: {ref:.0f} dBFS)")
    if ref - noise < MIN_DYNAMIC_RANGE_DB:
        raise NoSpeechError(f"'{path.name}' has no speech: its level varies by only {ref - noise:.1f} dB "
                            "(a steady tone or noise; speech varies by more than 6 dB)")
    return AudioInfo(path=path, duration=duration, reference_db=ref, noise_db=noise,
                     speech_threshold_db=threshold, speech_seconds=speech)


def read_audio(path: str | Path, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """The whole recording as one 16 kHz mono float32 array (for short clips: training, tests)."""
    chunks = list(iter_audio(path, max_seconds=max_seconds))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


__all__ = [
    "AudioInfo",
    "HOP",
    "MAX_AUDIO_SECONDS",
    "SAMPLE_RATE",
    "analyse_audio",
    "frame_levels",
    "iter_audio",
    "read_audio",
]
