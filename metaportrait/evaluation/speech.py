"""Measures of an audio-driven talking head against the true video of the same speech.

* mouth opening per frame (:func:`metaportrait.face.controls.mouth_opening`: inner-lip gap over
  mouth width) and its Pearson correlation with the true video's;
* audio-visual offset: the lag (frames) maximising the correlation between the mouth opening and
  the speech envelope (the lag-search of SyncNet's offset, Chung & Zisserman 2016, on an explicit
  mouth measure instead of learned embeddings);
* blink rate (dips of the eye opening) and head-motion spread (std of yaw, pitch, roll).
"""

from __future__ import annotations

import numpy as np

from metaportrait.audio import HOP, SAMPLE_RATE, frame_levels
from metaportrait.face.canonical import head_pose
from metaportrait.face.controls import eye_opening, mouth_opening


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def mouth_series(landmarks: np.ndarray) -> np.ndarray:
    return np.array([mouth_opening(lm) for lm in landmarks], np.float32)


def speech_envelope(wave: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
    """Per video frame, the mean 10 ms level (dB, floored at −60 dB below the peak) around it."""
    levels = frame_levels(wave)
    levels = np.maximum(levels, levels.max() - 60.0)
    per_frame = SAMPLE_RATE / HOP / fps
    out = np.empty(num_frames, np.float32)
    for t in range(num_frames):
        a = int(round(t * per_frame - per_frame / 2))
        seg = levels[max(0, a): max(0, a) + max(1, int(round(per_frame)))]
        out[t] = seg.mean() if len(seg) else levels[-1]
    return out


def av_offset(mouth: np.ndarray, envelope: np.ndarray, max_lag: int = 8) -> int:
    """The lag (frames; positive: the mouth follows the sound) of maximum correlation."""
    best, best_r = 0, -np.inf
    n = min(len(mouth), len(envelope))
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            r = pearson(mouth[lag:n], envelope[: n - lag])
        else:
            r = pearson(mouth[: n + lag], envelope[-lag:n])
        if r > best_r:
            best, best_r = lag, r
    return best


def blink_count(landmarks: np.ndarray, fps: float, drop: float = 0.55) -> int:
    """Blinks: onsets of the eye opening falling below ``drop`` × its median, at least 0.2 s apart."""
    eyes = np.array([eye_opening(lm) for lm in landmarks])
    closed = eyes < drop * np.median(eyes)
    onsets = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    if len(closed) and closed[0]:
        onsets = np.r_[0, onsets]
    count, last = 0, -np.inf
    for i in onsets:
        if i - last >= 0.2 * fps:
            count, last = count + 1, i
    return count


def head_spread(landmarks_3d: np.ndarray) -> np.ndarray:
    """Std (degrees) of yaw, pitch and roll over a clip, relative to its first frame."""
    poses = np.stack([head_pose(lm, landmarks_3d[0]) for lm in landmarks_3d])
    return poses.std(0)


__all__ = ["av_offset", "blink_count", "head_spread", "mouth_series", "pearson", "speech_envelope"]
