"""Mouth crops and the mouth-interior fill of the render path (MetaPortrait §3.1: the refinement
network draws what the warp cannot; here the inside of an opening mouth).

A *mouth frame* is the similarity transform that puts the outer mouth corners (landmarks 61 and 291)
on a horizontal line ``mouth_width`` pixels long through the centre of an ``S×S`` crop. The
:class:`~metaportrait.models.mouth_interior.MouthInteriorNetwork` works in that frame: it reads the
warped output's mouth crop, the driving lips rasterised in it and the source's own mouth crop, and
its prediction is pasted back into the output *only* inside a feathered mask of the driving
inner-lip polygon drawn at the output's resolution, and only while the mouth is open (inner-lip gap
over mouth width above :data:`OPEN_THRESHOLD` and :data:`SOURCE_MARGIN` beyond the source's own
opening, faded in over :data:`RAMP`: :func:`fill_strength`). Outside the mask the output is the warp
exactly.

Images are uint8 RGB ``H×W×3``; landmarks are continuous pixel coordinates (centres at ``i + 0.5``).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from metaportrait.face.regions import MOUTH_INNER, MOUTH_LEFT_CORNER, MOUTH_OUTER, MOUTH_RIGHT_CORNER
from metaportrait.models.mouth_interior import MouthInteriorNetwork

OPEN_THRESHOLD = 0.06
"""Inner-lip gap (landmarks 13-14) over mouth width (61-291) above which the mouth counts as open."""
SOURCE_MARGIN = 0.05
"""The driving mouth must open this much (same units) beyond the source's own opening: where the
source already shows as much mouth as the driver asks for, the warp carries its real pixels."""
RAMP = 0.06
"""Over this much more opening the network's share rises from 0 to 1 (no popping from frame to frame)."""
MASK_GROW = 0.04
"""The inner-lip mask is grown by this fraction of the mouth width (covers the lips' inner rim)."""
MASK_FEATHER = 0.03
"""Gaussian feather (σ) of the mask, as a fraction of the mouth width."""


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap (13-14) over mouth width (61-291)."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    width = np.linalg.norm(lm[MOUTH_LEFT_CORNER] - lm[MOUTH_RIGHT_CORNER])
    return float(np.linalg.norm(lm[13] - lm[14]) / max(width, 1e-6))


def fill_strength(driving: np.ndarray, source: np.ndarray, threshold: float = OPEN_THRESHOLD,
                  source_margin: float | None = SOURCE_MARGIN) -> float:
    """How much (0..1) of the network's mouth to use for ``driving`` landmarks on a ``source`` face:
    0 while the driving mouth is closed or opens no further than the source's own, rising to 1
    over :data:`RAMP` beyond ``max(threshold, source opening + source_margin)``. ``source_margin``
    None: every mouth opening beyond ``threshold`` (a network personalized on the person's own
    frames draws their mouth better than the warp carries the photo's, when measured so)."""
    start = threshold if source_margin is None else max(threshold, mouth_opening(source) + source_margin)
    return float(np.clip((mouth_opening(driving) - start) / RAMP, 0.0, 1.0))


def corner_frame(left: np.ndarray, right: np.ndarray, crop_size: int, width: float, what: str = "corners",
                 mirror: bool = False) -> np.ndarray:
    """``2×3`` float64 similarity (continuous image pixels -> continuous crop pixels) that puts the
    points ``left`` and ``right`` on a horizontal line ``width`` pixels long through the centre of a
    ``crop_size²`` crop (``mirror``: x flipped in the crop). ``what`` names the points in errors."""
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    d = right - left
    dist = float(np.hypot(*d))
    if not np.isfinite(dist) or dist < 1e-3:
        raise ValueError(f"{what} coincide or are not finite: {left} {right}")
    s = width / dist
    c, si = d / dist
    rot = s * np.array([[c, si], [-si, c]])  # rotates the corner line onto +x, scales
    if mirror:
        rot[0] = -rot[0]  # x -> -x in the crop
    t = np.array([crop_size / 2.0, crop_size / 2.0]) - rot @ ((left + right) / 2)
    return np.concatenate([rot, t[:, None]], axis=1)


def mouth_frame(landmarks: np.ndarray, crop_size: int, mouth_width: float) -> np.ndarray:
    """``2×3`` float64 affine (continuous image pixels -> continuous crop pixels) of the mouth frame."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    return corner_frame(lm[MOUTH_LEFT_CORNER], lm[MOUTH_RIGHT_CORNER], crop_size, mouth_width, "mouth corners")


def apply_affine(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.asarray(pts, np.float64)[:, :2]
    return p @ affine[:, :2].T + affine[:, 2]


def index_affine(affine: np.ndarray) -> np.ndarray:
    """The same map between pixel *indices* (continuous − 0.5), as cv2 wants it."""
    a = affine.copy()
    a[:, 2] = affine[:, 2] + affine[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return a


def crop_mouth(image: np.ndarray, affine: np.ndarray, crop_size: int) -> np.ndarray:
    """The ``crop_size²`` mouth crop of ``image`` (bilinear; low-passed first when it shrinks)."""
    img = np.asarray(image)
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    # only the part of the image the crop reads is blurred
    inv = cv2.invertAffineTransform(affine)
    corners = apply_affine(inv, np.array([[0, 0], [crop_size, 0], [0, crop_size], [crop_size, crop_size]], np.float64))
    pad = 4.0 / max(scale, 1e-3)
    x0 = int(max(0, np.floor(corners[:, 0].min() - pad)))
    y0 = int(max(0, np.floor(corners[:, 1].min() - pad)))
    x1 = int(min(img.shape[1], np.ceil(corners[:, 0].max() + pad)))
    y1 = int(min(img.shape[0], np.ceil(corners[:, 1].max() + pad)))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((crop_size, crop_size, 3), np.uint8)
    part = img[y0:y1, x0:x1]
    if scale < 0.8:
        part = cv2.GaussianBlur(part, (0, 0), 0.45 / scale)
    shifted = affine.copy()
    shifted[:, 2] = affine[:, 2] + affine[:, :2] @ np.array([x0, y0], np.float64)
    return cv2.warpAffine(part, index_affine(shifted), (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def fill_polygon(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """``H×W`` float32 anti-aliased fill (0..1) of a polygon in continuous pixel coordinates."""
    mask = np.zeros((height, width), np.uint8)
    poly = np.rint((np.asarray(points, np.float64)[:, :2] - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA, 4)
    return mask.astype(np.float32) / 255.0


def lip_image(driving: np.ndarray, source_inner: np.ndarray, crop_size: int) -> np.ndarray:
    """``S×S×3`` float32 lip raster: driving inner-lip fill, driving outer-lip fill (both from the
    driving landmarks in crop pixels, ``N×2`` with N ≥ 468) and the source's inner-lip fill
    (``source_inner``: the 20 inner-lip points in the source crop)."""
    drv = np.asarray(driving, np.float64)
    return np.stack([
        fill_polygon(drv[list(MOUTH_INNER)], crop_size, crop_size),
        fill_polygon(drv[list(MOUTH_OUTER)], crop_size, crop_size),
        fill_polygon(source_inner, crop_size, crop_size),
    ], axis=2)


def inner_mask(inner: np.ndarray, mouth_width: float, height: int, width: int) -> np.ndarray:
    """``H×W`` float32 feathered mask (0..1) of an inner-lip polygon (20 points, pixels), grown by
    :data:`MASK_GROW` and feathered by :data:`MASK_FEATHER` of ``mouth_width``; exactly 0 beyond
    the feather's reach."""
    m = fill_polygon(inner, height, width)
    grow = max(1, int(round(MASK_GROW * mouth_width)))
    m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    sigma = max(0.5, MASK_FEATHER * mouth_width)
    m = cv2.GaussianBlur(m, (0, 0), sigma)
    m[m < 1.0 / 255.0] = 0.0
    return m


def _to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class MouthFiller:
    """Runs a :class:`MouthInteriorNetwork` on rendered frames (see the module docstring)."""

    def __init__(self, network: MouthInteriorNetwork, device: str | torch.device = "cpu",
                 threshold: float = OPEN_THRESHOLD, source_margin: float | None = SOURCE_MARGIN) -> None:
        self.network = network.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.threshold = float(threshold)
        self.source_margin = None if source_margin is None else float(source_margin)
        cfg = network.config
        self.crop_size = int(cfg.crop_size)
        self.mouth_width = float(cfg.mouth_width)

    def source_inputs(self, face: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The source's mouth crop and its inner-lip points in that crop."""
        a = mouth_frame(landmarks, self.crop_size, self.mouth_width)
        return crop_mouth(face, a, self.crop_size), apply_affine(a, np.asarray(landmarks)[list(MOUTH_INNER)])

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray, landmarks: np.ndarray, source_face: np.ndarray,
                 source_landmarks: np.ndarray) -> np.ndarray:
        """``frame`` (uint8, the warped output) with the mouth interior drawn where the driving
        ``landmarks`` (pixels of ``frame``) open the mouth beyond the source's own opening
        (:func:`fill_strength`); a copy of ``frame`` otherwise.
        ``source_face``/``source_landmarks``: the source crop and its landmarks (its pixels)."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame must be uint8 H×W×3, got {frame.dtype} {frame.shape}")
        lm = np.asarray(landmarks, np.float64)
        strength = fill_strength(lm, source_landmarks, self.threshold, self.source_margin)
        if strength <= 0.0:
            return frame.copy()
        s = self.crop_size
        a = mouth_frame(lm, s, self.mouth_width)
        warped = crop_mouth(frame, a, s)
        src, src_inner = self.source_inputs(source_face, source_landmarks)
        lips = lip_image(apply_affine(a, lm), src_inner, s)
        out = self.network(_to_tensor(warped[None], self.device),
                           torch.from_numpy(lips[None]).permute(0, 3, 1, 2).to(self.device),
                           _to_tensor(src[None], self.device)).image
        pred = ((out[0].permute(1, 2, 0).float().cpu().numpy() + 1.0) * 127.5).astype(np.float32)
        width = float(np.linalg.norm(lm[MOUTH_LEFT_CORNER, :2] - lm[MOUTH_RIGHT_CORNER, :2]))
        return paste_mouth(frame, pred, a, lm[list(MOUTH_INNER)], width, strength)


FILL_FILE = "fill.json"
"""Next to a personalized mouth network's weights: ``{"source_margin": null | float, ...}``, the fill
policy personalization chose on the person's held-back frames (absent: :data:`SOURCE_MARGIN`)."""


def read_fill_policy(folder) -> float | None:
    """The ``source_margin`` of a mouth-network folder's :data:`FILL_FILE` (:data:`SOURCE_MARGIN` without one)."""
    import json
    from pathlib import Path

    path = Path(folder) / FILL_FILE
    if not path.is_file():
        return SOURCE_MARGIN
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "source_margin" not in data:
        raise ValueError(f"{path}: expected an object with 'source_margin', got {data!r}")
    margin = data["source_margin"]
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not -1 <= margin <= 1):
        raise ValueError(f"{path}: source_margin must be null or a number in [-1, 1], got {margin!r}")
    return None if margin is None else float(margin)


def paste_mouth(frame: np.ndarray, prediction: np.ndarray, affine: np.ndarray, inner: np.ndarray,
                mouth_width: float, strength: float = 1.0) -> np.ndarray:
    """``frame`` with ``prediction`` (``S×S×3`` float, grey levels, in the mouth frame ``affine``)
    blended in under the feathered inner-lip mask of ``inner`` (frame pixels; ``mouth_width``: the
    corner distance in frame pixels) times ``strength``, at the frame's resolution; pixels where
    the mask is 0 are the frame's own, bit for bit."""
    h, w = frame.shape[:2]
    out = frame.copy()
    # the mask is computed in the polygon's box grown by the mask's reach (dilation + 4σ blur), which
    # gives the same values as over the whole frame at a fraction of the cost on a large photo
    inner = np.asarray(inner, np.float64)[:, :2]
    reach = int(np.ceil(MASK_GROW * mouth_width + 4 * max(0.5, MASK_FEATHER * mouth_width))) + 3
    bx0, by0 = (np.floor(inner.min(0)).astype(int) - reach).clip(0)
    bx1, by1 = np.minimum(np.ceil(inner.max(0)).astype(int) + reach, [w, h])
    if bx1 <= bx0 or by1 <= by0:
        return out
    mask = inner_mask(inner - [bx0, by0], mouth_width, int(by1 - by0), int(bx1 - bx0))
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return out
    mask = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    y0, y1 = int(by0 + ys.min()), int(by0 + ys.max()) + 1
    x0, x1 = int(bx0 + xs.min()), int(bx0 + xs.max()) + 1
    shifted = affine.copy()  # frame pixels of the region -> crop pixels
    shifted[:, 2] = affine[:, 2] + affine[:, :2] @ np.array([x0, y0], np.float64)
    # warpAffine with WARP_INVERSE_MAP samples prediction at shifted(region pixel)
    region = cv2.warpAffine(prediction, index_affine(shifted), (x1 - x0, y1 - y0),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    m = mask[..., None] * float(strength)
    base = frame[y0:y1, x0:x1].astype(np.float32)
    blended = np.clip(np.rint(base + m * (region - base)), 0, 255).astype(np.uint8)
    out[y0:y1, x0:x1] = np.where(m > 0, blended, frame[y0:y1, x0:x1])
    return out


__all__ = [
    "MASK_FEATHER",
    "MASK_GROW",
    "OPEN_THRESHOLD",
    "RAMP",
    "SOURCE_MARGIN",
    "MouthFiller",
    "apply_affine",
    "crop_mouth",
    "fill_strength",
    "fill_polygon",
    "index_affine",
    "inner_mask",
    "lip_image",
    "mouth_frame",
    "mouth_opening",
    "paste_mouth",
]
