"""The landmark image of MetaPortrait (Zhang et al., CVPR 2023, §3.1; docs/METHOD.md §2.3).

Every connection between neighbouring MediaPipe landmarks (the union of FACEMESH_TESSELATION,
FACEMESH_CONTOURS and FACEMESH_IRISES, each edge once) is drawn as an anti-aliased line of
thickness 1 on a black canvas, each edge in its own fixed colour. Source and driving landmark
images are concatenated with the source image as the 9-channel input x_in = (I_s, L_s, L_d).
Drawing is deterministic (byte-identical across runs and machines with the same OpenCV).
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
from mediapipe.python.solutions import face_mesh_connections as _conn

# cv2 fixed-point drawing: coordinates are multiplied by 2**_SHIFT (1/16 pixel accuracy).
_SHIFT = 4


def _build_edges() -> np.ndarray:
    edges = set()
    for a, b in (
        _conn.FACEMESH_TESSELATION | _conn.FACEMESH_CONTOURS | _conn.FACEMESH_IRISES
    ):
        if a != b:
            edges.add((min(a, b), max(a, b)))
    arr = np.array(sorted(edges), dtype=np.int64)
    arr.setflags(write=False)
    return arr


def _build_palette(n: int) -> np.ndarray:
    """One colour per edge: golden-ratio hue walk, saturation 0.55-1, value 0.7-1 (never dark)."""
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    colours = np.empty((n, 3), np.uint8)
    for i in range(n):
        hue = (i * golden) % 1.0
        sat = 0.55 + 0.45 * ((i * 0.7548776662466927) % 1.0)
        val = 0.70 + 0.30 * ((i * 0.5698402909980532) % 1.0)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colours[i] = (round(r * 255), round(g * 255), round(b * 255))
    colours.setflags(write=False)
    return colours


FACEMESH_EDGES: np.ndarray = _build_edges()
"""``E×2`` int64 landmark index pairs ``(a, b)`` with ``a < b``, sorted lexicographically."""

EDGE_PALETTE: np.ndarray = _build_palette(len(FACEMESH_EDGES))
"""``E×3`` uint8 RGB colour of each edge of ``FACEMESH_EDGES`` (max channel ≥ 178)."""

_PALETTE_TUPLES = [tuple(int(c) for c in col) for col in EDGE_PALETTE]


def draw_landmark_image(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Landmark image ``size×size×3`` uint8 RGB of ``landmarks`` (``478×2``/``478×3`` pixels).

    ``landmarks`` are continuous pixel coordinates in the ``size×size`` canvas (e.g. after
    ``CropTransform.points_to_crop``); points outside the canvas are clipped by the line drawer.
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    pts = np.asarray(landmarks)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or pts.shape[0] <= int(FACEMESH_EDGES.max()):
        raise ValueError(
            f"landmarks must be N×2 or N×3 with N ≥ {int(FACEMESH_EDGES.max()) + 1}, "
            f"got shape {pts.shape}"
        )
    xy = pts[:, :2].astype(np.float64)
    if not np.all(np.isfinite(xy)):
        raise ValueError("landmarks contain NaN or infinite values")
    # continuous coords -> pixel-index coords, fixed point; keep far-away points bounded.
    lim = 4.0 * size + 64.0
    fixed = np.rint((np.clip(xy, -lim, lim) - 0.5) * (1 << _SHIFT)).astype(np.int64)
    canvas = np.zeros((int(size), int(size), 3), np.uint8)
    p = fixed[FACEMESH_EDGES[:, 0]].tolist()
    q = fixed[FACEMESH_EDGES[:, 1]].tolist()
    for a, b, colour in zip(p, q, _PALETTE_TUPLES):
        cv2.line(canvas, a, b, colour, 1, cv2.LINE_AA, _SHIFT)
    return canvas
