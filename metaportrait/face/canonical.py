"""A canonical, identity-normalised face frame for motion learned across people.

Each landmark set gets its own frame from its stable upper-face points (forehead, nose bridge,
eye corners, temples: :data:`~metaportrait.face.motion.STABLE_POINTS`): origin at their mean,
unit length their RMS radius, x axis along the outer eye corners (33 -> 263). Displacements
expressed in that frame mean the same for a big or a small face, upright or tilted, so motion
learned on some people can be added to anyone's landmarks (the "speaker-aware" landmark offsets
of MakeItTalk, Zhou et al. 2020, §3.1, normalised the same way before they are learned).

:func:`head_pose` estimates a head's rotation (yaw, pitch, roll in degrees) relative to a
reference from MediaPipe's 3-D landmarks, for the statistics of head motion.
"""

from __future__ import annotations

import numpy as np

from metaportrait.face.motion import STABLE_POINTS, _umeyama

_STABLE = list(STABLE_POINTS)


def face_frame(lm: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``(origin 2, scale, R 2×2)`` of one ``N×2`` landmark set: canonical = (lm − origin) @ R / scale."""
    xy = np.asarray(lm, np.float64)[:, :2]
    stable = xy[_STABLE]
    origin = stable.mean(0)
    scale = float(np.sqrt(((stable - origin) ** 2).sum(1).mean()))
    axis = xy[263] - xy[33]
    axis = axis / max(float(np.linalg.norm(axis)), 1e-9)
    rot = np.stack([axis, np.array([-axis[1], axis[0]])], axis=1)  # columns: x axis, y axis (image down)
    return origin, max(scale, 1e-9), rot


def to_canonical(lm: np.ndarray) -> np.ndarray:
    """``N×2`` landmarks in their own canonical frame."""
    origin, scale, rot = face_frame(lm)
    return ((np.asarray(lm, np.float64)[:, :2] - origin) @ rot / scale).astype(np.float32)


def displacement_to_pixels(lm: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """A canonical-frame displacement ``N×2`` (or ``B×N×2``) as pixels of the face ``lm``."""
    _origin, scale, rot = face_frame(lm)
    return (np.asarray(disp, np.float64) @ rot.T * scale).astype(np.float32)


def lower_face_weights(canonical: np.ndarray) -> np.ndarray:
    """Per-point weight of the mouth, jaw and cheek motion: 1 from the nose's base down, fading to
    0 over 0.25 face units above it (eyes, brows and forehead keep 0)."""
    y = np.asarray(canonical)[:, 1]
    nose_base = float(canonical[2, 1])
    return np.clip((y - (nose_base - 0.25)) / 0.25, 0.0, 1.0).astype(np.float32)


def head_pose(lm3: np.ndarray, reference3: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) degrees of the 3-D rotation taking ``reference3``'s stable points onto
    ``lm3``'s (both ``N×3``; rotate_head's conventions)."""
    _s, r, _t = _umeyama(np.asarray(reference3, np.float64)[_STABLE], np.asarray(lm3, np.float64)[_STABLE])
    # r = Rz(roll) Rx(pitch) Ry(yaw)
    pitch = np.arcsin(np.clip(r[2, 1], -1.0, 1.0))
    yaw = np.arctan2(-r[2, 0], r[2, 2])
    roll = np.arctan2(-r[0, 1], r[1, 1])
    return np.degrees([yaw, pitch, roll]).astype(np.float32)


__all__ = ["displacement_to_pixels", "face_frame", "head_pose", "lower_face_weights", "to_canonical"]
