"""Untangling the outer face before it is warped: no crossed cheek points on a turned head.

Motion transferred from a driver to a photo in another pose (relative mode: the driver's 2-D
landmark displacements added to the photo's landmarks) moves the photo's *compressed* far-cheek
points by displacements measured on the driver's *spread-out* cheek. Neighbouring points then
cross each other and the outline: a fixed mesh over them folds into a saw-tooth, and hair or
background shows through jagged slits in the cheek (seen on a 3/4-view portrait driven by a
talking, slightly turning person).

:func:`untangle_outer_face` removes those crossings where the skin carries no expression of its
own: in the outer band of the face (cheeks, jaw line, temples, forehead edge), the displacement
of each vertex of a folded triangle is relaxed towards the mean displacement of its mesh
neighbours (a few Jacobi steps of Laplacian smoothing of the motion, Tutte's embedding idea),
until no triangle of the band is folded. The eyes, brows, nose and lips, where folds are real
(a turning nose hides the cheek behind it, lids meet) or carry the expression, are never moved;
vertices of unfolded triangles keep their exact motion. The result keeps the overall motion of
the band and replaces the crossing by a compressed, smooth cheek.
"""

from __future__ import annotations

import functools

import numpy as np

from metaportrait.face.mesh_warp import signed_areas
from metaportrait.face.regions import FACE_OVAL, LEFT_EYE, MOUTH_OUTER, RIGHT_EYE

_OVAL = np.asarray(FACE_OVAL, dtype=np.int64)
OUTER_BAND = 0.62
"""A landmark belongs to the outer band when its distance from the face centre is at least this
fraction of the outline's distance in its direction (in the source)."""
FEATURE_MARGIN_EYE = 1.6
"""Landmarks inside an eye contour grown by this factor about its centre are never moved (lids, lashes)."""
FEATURE_MARGIN_MOUTH = 1.35
"""Landmarks inside the outer lip contour grown by this factor are never moved (the lips and the skin
that moves with them)."""


def outer_band(landmarks: np.ndarray) -> np.ndarray:
    """Boolean mask (``N``) of the face landmarks (first 468) in the outer band of ``landmarks``:
    at least :data:`OUTER_BAND` of the way from the face centre to the outline along their ray,
    and outside the grown eye and lip contours."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    n = len(lm)
    centre = lm[_OVAL].mean(0)
    d = lm - centre
    ang, rad = np.arctan2(d[:, 1], d[:, 0]), np.hypot(d[:, 0], d[:, 1])
    o_ang, o_rad = ang[_OVAL], rad[_OVAL]
    order = np.argsort(o_ang)
    xs, ys = o_ang[order], o_rad[order]
    xs = np.concatenate([xs[-1:] - 2 * np.pi, xs, xs[:1] + 2 * np.pi])
    ys = np.concatenate([ys[-1:], ys, ys[:1]])
    outline_at = np.interp(ang, xs, ys)
    band = rad >= OUTER_BAND * np.maximum(outline_at, 1e-9)
    band[min(n, 468):] = False  # the irises
    for contour, grow in ((LEFT_EYE, FEATURE_MARGIN_EYE), (RIGHT_EYE, FEATURE_MARGIN_EYE),
                          (MOUTH_OUTER, FEATURE_MARGIN_MOUTH)):
        poly = lm[list(contour)]
        c = poly.mean(0)
        band &= ~_inside(lm, c + grow * (poly - c))
    return band


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test of each point against a closed polygon (vectorised ray casting)."""
    x, y = points[:, 0:1], points[:, 1:2]
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ay, by = a[None, :, 1], b[None, :, 1]
    crosses = (ay > y) != (by > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = a[None, :, 0] + (y - ay) * (b[None, :, 0] - a[None, :, 0]) / (by - ay)
    return ((crosses & (x < xint)).sum(1) % 2) == 1


@functools.lru_cache(maxsize=8)
def _band_mesh(src_bytes: bytes, tris_bytes: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(band mask, the landmark-only triangles touching the band with a non-degenerate source,
    their source signed areas) of one source: the same for every frame of a video, so computed once."""
    s = np.frombuffer(src_bytes, np.float64).reshape(n, 2)
    tris = np.frombuffer(tris_bytes, np.int64).reshape(-1, 3)
    tris = tris[(tris < n).all(1)]
    free = outer_band(s)
    tris = tris[free[tris].any(1)]
    a_s = signed_areas(s, tris)
    live = np.abs(a_s) > 1e-9
    return free, tris[live], a_s[live]


def untangle_outer_face(
    src: np.ndarray,
    drv: np.ndarray,
    triangles: np.ndarray,
    rounds: int = 60,
    step: float = 0.7,
) -> np.ndarray:
    """``drv`` (``N×2``) with the folds of the source's outer face band relaxed away.

    ``triangles``: a fixed connectivity whose indices below ``N`` are landmarks (e.g.
    :func:`~metaportrait.face.mesh_warp.source_triangles` of the landmarks + head rings); only the
    triangles made of landmarks alone are used. A triangle counts as folded when its target
    orientation is opposite to its source's. Returns float64 ``N×2`` (``drv`` itself when nothing
    in the band is folded).
    """
    s = np.ascontiguousarray(np.asarray(src, np.float64)[:, :2])
    d0 = np.asarray(drv, np.float64)[:, :2]
    n = len(s)
    tris = np.ascontiguousarray(np.asarray(triangles, np.int64))
    free, tris, a_s = _band_mesh(s.tobytes(), tris.tobytes(), n)
    if len(tris) == 0:
        return d0
    if not (np.sign(signed_areas(d0, tris)) != np.sign(a_s)).any():
        return d0
    # mesh neighbours (edges of the band's triangles), both directions
    e = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), 1)
    key = np.unique(e[:, 0] * n + e[:, 1])
    a, b = key // n, key % n
    i, j = np.concatenate([a, b]), np.concatenate([b, a])
    deg = np.maximum(np.bincount(i, minlength=n), 1).astype(np.float64)[:, None]
    disp = d0 - s
    for _ in range(rounds):
        folded = np.sign(signed_areas(s + disp, tris)) != np.sign(a_s)
        if not folded.any():
            break
        verts = np.zeros(n, bool)
        verts[tris[folded].ravel()] = True
        verts[j[verts[i]]] = True  # one ring around the folded triangles
        verts &= free
        if not verts.any():
            break
        mean = np.stack([np.bincount(i, disp[j, 0], n), np.bincount(i, disp[j, 1], n)], 1) / deg
        change = step * (mean[verts] - disp[verts])
        disp[verts] += change
        if np.abs(change).max() < 1e-3:  # what is left folded cannot be undone in the band
            break
    return s + disp


__all__ = ["OUTER_BAND", "outer_band", "untangle_outer_face"]
