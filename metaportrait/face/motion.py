"""Cross-identity relative motion (docs/METHOD.md §3): the driver's expression and head-pose
*changes* move the source's own landmarks, so the driver's face shape does not leak into the output
(the open equivalent of MetaPortrait's 3DMM identity/expression split; FOMM ``--relative``,
Siarohin et al. 2019; LivePortrait).

1. Each landmark set is aligned to a canonical frame by a similarity Procrustes fit (Umeyama:
   rotation, uniform scale, translation) of its *stable* points (forehead, nose bridge, eye
   corners, temples — points expressions barely move) to a common template, the source's
   stable points normalised to zero mean and unit RMS radius.
2. expression = canonical(driving) − canonical(driving_reference), in face-size units, hence
   scaled to the source's face size when added to canonical(source).
3. The head-pose change driving_reference -> driving (the similarity between their stable
   points, expressed in the canonical frame) is applied, and the result mapped back into the
   source's image frame.

With ``N×3`` inputs (``FaceDetection.landmarks_3d``) the fits are 3-D, so yaw and pitch changes
are transferred as rotations and projected orthographically; with ``N×2`` they are in-plane only.
The output is always ``N×2`` float32 pixels of the source's frame.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# Forehead, nose bridge, eye corners (outer/inner), temples and upper cheeks.
STABLE_POINTS: tuple[int, ...] = (
    10, 151, 9, 8, 168, 6, 197, 195,  # forehead and nose bridge
    33, 133, 362, 263,  # eye corners
    127, 356, 234, 454,  # temples / upper face outline
    116, 345, 117, 346,  # cheekbones
    54, 284, 103, 332,  # upper forehead sides
)


def _as_landmarks(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] not in (2, 3) or a.shape[0] < 468:
        raise ValueError(f"{name} must be N×2 or N×3 with N ≥ 468, got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


# Inner-lip pairs (upper, lower) of MediaPipe's mesh, corner to corner.
INNER_LIP_PAIRS: tuple[tuple[int, int], ...] = (
    (191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (310, 318), (415, 324),
)
_MOUTH_CORNERS = (61, 291)
_CHIN = 152


def close_mouth(landmarks: np.ndarray) -> np.ndarray:
    """An estimate of the same face with its mouth closed (the expression-neutral mouth).

    The gap between each upper/lower inner-lip pair is closed, mostly by the lower jaw as a real
    mouth closes: the lower lip and everything between the mouth corners and the chin move up by
    80 % of the gap (fading out toward the jaw hinges), the upper lip down by 20 %. A closed mouth
    is returned unchanged (up to the few tenths of a pixel its lips are apart). ``N×2|3`` in, same
    shape out (z unchanged).
    """
    lm = _as_landmarks(landmarks, "landmarks")
    out = lm.copy()
    xy = lm[:, :2]
    up_idx = [u for u, _ in INNER_LIP_PAIRS]
    lo_idx = [d for _, d in INNER_LIP_PAIRS]
    gaps = xy[lo_idx] - xy[up_idx]  # P×2, pointing from the upper to the lower lip
    left, right = xy[_MOUTH_CORNERS[0]], xy[_MOUTH_CORNERS[1]]
    width = float(np.linalg.norm(right - left))
    if width <= 0:
        return out.astype(np.float32)
    axis = (right - left) / width  # along the mouth
    down = xy[_CHIN] - (left + right) / 2
    down_n = down - (down @ axis) * axis
    depth = float(np.linalg.norm(down_n))
    if depth <= 0:
        return out.astype(np.float32)
    down_n /= depth
    # openness: the part of each gap across the mouth (closing never pushes the lips through each other)
    across = np.clip(gaps @ down_n, 0.0, None)
    if not np.any(across > 0):
        return out.astype(np.float32)
    centre = (left + right) / 2
    rel = xy - centre
    along = rel @ axis  # position along the mouth
    below = rel @ down_n  # how far below the mouth line
    # per point, the gap of the nearest pairs along the mouth (linear interpolation, held outside)
    pair_along = (xy[up_idx] - centre) @ axis
    order = np.argsort(pair_along)
    gap_at = np.interp(along, pair_along[order], across[order])
    mouth_half = width / 2
    fade = np.clip(1.0 - (np.abs(along) - mouth_half) / (1.2 * mouth_half), 0.0, 1.0)
    lower_side = (below > 0) & (below <= depth * 1.15)
    upper_lip = np.zeros(len(xy), bool)
    upper_lip[up_idx] = True
    lower = lower_side & ~upper_lip
    lower[lo_idx] = True
    shift = np.zeros(len(xy))
    shift[lower] = -0.8 * gap_at[lower] * fade[lower]
    shift[up_idx] = 0.2 * gap_at[up_idx]
    out[:, :2] = xy + shift[:, None] * down_n[None, :]
    return out.astype(np.float32)


# Eyelids and irises of the two eyes (MediaPipe indices): corners, upper lid, lower lid, iris.
_EYES = (
    ((33, 133), (246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155), tuple(range(468, 473))),
    ((263, 362), (466, 388, 387, 386, 385, 384, 398), (249, 390, 373, 374, 380, 381, 382), tuple(range(473, 478))),
)


def irises_inside_eyelids(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks whose iris points (468-477) are clamped between the eyelids.

    A blink brings the lids together while the iris stays where it was; left outside the lids, the
    iris's triangles would paint the eye over the closed lid. Each iris point is moved, across the
    eye, to within the lid opening at its position along the eye. ``N×2|3`` (N = 478) in, same out.
    """
    lm = _as_landmarks(landmarks, "landmarks")
    if lm.shape[0] < 478:
        return lm.astype(np.float32)
    out = lm.copy()
    for (a, b), upper, lower, iris in _EYES:
        pa, pb = lm[a, :2], lm[b, :2]
        width = float(np.linalg.norm(pb - pa))
        if width <= 0:
            continue
        ax = (pb - pa) / width
        nx = np.array([-ax[1], ax[0]])

        def local(idx):
            d = lm[list(idx), :2] - pa
            return d @ ax, d @ nx

        ut, un = local(upper)
        lt, ln = local(lower)
        it, inn = local(iris)
        ou, ol = np.argsort(ut), np.argsort(lt)
        up_at = np.interp(it, np.r_[0.0, ut[ou], width], np.r_[0.0, un[ou], 0.0])
        lo_at = np.interp(it, np.r_[0.0, lt[ol], width], np.r_[0.0, ln[ol], 0.0])
        lo_b, hi_b = np.minimum(up_at, lo_at), np.maximum(up_at, lo_at)
        new_n = np.clip(inn, lo_b, hi_b)
        out[list(iris), :2] = pa + np.outer(it, ax) + np.outer(new_n, nx)
    return out.astype(np.float32)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``x -> s R x + t`` minimising ``Σ‖s R src + t − dst‖²`` (proper rotation)."""
    d = src.shape[1]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.ones(d)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[-1] = -1.0
    r = u @ np.diag(e) @ vt
    var_s = (xs**2).sum() / len(src)
    s = float((sig * e).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - s * r @ mu_s
    return s, r, t


def _apply(sim: tuple[float, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    s, r, t = sim
    return s * x @ r.T + t


def _invert(sim: tuple[float, np.ndarray, np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    s, r, t = sim
    return 1.0 / s, r.T, -(r.T @ t) / s


def relative_landmarks(
    source: np.ndarray, driving: np.ndarray, driving_reference: np.ndarray, neutral_mouth: bool = False
) -> np.ndarray:
    """Source landmarks moved by the driver's expression and pose change since the reference.

    ``source``, ``driving``, ``driving_reference``: ``N×2`` or ``N×3`` pixels (each in its own
    frame). 3-D fitting is used only when all three have a z column.

    ``neutral_mouth``: the expression is taken relative to estimates of the *neutral* faces,
    ``close_mouth(source) + (driving − close_mouth(reference))`` in the canonical frame, so a photo
    with an open mouth closes it when the driver's mouth is closed, and the driver's mouth opening
    is reproduced as it is rather than added to the photo's. Off by default: a warp closing a mouth
    that shows teeth squeezes the teeth into a band under the lips (no warp can draw the lips that
    would cover them). Off, ``driving == driving_reference`` returns ``source[:, :2]`` (up to float
    rounding). Returns ``N×2`` float32.
    """
    src = _as_landmarks(source, "source")
    drv = _as_landmarks(driving, "driving")
    ref = _as_landmarks(driving_reference, "driving_reference")
    if not (src.shape[0] == drv.shape[0] == ref.shape[0]):
        raise ValueError(
            f"landmark counts differ: source {src.shape[0]}, driving {drv.shape[0]}, "
            f"driving_reference {ref.shape[0]}"
        )
    dim = 3 if src.shape[1] == drv.shape[1] == ref.shape[1] == 3 else 2
    src, drv, ref = src[:, :dim], drv[:, :dim], ref[:, :dim]
    idx = list(STABLE_POINTS)

    # Template: the source's stable points, centred, unit RMS radius (keeps its orientation).
    st = src[idx]
    centre = st.mean(0)
    radius = float(np.sqrt(((st - centre) ** 2).sum(1).mean()))
    if radius <= 0:
        raise ValueError("source landmarks are degenerate (zero extent)")
    to_canon_src = (1.0 / radius, np.eye(dim), -centre / radius)
    template = _apply(to_canon_src, st)
    to_canon_ref = _umeyama(ref[idx], template)
    to_canon_drv = _umeyama(drv[idx], template)

    src_c = _apply(to_canon_src, src)
    ref_c = _apply(to_canon_ref, ref)
    drv_c = _apply(to_canon_drv, drv)
    if neutral_mouth:
        src_c = close_mouth(src_c).astype(np.float64)
        ref_c = close_mouth(ref_c).astype(np.float64)
    out_c = src_c + (drv_c - ref_c)  # expression change, face-size units

    # Pose change reference -> driving, expressed in the canonical frame:
    # canonical(ref) -> image(ref) -> image(drv) ≈ canonical(ref) -> ... -> canonical via drv fit.
    ref_to_drv = _umeyama(ref[idx], drv[idx])
    pose_c = _compose(to_canon_ref, _compose(ref_to_drv, _invert(to_canon_ref)))
    out = _apply(_invert(to_canon_src), _apply(pose_c, out_c))
    return out[:, :2].astype(np.float32)


def _compose(
    a: tuple[float, np.ndarray, np.ndarray], b: tuple[float, np.ndarray, np.ndarray]
) -> tuple[float, np.ndarray, np.ndarray]:
    """``a ∘ b``: apply ``b`` first, then ``a``."""
    sa, ra, ta = a
    sb, rb, tb = b
    return sa * sb, ra @ rb, sa * ra @ tb + ta


def transfer_landmarks(
    source: np.ndarray,
    driving: np.ndarray,
    driving_reference: np.ndarray,
    mode: Literal["absolute", "relative"],
    neutral_mouth: bool = False,
) -> np.ndarray:
    """Target landmarks for the source (``N×2`` float32 pixels of the source's crop).

    ``"relative"``: ``relative_landmarks`` (cross-identity; the source keeps its face shape).
    ``"absolute"``: the driving landmarks as given (same-identity reenactment; the caller passes
    them already mapped into the source crop, e.g. both crops made by ``CropTransform``).
    """
    if mode == "relative":
        return relative_landmarks(source, driving, driving_reference, neutral_mouth=neutral_mouth)
    elif mode == "absolute":
        drv = _as_landmarks(driving, "driving")
        return drv[:, :2].astype(np.float32)
    else:
        raise ValueError(f"mode must be 'absolute' or 'relative', got {mode!r}")
