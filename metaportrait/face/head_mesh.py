"""Full-head geometry: the dense face mesh extended to hair, ears, neck and background.

MediaPipe's 478-point mesh stops at the face outline and the upper forehead. A piecewise-affine
warp over it alone stretches a few huge triangles between the face outline and the frame border:
hair and the top of the head stay where they were, the cheek/hair edge tears into a saw-tooth on
head turns, and straight background lines near the head bend. This module adds three rings of
points along rays from the face centre through each of the 36 face-outline landmarks:

* ring **A** ("skin edge", just outside the outline) copies the displacement of its outline point,
  so the face edge never tears;
* ring **B** ("head", at the head's silhouette: hair, ears, skull, top of the neck) moves with the
  rigid head motion (a 2-D similarity fitted on the stable landmarks: roll, nod/turn translation,
  scale), fully on the skull and half on the neck;
* ring **C** ("background", just outside the silhouette) stays still (a fifth of the head motion
  below the chin, where the neck meets the body).

The silhouette radius per ray comes from a person mask (``person_mask``, MediaPipe selfie
segmentation) when one is given, so hair moves up to its edge and the background from just
outside it stays put; without a mask, typical head proportions are used. Targets are checked for
fold-overs (a triangle of the extension that flips orientation between source and target); the
extension's displacements are relaxed until none flips.

Coordinates are continuous pixels of one frame (``(0, 0)`` the top-left corner); the same frame
for source and target (e.g. the model's crop). This is the analytic motion prior of the warping
network (MetaPortrait, Zhang et al., CVPR 2023, §3.1: w = F_w(x_in, z_w); the network predicts a
residual on this warp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import cv2

from metaportrait.face.mesh_warp import _border_anchors, identity_grid, mesh_warp_grid, signed_areas, source_triangles
from metaportrait.face.motion import STABLE_POINTS, _umeyama
from metaportrait.face.regions import FACE_OVAL
from metaportrait.face.untangle import untangle_outer_face

_OVAL = np.asarray(FACE_OVAL, dtype=np.int64)
RING_A = 1.07
"""Ring A's radius as a factor of the outline point's distance from the face centre."""
_DEFAULT_SILHOUETTE_UP = 1.55  # hair above the forehead
_DEFAULT_SILHOUETTE_SIDE = 1.22  # ears / hair at the temples
_DEFAULT_SILHOUETTE_DOWN = 1.30  # the neck below the jaw
_MAX_SILHOUETTE = (2.1, 1.9, 1.45)  # up, side, down: a mask may not push rings further
_RING_C_GAP = 0.12
_BORDER_MARGIN = 0.08  # rings stay this fraction of the frame inside its border
EXTENSION_SIZE = 3 * len(_OVAL)
"""Number of points :func:`head_points` adds (three rings of 36)."""


@dataclass(frozen=True)
class HeadRings:
    """The source's extension points and how each moves.

    Attributes:
        points: ``K×2`` float64 source positions (rings A, B, C, 36 points each, in that order).
        oval: ``K`` int: the face-outline landmark each point's ray goes through.
        rigid: ``K`` float: fraction of the rigid head motion (rings B, C); ring A ignores it.
        follows_outline: ``K`` bool: ring A (copies its outline point's displacement).
    """

    points: np.ndarray
    oval: np.ndarray
    rigid: np.ndarray
    follows_outline: np.ndarray


def _check(landmarks: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(landmarks)
    if a.ndim != 2 or a.shape[1] not in (2, 3) or a.shape[0] < 468:
        raise ValueError(f"{name} must be N×2 or N×3 with N ≥ 468, got shape {a.shape}")
    a = a[:, :2].astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _frame_axes(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face centre, unit "up" (chin -> forehead) and the outline points."""
    oval = lm[_OVAL]
    centre = oval.mean(0)
    up = lm[10] - lm[152]  # forehead top - chin
    n = float(np.linalg.norm(up))
    up = up / n if n > 0 else np.array([0.0, -1.0])
    return centre, up, oval


def _ray_cosines(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centre, up, oval = _frame_axes(lm)
    d = oval - centre
    r = np.linalg.norm(d, axis=1)
    if np.any(r <= 1e-6):
        raise ValueError("landmarks are degenerate: a face-outline point coincides with the face centre")
    cos_up = (d @ up) / r  # 1 = straight up, -1 = straight down
    return d, r, cos_up


def _by_direction(cos_up: np.ndarray, up: float, side: float, down: float) -> np.ndarray:
    """Interpolate a per-ray value from its up / side / down values by the ray's direction."""
    c = np.clip(cos_up, -1.0, 1.0)
    return np.where(c >= 0, side + (up - side) * c, side + (down - side) * (-c))


def silhouette_factors(landmarks: np.ndarray, person_mask: np.ndarray | None) -> np.ndarray:
    """Per face-outline ray, the head silhouette's distance from the face centre as a factor of the
    outline point's distance (36 floats).

    ``person_mask``: ``H×W`` float in [0, 1] (1 = person) in the landmarks' frame, or None for the
    typical head proportions. Along each ray the silhouette is where the mask first drops below 0.5
    beyond the outline; it is bounded by direction (the body below the chin is not head).
    """
    lm = _check(landmarks, "landmarks")
    d, r, cos_up = _ray_cosines(lm)
    default = _by_direction(cos_up, _DEFAULT_SILHOUETTE_UP, _DEFAULT_SILHOUETTE_SIDE, _DEFAULT_SILHOUETTE_DOWN)
    if person_mask is None:
        return default
    mask = np.asarray(person_mask, dtype=np.float32)
    if mask.ndim != 2:
        raise ValueError(f"person_mask must be H×W, got shape {mask.shape}")
    h, w = mask.shape
    centre = lm[_OVAL].mean(0)
    upper = _by_direction(cos_up, *_MAX_SILHOUETTE)
    steps = np.linspace(1.0, 2.1, 45)  # factors sampled along each ray
    pts = centre[None, None] + d[:, None, :] * steps[None, :, None]  # 36×S×2
    xi = np.clip(np.floor(pts[..., 0]).astype(int), 0, w - 1)
    yi = np.clip(np.floor(pts[..., 1]).astype(int), 0, h - 1)
    inside = (pts[..., 0] >= 0) & (pts[..., 0] < w) & (pts[..., 1] >= 0) & (pts[..., 1] < h)
    person = (mask[yi, xi] >= 0.5) & inside
    out = default.copy()
    for k in range(len(d)):
        off = np.nonzero(~person[k])[0]
        first = steps[off[0]] if len(off) else steps[-1]
        out[k] = first
    lower = 1.12
    return np.clip(out, lower, upper)


def head_points(
    landmarks: np.ndarray,
    width: float,
    height: float,
    silhouette: np.ndarray | None = None,
) -> HeadRings:
    """The extension rings of a source face (see the module docstring).

    ``landmarks``: ``N×2|3`` pixels of a ``width×height`` frame; ``silhouette``: the per-ray factors
    of :func:`silhouette_factors` (default: typical head proportions).
    """
    lm = _check(landmarks, "landmarks")
    if not (width > 0 and height > 0):
        raise ValueError(f"frame size must be positive, got {width}×{height}")
    d, r, cos_up = _ray_cosines(lm)
    centre = lm[_OVAL].mean(0)
    if silhouette is None:
        sil = _by_direction(cos_up, _DEFAULT_SILHOUETTE_UP, _DEFAULT_SILHOUETTE_SIDE, _DEFAULT_SILHOUETTE_DOWN)
    else:
        sil = np.asarray(silhouette, dtype=np.float64)
        if sil.shape != (len(_OVAL),) or not np.all(np.isfinite(sil)) or np.any(sil <= RING_A):
            raise ValueError(f"silhouette must be {len(_OVAL)} finite factors > {RING_A}, got {sil!r}")
    f_b = np.maximum(sil - 0.03, RING_A + 0.05)
    f_c = np.maximum(sil + _RING_C_GAP, f_b + 0.08)
    # keep every ring inside the frame: shrink a ray's factors so its furthest point stays inside
    lo = np.array([_BORDER_MARGIN * width, _BORDER_MARGIN * height])
    hi = np.array([(1 - _BORDER_MARGIN) * width, (1 - _BORDER_MARGIN) * height])
    limit = np.full(len(d), np.inf)
    for axis in (0, 1):
        pos = d[:, axis] > 1e-9
        neg = d[:, axis] < -1e-9
        limit[pos] = np.minimum(limit[pos], (hi[axis] - centre[axis]) / d[pos, axis])
        limit[neg] = np.minimum(limit[neg], (lo[axis] - centre[axis]) / d[neg, axis])
    limit = np.maximum(limit, RING_A + 0.02)
    f_a = np.minimum(np.full(len(d), RING_A), limit)
    f_c = np.minimum(f_c, limit)
    f_b = np.minimum(f_b, f_a + 0.55 * (f_c - f_a))
    f_b = np.maximum(f_b, f_a + 0.3 * (f_c - f_a))
    rings = [centre + d * f[:, None] for f in (f_a, f_b, f_c)]
    w_b = _by_direction(cos_up, 1.0, 1.0, 0.5)
    w_c = _by_direction(cos_up, 0.0, 0.0, 0.2)
    n = len(d)
    return HeadRings(
        points=np.concatenate(rings),
        oval=np.tile(_OVAL, 3),
        rigid=np.concatenate([np.zeros(n), w_b, w_c]),
        follows_outline=np.concatenate([np.ones(n, bool), np.zeros(2 * n, bool)]),
    )


def rigid_head_motion(src: np.ndarray, drv: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """2-D similarity ``(s, R, t)`` of the head, source -> target, fitted on the stable landmarks."""
    idx = list(STABLE_POINTS)
    return _umeyama(_check(src, "src")[idx], _check(drv, "drv")[idx])


def flipped_triangles(
    src_points: np.ndarray,
    drv_points: np.ndarray,
    triangles: np.ndarray,
    only: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the ``triangles`` (fixed connectivity, :func:`source_triangles`, over the points +
    the frame-border anchors) whose target has the opposite orientation to their source.

    ``src_points``/``drv_points``: ``M×2`` including the anchors (:func:`with_anchors`);
    ``only``: boolean mask over those ``M`` points, count only triangles with at least one such
    vertex. Degenerate target triangles (|area| < 1e-9 px²) are not counted.
    """
    src = np.asarray(src_points, np.float64)[:, :2]
    drv = np.asarray(drv_points, np.float64)[:, :2]
    a_s = signed_areas(src, triangles)
    a_d = signed_areas(drv, triangles)
    bad = (np.abs(a_d) > 1e-9) & (np.sign(a_d) != np.sign(a_s))
    if only is not None:
        bad &= np.asarray(only, bool)[triangles].any(1)
    return np.nonzero(bad)[0]


def with_anchors(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """``points`` followed by the frame-border anchors the mesh warp adds (same order)."""
    return np.concatenate([np.asarray(points, np.float64)[:, :2], _border_anchors(float(width), float(height))])


def _polar(p: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = p - c
    return np.arctan2(d[:, 1], d[:, 0]), np.linalg.norm(d, axis=1)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _unfold_outline(drv: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The target landmarks with each face-outline point pushed out along its ray to enclose every
    other landmark of its angular sector.

    On a turn the far side's outline goes behind the cheek in the image, and the cheek points
    become the silhouette: left there, the thin triangles between outline and cheek fold over
    each other along the edge (a saw-tooth). Pushed out, the outline stays the outline and the
    hidden skin between it and the cheek is compressed instead.
    """
    out = drv.copy()
    ang_o, rad_o = _polar(drv[_OVAL], centre)
    inner = np.ones(len(drv), bool)
    inner[_OVAL] = False
    ang_f, rad_f = _polar(drv[inner], centre)
    gaps = np.abs(_wrap(np.diff(np.r_[ang_o, ang_o[:1]])))
    half = 0.5 * np.maximum(gaps, np.roll(gaps, 1))
    near = np.abs(_wrap(ang_f[None, :] - ang_o[:, None])) <= half[:, None]
    sector_max = np.where(near, rad_f[None, :], 0.0).max(1)
    rad = np.maximum(rad_o, 1.01 * sector_max)
    out[_OVAL] = centre + rad[:, None] * np.stack([np.cos(ang_o), np.sin(ang_o)], 1)
    return out


def head_mesh(
    src_landmarks: np.ndarray,
    drv_landmarks: np.ndarray,
    rings: HeadRings,
    width: float,
    height: float,
    triangles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Source and target point sets (``(N+K)×2``): the landmarks followed by the extension rings.

    The targets are built in polar coordinates about the moved face centre so that the three rings
    stay nested and each keeps its angular order, whatever the face itself does (an opening jaw, a
    turn that hides the far cheek behind the nose):

    * ring A takes its outline point's displacement as its radius, at the rigidly rotated angle,
      and is pushed out to enclose every target landmark of its angular sector;
    * ring B (``rigid`` fraction of the head motion) and ring C (still, a little motion at the neck)
      keep their own positions' angles and are pushed out where they would come within a third of
      their source gap of the ring inside them;
    * every ring stays inside the frame.

    Nested, angularly ordered rings cannot fold over each other or over the face; what the
    construction leaves folded near the frame border is untangled by :func:`_relax`, so no triangle
    of the extension (a vertex in ring B, C or on the border, or no face vertex) flips orientation
    (tested for yaw, pitch and roll up to ±30°). Triangles between ring A and the face follow the
    face's own folds (a turned head hides its far cheek outline behind the cheek), which the mesh
    warp draws back-facing first.

    ``triangles``: :func:`source_triangles` of ``[src_landmarks; rings.points]`` (computed when
    None; pass it to reuse it across the frames of a video).
    """
    src = _check(src_landmarks, "src_landmarks")
    drv = _check(drv_landmarks, "drv_landmarks")
    if src.shape != drv.shape:
        raise ValueError(f"src_landmarks and drv_landmarks differ in shape: {src.shape} vs {drv.shape}")
    p = rings.points
    k = len(_OVAL)
    if p.shape != (3 * k, 2):
        raise ValueError(f"rings.points must be {3 * k}×2 (three rings of {k}), got {p.shape}")
    if triangles is None:
        triangles = source_triangles(np.concatenate([src, p]), width, height)
    drv = untangle_outer_face(src, drv, triangles)
    s, r, t = rigid_head_motion(src, drv)
    c_src = src[_OVAL].mean(0)
    c_drv = s * r @ c_src + t
    drv = _unfold_outline(drv, c_drv)
    rigid = s * p @ r.T + t
    follow = p + (drv[rings.oval] - src[rings.oval])
    weight = rings.rigid.copy()
    # bounded shear: where the head moves further than a ring's gap to the ring inside it can
    # absorb, the outer ring takes part of the motion (a large roll drags the near background a
    # little rather than folding the band between hair and background)
    rigid_disp = rigid - p
    for i in (1, 2):
        cur, inn = slice(i * k, (i + 1) * k), slice((i - 1) * k, i * k)
        gap = np.linalg.norm(p[cur] - p[inn], axis=1)
        inner_w = np.ones(k) if i == 1 else weight[inn]
        diff = np.linalg.norm(rigid_disp[cur], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(diff > 0, inner_w - 0.6 * gap / diff, 0.0)
        need = np.maximum(need, np.maximum(np.roll(need, 1), np.roll(need, -1)))  # coherent ring
        weight[cur] = np.clip(np.maximum(weight[cur], need), 0.0, 1.0)
    moved = p + weight[:, None] * rigid_disp

    ang_a, _ = _polar(rigid[:k], c_drv)
    _, rad_a = _polar(follow[:k], c_drv)
    # enclose every target landmark of the sector between the neighbouring rays
    ang_f, rad_f = _polar(drv, c_drv)
    spacing = np.abs(_wrap(np.diff(np.r_[ang_a, ang_a[:1]])))
    half = np.maximum(np.maximum(spacing, np.roll(spacing, 1)), 1e-3)
    near = np.abs(_wrap(ang_f[None, :] - ang_a[:, None])) <= half[:, None]
    sector_max = np.where(near, rad_f[None, :], 0.0).max(1)
    _, rad_oval_src = _polar(src[_OVAL], c_src)
    _, rad_src = _polar(p, c_src)
    scale = s
    rad_a = np.maximum(rad_a, sector_max + 0.03 * scale * rad_oval_src)

    ang_b, rad_b = _polar(moved[k : 2 * k], c_drv)
    ang_c, rad_c = _polar(moved[2 * k :], c_drv)
    gap_ab = scale * (rad_src[k : 2 * k] - rad_src[:k]) / 3.0
    gap_bc = scale * (rad_src[2 * k :] - rad_src[k : 2 * k]) / 3.0
    rad_b = np.maximum(rad_b, rad_a + gap_ab)
    rad_c = np.maximum(rad_c, rad_b + gap_bc)

    def place(ang: np.ndarray, rad: np.ndarray) -> np.ndarray:
        return c_drv + rad[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)

    targets = [place(ang_a, rad_a), place(ang_b, rad_b), place(ang_c, rad_c)]
    # inside the frame: shrink the outer rings toward the inner one along their ray
    lo = np.array([_BORDER_MARGIN * width, _BORDER_MARGIN * height])
    hi = np.array([(1 - _BORDER_MARGIN) * width, (1 - _BORDER_MARGIN) * height])
    for i in (2, 1):
        q = targets[i]
        clipped = np.clip(q, lo, hi)
        inner = targets[i - 1]
        bad = np.any(clipped != q, axis=1)
        if np.any(bad):
            # the largest fraction of the way from the inner ring's point that stays inside
            d = q - inner
            f = np.ones(len(q))
            for axis in (0, 1):
                with np.errstate(divide="ignore", invalid="ignore"):
                    f_hi = np.where(d[:, axis] > 0, (hi[axis] - inner[:, axis]) / d[:, axis], np.inf)
                    f_lo = np.where(d[:, axis] < 0, (lo[axis] - inner[:, axis]) / d[:, axis], np.inf)
                f = np.minimum(f, np.minimum(f_hi, f_lo))
            f = np.clip(f, 0.35, 1.0)
            targets[i] = np.where(bad[:, None], inner + f[:, None] * d, q)
    # the still ring may come no closer to a frame edge than half its source distance (else it
    # slides past the border anchors); ring B then stays a gap inside it
    c0 = p[2 * k :]
    cq = targets[2]
    for axis, size in ((0, width), (1, height)):
        cq[:, axis] = np.clip(cq[:, axis], 0.5 * c0[:, axis], size - 0.5 * (size - c0[:, axis]))
    ang_c2, rad_c2 = _polar(cq, c_drv)
    ang_b2, rad_b2 = _polar(targets[1], c_drv)
    rad_b2 = np.minimum(rad_b2, rad_c2 - gap_bc)
    targets[1] = place(ang_b2, np.maximum(rad_b2, rad_a + 0.25 * gap_ab))
    targets[2] = cq
    src_all = np.concatenate([src, p])
    drv_all = np.concatenate([drv, *targets])
    return _relax(src_all, drv_all, len(src), k, width, height, triangles)


def _extension_triangles(triangles: np.ndarray, n: int) -> np.ndarray:
    """Triangles of the extension: a vertex in ring B, C or the border, or no face vertex at all."""
    b_or_more = (triangles >= n + _RINGS_B_OFFSET).any(1)
    no_face = (triangles >= n).all(1)
    return b_or_more | no_face


_RINGS_B_OFFSET = len(_OVAL)


def _relax(
    src_all: np.ndarray,
    drv_all: np.ndarray,
    n: int,
    k: int,
    width: float,
    height: float,
    triangles: np.ndarray | None,
    rounds: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Untangle what the construction left folded (rare: extreme poses, rings near the frame
    border): a folded triangle touching the frame border draws its still-ring vertices back toward
    where they were."""
    if triangles is None:
        triangles = source_triangles(src_all, width, height)
    ext_tris = triangles[_extension_triangles(triangles, n)]
    m = len(src_all)
    s_anch = with_anchors(src_all, width, height)
    for _ in range(rounds):
        bad = flipped_triangles(s_anch, with_anchors(drv_all, width, height), ext_tris)
        if len(bad) == 0:
            break
        tri = ext_tris[bad]
        border = (tri >= m).any(1)
        if not border.any():
            break
        near_border = np.unique(tri[border])
        near_border = near_border[(near_border >= n + 2 * k) & (near_border < m)]
        drv_all[near_border] = src_all[near_border] + 0.6 * (drv_all[near_border] - src_all[near_border])
    return src_all, drv_all


SMOOTH_SIGMA = 5.0
"""Gaussian σ (pixels at 256²) of the smoothing of the motion outside the face."""


def head_warp_grid(
    src_landmarks: np.ndarray,
    drv_landmarks: np.ndarray,
    rings: HeadRings,
    size: int,
    triangles: np.ndarray | None = None,
) -> np.ndarray:
    """Sampling grid ``size×size×2`` (grid_sample, align_corners=False) of the full-head mesh warp.

    Inside the face outline it is the piecewise-affine warp of the dense landmarks. Outside, where a
    few thin triangles between the outline and the rings carry a large stretch (the cheek sliding
    over the background on a turn), a piecewise-affine map bends a straight hair or cheek edge at
    every triangle (a saw-tooth); there the motion is Gaussian-smoothed (σ = 5 px at 256²),
    blended in over a feathered band just inside the outline.
    """
    src_all, drv_all = head_mesh(src_landmarks, drv_landmarks, rings, size, size, triangles=triangles)
    grid = mesh_warp_grid(src_all, drv_all, size, triangles=triangles)
    ident = identity_grid(size)
    disp = grid - ident
    sigma = SMOOTH_SIGMA * size / 256.0
    smooth = cv2.GaussianBlur(disp, (0, 0), sigma)
    inner = max(1, int(round(3 * size / 256.0)))
    mask = np.zeros((size, size), np.float32)
    outline = np.rint((drv_all[_OVAL] - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(mask, [outline], 1.0, cv2.LINE_AA, 4)
    mask = cv2.GaussianBlur(cv2.erode(mask, np.ones((2 * inner + 1, 2 * inner + 1), np.uint8)), (0, 0), inner)
    m = mask[..., None]
    return (ident + m * disp + (1.0 - m) * smooth).astype(np.float32)



def head_rig(landmarks: np.ndarray, size: int, silhouette: np.ndarray | None = None) -> tuple[HeadRings, np.ndarray]:
    """What the full-head mesh warp needs once per source face in a ``size²`` crop: its extension
    rings (:func:`head_points`) and the fixed triangulation of face + rings (:func:`source_triangles`)."""
    rings = head_points(landmarks, size, size, silhouette)
    return rings, source_triangles(np.concatenate([np.asarray(landmarks)[:, :2], rings.points]), size, size)

__all__ = [
    "SMOOTH_SIGMA",
    "head_rig",
    "head_warp_grid",
    "EXTENSION_SIZE",
    "HeadRings",
    "flipped_triangles",
    "source_triangles",
    "with_anchors",
    "head_mesh",
    "head_points",
    "rigid_head_motion",
    "silhouette_factors",
]
