"""Cross-identity relative motion (DESIGN §2.7): the driver's expression and head-pose *changes*
move the source's own landmarks, so the driver's face shape does not leak into the output (the
open equivalent of the paper's 3DMM identity/expression split; FOMM ``--relative``, LivePortrait).

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
    source: np.ndarray, driving: np.ndarray, driving_reference: np.ndarray
) -> np.ndarray:
    """Source landmarks moved by the driver's expression and pose change since the reference.

    ``source``, ``driving``, ``driving_reference``: ``N×2`` or ``N×3`` pixels (each in its own
    frame). 3-D fitting is used only when all three have a z column. ``driving ==
    driving_reference`` returns ``source[:, :2]`` (up to float rounding). Returns ``N×2`` float32.
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
) -> np.ndarray:
    """Target landmarks for the source (``N×2`` float32 pixels of the source's crop).

    ``"relative"``: ``relative_landmarks`` (cross-identity; the source keeps its face shape).
    ``"absolute"``: the driving landmarks as given (same-identity reenactment; the caller passes
    them already mapped into the source crop, e.g. both crops made by ``CropTransform``).
    """
    if mode == "relative":
        return relative_landmarks(source, driving, driving_reference)
    elif mode == "absolute":
        drv = _as_landmarks(driving, "driving")
        return drv[:, :2].astype(np.float32)
    else:
        raise ValueError(f"mode must be 'absolute' or 'relative', got {mode!r}")
