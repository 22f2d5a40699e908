"""Motion control on explicit landmarks: portrait editing, motion parts and retargeting.

Every control is a change of the 478 dense landmarks, rendered by the same warp/generator as a
driving video, so edits and reenactment share one path (MetaPortrait, Zhang et al., CVPR 2023,
§3.1: the generator is driven by landmark images). Landmarks are ``N×2`` (or ``N×3`` for head
rotation) continuous pixels of one frame; every function returns a new array.

* :func:`set_eye_opening`, :func:`set_mouth_opening`, :func:`add_smile`, :func:`raise_brows`,
  :func:`move_gaze` — local edits, spread smoothly to the neighbouring landmarks (Gaussian
  falloff), so skin around the edited feature follows instead of folding;
* :func:`rotate_head` — a 3-D rotation of the landmarks about the head centre (orthographic);
* :func:`split_pose` / :func:`apply_parts` — a target split into rigid head pose and expression,
  recombined by parts (``head``, ``expression``, ``eyes``, ``lips``) and scales.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from mediapipe.python.solutions import face_mesh_connections as _conn

from metaportrait.face.motion import (
    INNER_LIP_PAIRS,
    STABLE_POINTS,
    _as_landmarks,
    _EYES,
    _umeyama,
    close_mouth,
    irises_inside_eyelids,
)

LEFT_BROW = tuple(sorted({i for e in _conn.FACEMESH_RIGHT_EYEBROW for i in e}))  # image's left
RIGHT_BROW = tuple(sorted({i for e in _conn.FACEMESH_LEFT_EYEBROW for i in e}))
LIPS = tuple(sorted({i for e in _conn.FACEMESH_LIPS for i in e}))
IRISES = tuple(range(468, 478))
EYE_REGION = tuple(sorted(
    {i for e in _conn.FACEMESH_LEFT_EYE | _conn.FACEMESH_RIGHT_EYE for i in e} | set(IRISES)
))
WIDE_OPEN_EYE = 0.45
"""Lid gap / eye width of an eye at opening 1 (wide open); a relaxed open eye is ≈ 0.3."""
WIDE_OPEN_MOUTH = 0.55
"""Inner-lip gap / mouth width of a mouth at opening 1 (wide open)."""


def _spread(lm: np.ndarray, idx: Iterable[int], disp: np.ndarray, radius: float) -> np.ndarray:
    """Move the control points ``idx`` by ``disp`` exactly and every other landmark by a Gaussian-
    weighted average of the controls' displacements, fading with the distance to the nearest
    control (σ = ``radius``)."""
    idx = np.asarray(list(idx), dtype=np.int64)
    out = lm.copy()
    ctrl = lm[idx, :2]
    d2 = ((lm[:, None, :2] - ctrl[None]) ** 2).sum(-1)  # N×C
    w = np.exp(-d2 / (2 * radius**2))
    share = (w @ disp) / np.maximum(w.sum(1, keepdims=True), 1e-12)
    fade = w.max(1, keepdims=True)
    out[:, :2] = lm[:, :2] + share * fade
    out[idx, :2] = lm[idx, :2] + disp
    return out


def _eye_axes(lm: np.ndarray, corners: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    a, b = lm[corners[0], :2], lm[corners[1], :2]
    width = float(np.linalg.norm(b - a))
    ax = (b - a) / max(width, 1e-9)
    nx = np.array([-ax[1], ax[0]])
    return a, ax, nx, width


def _lid_gap(lm: np.ndarray, corners, upper, lower) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """(mean lid-to-lid distance across the eye, eye width, origin, along, across axes)."""
    a, ax, nx, width = _eye_axes(lm, corners)
    n_up = (lm[list(upper), :2] - a) @ nx
    n_lo = (lm[list(lower), :2] - a) @ nx
    return abs(float(n_lo.mean() - n_up.mean())), width, a, ax, nx


def eye_opening(lm: np.ndarray) -> float:
    """Both eyes' opening on the :func:`set_eye_opening` scale (0 closed, 1 wide open)."""
    lm = _as_landmarks(lm, "landmarks")
    vals = []
    for corners, upper, lower, _ in _EYES:
        gap, width, *_ = _lid_gap(lm, corners, upper, lower)
        vals.append(gap / max(_EYE_GAP_AT_1 * width, 1e-9))
    return float(np.mean(vals))


_EYE_GAP_AT_1 = 0.75 * WIDE_OPEN_EYE  # mean lid-to-lid distance / eye width of a wide-open eye


def set_eye_opening(lm: np.ndarray, opening: float) -> np.ndarray:
    """Both eyes opened to ``opening`` (0 = closed … 1 = wide open): the lids move apart or together
    (mostly the upper lid, as in a blink), the skin around them follows, irises stay between them."""
    if not 0.0 <= opening <= 1.5:
        raise ValueError(f"eye opening must be in [0, 1.5], got {opening!r}")
    lm = _as_landmarks(lm, "landmarks")
    out = lm.copy()
    for corners, upper, lower, _ in _EYES:
        gap, width, a, ax, nx = _lid_gap(out, corners, upper, lower)
        up, lo = list(upper), list(lower)
        n_up = (out[up, :2] - a) @ nx
        n_lo = (out[lo, :2] - a) @ nx
        k = opening * _EYE_GAP_AT_1 * width / max(gap, 1e-6)
        # the lids meet on a curve three quarters of the way down (a blink is mostly the upper lid),
        # each lid point scaled toward that curve at its own position along the eye
        t_up = (out[up, :2] - a) @ ax
        t_lo = (out[lo, :2] - a) @ ax
        ends_t, ends_n = np.array([0.0, width]), np.zeros(2)

        def profile(t_pts, n_pts, t):
            order = np.argsort(np.r_[ends_t, t_pts])
            return np.interp(t, np.r_[ends_t, t_pts][order], np.r_[ends_n, n_pts][order])

        def meet(t):
            return 0.75 * profile(t_lo, n_lo, t) + 0.25 * profile(t_up, n_up, t)

        new_up = meet(t_up) + (n_up - meet(t_up)) * k
        new_lo = meet(t_lo) + (n_lo - meet(t_lo)) * k
        disp = np.concatenate([np.outer(new_up - n_up, nx), np.outer(new_lo - n_lo, nx)])
        out = _spread(out, up + lo, disp, radius=0.25 * width)
    return irises_inside_eyelids(out)


def mouth_opening(lm: np.ndarray) -> float:
    """Inner-lip gap (13-14) over mouth width (61-291)."""
    lm = _as_landmarks(lm, "landmarks")
    return float(np.linalg.norm(lm[13, :2] - lm[14, :2]) / max(np.linalg.norm(lm[61, :2] - lm[291, :2]), 1e-9))


def set_mouth_opening(lm: np.ndarray, opening: float) -> np.ndarray:
    """The mouth opened to ``opening`` (0 = closed … 1 = wide open) by the jaw: the lower lip, chin
    and jaw move down from the closed mouth (:func:`close_mouth`), the upper lip a little up."""
    if not 0.0 <= opening <= 1.5:
        raise ValueError(f"mouth opening must be in [0, 1.5], got {opening!r}")
    lm = _as_landmarks(lm, "landmarks")
    closed = close_mouth(lm).astype(np.float64)
    width = float(np.linalg.norm(closed[291, :2] - closed[61, :2]))
    if opening == 0 or width <= 0:
        return closed.astype(np.float32)
    # open the closed face: the inverse of close_mouth's motion, with a target gap at the middle
    left, right = closed[61, :2], closed[291, :2]
    axis = (right - left) / width
    down = closed[152, :2] - (left + right) / 2
    down = down - (down @ axis) * axis
    depth = float(np.linalg.norm(down))
    down /= max(depth, 1e-9)
    rel = closed[:, :2] - (left + right) / 2
    along, below = rel @ axis, rel @ down
    gap = opening * WIDE_OPEN_MOUTH * width
    half = width / 2
    # the opening is widest in the middle and closes at the corners
    profile = np.clip(1.0 - (along / half) ** 2, 0.0, 1.0)
    upper_lip = np.zeros(len(closed), bool)
    upper_lip[[u for u, _ in INNER_LIP_PAIRS]] = True
    lower = (below > 0) & (below <= depth * 1.15) & ~upper_lip
    lower[[d for _, d in INNER_LIP_PAIRS]] = True
    jaw_fade = np.clip(1.0 - (np.abs(along) - half) / (1.2 * half), 0.0, 1.0)
    shift = np.zeros(len(closed))
    inner = np.abs(along) <= half
    shift[lower & inner] = 0.8 * gap * profile[lower & inner]
    shift[lower & ~inner] = 0.8 * gap * 0.25 * jaw_fade[lower & ~inner]
    chin_like = lower & (below > 0.35 * depth)
    shift[chin_like] = np.maximum(shift[chin_like], 0.8 * gap * jaw_fade[chin_like])
    ups = [u for u, _ in INNER_LIP_PAIRS]
    shift[ups] = -0.2 * gap * profile[ups]
    out = closed.copy()
    out[:, :2] = closed[:, :2] + shift[:, None] * down[None, :]
    return out.astype(np.float32)


def add_smile(lm: np.ndarray, amount: float) -> np.ndarray:
    """Mouth corners up and out by ``amount`` (−1 … 1; negative turns them down), cheeks following."""
    if not -1.5 <= amount <= 1.5:
        raise ValueError(f"smile must be in [-1.5, 1.5], got {amount!r}")
    lm = _as_landmarks(lm, "landmarks")
    left, right = lm[61, :2], lm[291, :2]
    width = float(np.linalg.norm(right - left))
    axis = (right - left) / max(width, 1e-9)
    up = lm[10, :2] - lm[152, :2]
    up = up - (up @ axis) * axis
    up /= max(float(np.linalg.norm(up)), 1e-9)
    corners = [61, 291, 78, 308, 62, 292, 76, 306, 185, 409, 146, 375]
    sign = np.array([-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1], dtype=np.float64)
    lift = amount * 0.12 * width
    spread = amount * 0.06 * width
    weight = np.array([1, 1, 1, 1, 0.7, 0.7, 0.7, 0.7, 0.5, 0.5, 0.5, 0.5])
    disp = (lift * up[None, :] + (sign * spread)[:, None] * axis[None, :]) * weight[:, None]
    return _spread(lm, corners, disp, radius=0.35 * width).astype(np.float32)


def raise_brows(lm: np.ndarray, amount: float) -> np.ndarray:
    """Eyebrows up by ``amount`` (−1 … 1; negative lowers them), the forehead following."""
    if not -1.5 <= amount <= 1.5:
        raise ValueError(f"brows must be in [-1.5, 1.5], got {amount!r}")
    lm = _as_landmarks(lm, "landmarks")
    _, _, nx_l, width = _eye_axes(lm, (33, 133))
    up = lm[10, :2] - lm[152, :2]
    up /= max(float(np.linalg.norm(up)), 1e-9)
    brows = list(LEFT_BROW) + list(RIGHT_BROW)
    disp = np.tile(up * amount * 0.35 * width, (len(brows), 1))
    return _spread(lm, brows, disp, radius=0.45 * width).astype(np.float32)


def move_gaze(lm: np.ndarray, x: float, y: float) -> np.ndarray:
    """Irises moved within the eyes: ``x`` −1 … 1 (image left … right), ``y`` −1 … 1 (up … down)."""
    if not (-1.5 <= x <= 1.5 and -1.5 <= y <= 1.5):
        raise ValueError(f"gaze must be in [-1.5, 1.5], got ({x!r}, {y!r})")
    lm = _as_landmarks(lm, "landmarks")
    out = lm.copy()
    if lm.shape[0] < 478:
        return out.astype(np.float32)
    for corners, upper, lower, iris in _EYES:
        a, ax, nx, width = _eye_axes(lm, corners)
        sx = 1.0 if ax[0] >= 0 else -1.0  # "right" is the image's right whichever corner comes first
        shift = ax * sx * x * 0.22 * width + nx * y * 0.12 * width
        out[list(iris), :2] += shift
    return irises_inside_eyelids(out)


def rotate_head(lm3: np.ndarray, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The landmarks rotated in 3-D about the head centre (degrees; yaw turns to the image's right,
    pitch nods down, roll tilts clockwise), projected orthographically; ``N×3`` in, ``N×2`` out."""
    lm3 = np.asarray(lm3, dtype=np.float64)
    if lm3.ndim != 2 or lm3.shape[1] != 3:
        raise ValueError(f"rotate_head needs N×3 landmarks (x, y, z), got shape {lm3.shape}")
    for name, v in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
        if not -90 <= v <= 90:
            raise ValueError(f"{name} must be in [-90, 90] degrees, got {v!r}")
    c = lm3[list(STABLE_POINTS)].mean(0)
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ((lm3 - c) @ (rz @ rx @ ry).T + c)[:, :2].astype(np.float32)


# ------------------------------------------------------------------------ parts and scales
PARTS = ("all", "head", "expression", "eyes", "lips")


def split_pose(source: np.ndarray, target: np.ndarray) -> tuple[tuple[float, np.ndarray, np.ndarray], np.ndarray]:
    """``(pose, expression)``: the rigid 2-D similarity source -> target fitted on the stable
    landmarks, and the target's residual in the source's pose (``target`` = pose(source + expression))."""
    src = _as_landmarks(source, "source")[:, :2]
    tgt = _as_landmarks(target, "target")[:, :2]
    idx = list(STABLE_POINTS)
    s, r, t = _umeyama(src[idx], tgt[idx])
    back = ((tgt - t) @ r) / s  # pose⁻¹(target)
    return (s, r, t), back - src


def _scaled_pose(pose: tuple[float, np.ndarray, np.ndarray], k: float, centre: np.ndarray):
    s, r, t = pose
    angle = np.arctan2(r[1, 0], r[0, 0]) * k
    rk = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    sk = s**k
    # the full pose moves the centre to s·R·c + t; the scaled one moves it by k of that shift
    moved = s * r @ centre + t
    tk = centre + k * (moved - centre) - sk * rk @ centre
    return sk, rk, tk


def apply_parts(
    source: np.ndarray,
    target: np.ndarray,
    parts: Iterable[str] = ("all",),
    motion_scale: float = 1.0,
    pose_scale: float = 1.0,
) -> np.ndarray:
    """The target landmarks keeping only the chosen parts of the motion source -> target.

    ``head``: the rigid pose only; ``expression``: everything but the pose; ``eyes``: the eye and
    iris motion only; ``lips``: the mouth motion only (dubbing); ``all``: everything. Parts combine
    (``("head", "lips")``). ``motion_scale`` scales the expression (exaggerate > 1, damp < 1),
    ``pose_scale`` the head pose (rotation angle, log-scale and shift).
    """
    parts = tuple(parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty combination of {PARTS}, got {parts!r}")
    for name, v in (("motion_scale", motion_scale), ("pose_scale", pose_scale)):
        if not (np.isfinite(v) and 0.0 <= v <= 3.0):
            raise ValueError(f"{name} must be in [0, 3], got {v!r}")
    src = _as_landmarks(source, "source")[:, :2]
    pose, expr = split_pose(src, target)
    # a weight per landmark, 1 where the part moves, fading smoothly around it (a hard edge between
    # moved and still landmarks would fold the skin between them)
    weight = np.zeros(len(src))
    use_pose = "all" in parts or "head" in parts
    if "all" in parts or "expression" in parts:
        weight[:] = 1.0
    width = float(np.linalg.norm(src[291] - src[61]))

    def region(idx: Iterable[int], sigma: float) -> np.ndarray:
        pts = src[list(idx)]
        d = np.sqrt(((src[:, None, :] - pts[None]) ** 2).sum(-1)).min(1)
        w = np.exp(-0.5 * (d / sigma) ** 2)
        w[list(idx)] = 1.0
        return w

    if "eyes" in parts:
        weight = np.maximum(weight, region(list(EYE_REGION) + list(LEFT_BROW) + list(RIGHT_BROW), 0.25 * width))
    if "lips" in parts:
        chin = [152, 148, 377, 176, 400, 149, 378]  # the jaw moves with the mouth
        weight = np.maximum(weight, region(list(LIPS) + chin, 0.35 * width))
    if not ("all" in parts or "expression" in parts):
        weight[list(STABLE_POINTS)] = 0.0  # the points that define the head pose stay with the head
    moved = src + motion_scale * weight[:, None] * expr
    if use_pose:
        s, r, t = _scaled_pose(pose, pose_scale, src[list(STABLE_POINTS)].mean(0))
        moved = s * moved @ r.T + t
    return moved.astype(np.float32)


__all__ = [
    "PARTS",
    "add_smile",
    "apply_parts",
    "eye_opening",
    "mouth_opening",
    "move_gaze",
    "raise_brows",
    "rotate_head",
    "set_eye_opening",
    "set_mouth_opening",
    "split_pose",
]
