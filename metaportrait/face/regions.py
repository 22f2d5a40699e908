"""Eye and mouth regions from the landmark indices (docs/METHOD.md §2.4; used by the eye/mouth
losses L_eye/L_mouth of MetaPortrait, Zhang et al., CVPR 2023, §3.1, and by masks), and the five
alignment points of ArcFace/SFace identity embeddings (the identity encoder E_id, §3.1 eqs. 1-2).

Naming follows the image, as the ArcFace five-point template does: ``LEFT_EYE`` is the eye on
the image's left in an upright, non-mirrored photo — the subject's right eye, MediaPipe's
``FACEMESH_RIGHT_EYE`` (iris centre 468). The index tuples are closed contours, in order, taken
from MediaPipe's connection sets so ``cv2.fillPoly`` can fill them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from mediapipe.python.solutions import face_mesh_connections as _conn


def _ordered_loops(edges: frozenset[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Split a set of undirected edges made of disjoint cycles into ordered vertex loops."""
    adj: dict[int, set[int]] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    if any(len(n) != 2 for n in adj.values()):
        raise RuntimeError("connection set is not a union of simple cycles")
    seen: set[int] = set()
    loops = []
    for start in sorted(adj):
        if start in seen:
            continue
        loop, prev, cur = [start], -1, start
        seen.add(start)
        while True:
            nxt = [n for n in sorted(adj[cur]) if n != prev and n not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(tuple(loop))
    return loops


def _single_loop(edges: frozenset[tuple[int, int]]) -> tuple[int, ...]:
    (loop,) = _ordered_loops(edges)
    return loop


LEFT_EYE: tuple[int, ...] = _single_loop(_conn.FACEMESH_RIGHT_EYE)
"""Contour of the eye on the image's left (subject's right), 16 indices, 33 = outer corner."""
RIGHT_EYE: tuple[int, ...] = _single_loop(_conn.FACEMESH_LEFT_EYE)
"""Contour of the eye on the image's right (subject's left), 16 indices, 263 = outer corner."""
_lips = _ordered_loops(_conn.FACEMESH_LIPS)
MOUTH_OUTER: tuple[int, ...] = next(lp for lp in _lips if 61 in lp)
"""Outer lip contour, 20 indices (corners 61 and 291)."""
MOUTH_INNER: tuple[int, ...] = next(lp for lp in _lips if 78 in lp)
"""Inner lip contour (the mouth opening), 20 indices (corners 78 and 308)."""
FACE_OVAL: tuple[int, ...] = _single_loop(_conn.FACEMESH_FACE_OVAL)
"""Face outline, 36 indices from the forehead (10) round the chin (152)."""
del _lips

LEFT_IRIS_CENTER = 468  # iris of the eye on the image's left
RIGHT_IRIS_CENTER = 473  # iris of the eye on the image's right
NOSE_TIP = 1
MOUTH_LEFT_CORNER = 61  # on the image's left
MOUTH_RIGHT_CORNER = 291


def _check_landmarks(landmarks: np.ndarray, min_points: int = 468) -> np.ndarray:
    pts = np.asarray(landmarks)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or pts.shape[0] < min_points:
        raise ValueError(
            f"landmarks must be N×2 or N×3 with N ≥ {min_points} (MediaPipe mesh), "
            f"got shape {pts.shape}"
        )
    xy = pts[:, :2].astype(np.float64)
    if not np.all(np.isfinite(xy)):
        raise ValueError("landmarks contain NaN or infinite values")
    return xy


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """``5×2`` float32 in ArcFace/SFace template order.

    [eye on the image's left, eye on the image's right, nose tip, mouth corner on the image's
    left, mouth corner on the image's right]. Eyes are the iris centres (468, 473) with 478
    landmarks, the eye-contour centroids with 468.
    """
    xy = _check_landmarks(landmarks)
    if xy.shape[0] >= 478:
        left, right = xy[LEFT_IRIS_CENTER], xy[RIGHT_IRIS_CENTER]
    else:
        left, right = xy[list(LEFT_EYE)].mean(0), xy[list(RIGHT_EYE)].mean(0)
    return np.stack(
        [left, right, xy[NOSE_TIP], xy[MOUTH_LEFT_CORNER], xy[MOUTH_RIGHT_CORNER]]
    ).astype(np.float32)


Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class RegionBoxes:
    """Integer boxes ``(x0, y0, x1, y1)`` (x1/y1 exclusive, clipped to the canvas)."""

    left_eye: Box
    right_eye: Box
    mouth: Box


def _box(xy: np.ndarray, size: int, pad: float) -> Box:
    lo, hi = xy.min(0), xy.max(0)
    p = pad * float(max(hi - lo))
    x0, y0 = np.floor(lo - p).astype(int)
    x1, y1 = np.ceil(hi + p).astype(int)
    x0, x1 = int(np.clip(x0, 0, size)), int(np.clip(x1, 0, size))
    y0, y1 = int(np.clip(y0, 0, size)), int(np.clip(y1, 0, size))
    return (x0, y0, x1, y1)


def region_boxes(landmarks: np.ndarray, size: int, pad: float = 0.25) -> RegionBoxes:
    """Boxes around each eye contour and the outer lips, grown by ``pad`` × the region's extent
    on every side, in a ``size×size`` canvas (landmarks in that canvas's pixels)."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if pad < 0:
        raise ValueError(f"pad must be ≥ 0, got {pad!r}")
    xy = _check_landmarks(landmarks)
    return RegionBoxes(
        left_eye=_box(xy[list(LEFT_EYE)], int(size), pad),
        right_eye=_box(xy[list(RIGHT_EYE)], int(size), pad),
        mouth=_box(xy[list(MOUTH_OUTER)], int(size), pad),
    )


def region_mask(
    landmarks: np.ndarray,
    size: int,
    which: Literal["eyes", "mouth", "face"],
    dilate: int = 3,
) -> np.ndarray:
    """float32 ``size×size`` mask in {0, 1}: the filled contour(s), dilated by ``dilate`` px.

    ``"eyes"``: both eye contours; ``"mouth"``: the outer lips; ``"face"``: the face oval.
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not isinstance(dilate, (int, np.integer)) or dilate < 0:
        raise ValueError(f"dilate must be an int ≥ 0, got {dilate!r}")
    xy = _check_landmarks(landmarks)
    if which == "eyes":
        polys = [LEFT_EYE, RIGHT_EYE]
    elif which == "mouth":
        polys = [MOUTH_OUTER]
    elif which == "face":
        polys = [FACE_OVAL]
    else:
        raise ValueError(f"which must be 'eyes', 'mouth' or 'face', got {which!r}")
    shift = 4
    lim = 4.0 * size + 64.0
    mask = np.zeros((int(size), int(size)), np.uint8)
    contours = [
        np.rint((np.clip(xy[list(p)], -lim, lim) - 0.5) * (1 << shift)).astype(np.int32)
        for p in polys
    ]
    cv2.fillPoly(mask, contours, 1, cv2.LINE_8, shift)
    if dilate > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(np.float32)
