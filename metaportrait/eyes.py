"""Eye crops and the closing-eyelid fill of the render path (MetaPortrait §3.1: the refinement
network draws what the warp cannot; here the lid of an eye that closes further than the source's).

An *eye frame* is the similarity transform that puts an eye's corners (MediaPipe 33/133 for the eye
on the image's left, 362/263 for the one on its right) on a horizontal line ``eye_width`` pixels
long through the centre of an ``S×S`` crop; the right eye's frame is mirrored, so in every crop the
outer corner is on the left and one network serves both eyes. The
:class:`~metaportrait.models.eye_interior.EyeInteriorNetwork` works in that frame: it reads the
warped output's eye crop, the driving eye contour rasterised in it and the source's own eye crop;
its prediction is pasted back into the output *only* inside a feathered mask of the eye region
(the driving and the source eye openings and lid lines, grown), and only while the driving eye is
more closed than the source's own (:func:`fill_strength`: 0 until the driving lid gap falls
:data:`SOURCE_MARGIN` below the source's, 1 from :data:`SOURCE_MARGIN` + :data:`RAMP` below).
Outside the mask, and for an eye as open as the source's, the output is the warp exactly.

Images are uint8 RGB ``H×W×3``; landmarks are continuous pixel coordinates (centres at ``i + 0.5``).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from metaportrait.face.regions import LEFT_EYE, RIGHT_EYE
from metaportrait.models.eye_interior import EyeInteriorNetwork
from metaportrait.mouth import apply_affine, corner_frame, crop_mouth, fill_polygon, index_affine

EYES: tuple[tuple[tuple[int, int], tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = (
    ((33, 133), LEFT_EYE, (246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155)),
    ((362, 263), RIGHT_EYE, (398, 384, 385, 386, 387, 388, 466), (382, 381, 380, 374, 373, 390, 249)),
)
"""Per eye (image's left, image's right): the corners left to right in the image, the 16-point
contour, and the upper and lower lid points between the corners (whose gap measures the opening)."""
SOURCE_MARGIN = 0.15
"""The driving lid gap must fall this fraction below the source's own before the network draws."""
RAMP = 0.35
"""Over this much more (relative) closing the network's share rises from 0 to 1."""
OPEN_FLOOR = 0.1
"""The source's lid gap / eye width is taken as at least this when the closing is measured: a source
eye that is nearly shut already closes by (its gap / OPEN_FLOOR), not by 100 %, so the network
takes over less of it."""
MASK_GROW = 0.25
"""The eye-region mask is grown by this fraction of the eye width (the lids and the lash line)."""
MASK_FEATHER = 0.1
"""Gaussian feather (σ) of the mask, as a fraction of the eye width."""


def eye_opening(landmarks: np.ndarray, eye: int) -> float:
    """Lid gap over eye width of eye ``eye`` (0: image's left, 1: right): the mean distance of the
    lower lid's points from the corner line minus the upper lid's, across the eye, over the corner
    distance (0 closed; a relaxed open eye ≈ 0.2)."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    (a, b), _, upper, lower = EYES[eye]
    d = lm[b] - lm[a]
    width = float(np.hypot(*d))
    across = np.array([-d[1], d[0]]) / max(width, 1e-6)
    gap = ((lm[list(lower)] - lm[a]) @ across).mean() - ((lm[list(upper)] - lm[a]) @ across).mean()
    return float(abs(gap) / max(width, 1e-6))


def fill_strength(driving: np.ndarray, source: np.ndarray, eye: int) -> float:
    """How much (0..1) of the network's eye to use for ``driving`` landmarks on a ``source`` face,
    for eye ``eye``: 0 while the driving eye is as open as the source's (or closes less than
    :data:`SOURCE_MARGIN` of it), rising to 1 over :data:`RAMP` more closing."""
    src = eye_opening(source, eye)
    closing = (src - eye_opening(driving, eye)) / max(src, OPEN_FLOOR)
    return float(np.clip((closing - SOURCE_MARGIN) / RAMP, 0.0, 1.0))


def eye_frame(landmarks: np.ndarray, eye: int, crop_size: int, eye_width: float) -> np.ndarray:
    """``2×3`` float64 affine (continuous image pixels -> continuous crop pixels) of eye ``eye``'s
    frame; the right eye's is mirrored (outer corner on the crop's left for both)."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    (ia, ib), _, _, _ = EYES[eye]
    return corner_frame(lm[ia], lm[ib], crop_size, eye_width, "eye corners", mirror=eye == 1)


def contour_image(driving: np.ndarray, source: np.ndarray, crop_size: int) -> np.ndarray:
    """``S×S×3`` float32 eye raster: driving eye opening (filled), driving lid lines (the contour as
    an anti-aliased line) and the source's eye opening (filled); the contours are 16 points each in
    crop pixels (the driving eye in the output's crop, the source's in the source crop)."""
    lines = np.zeros((crop_size, crop_size), np.uint8)
    poly = np.rint((np.asarray(driving, np.float64)[:, :2] - 0.5) * 16).astype(np.int32)
    cv2.polylines(lines, [poly], True, 255, 1, cv2.LINE_AA, 4)
    return np.stack([fill_polygon(driving, crop_size, crop_size), lines.astype(np.float32) / 255.0,
                     fill_polygon(source, crop_size, crop_size)], axis=2)


def eye_mask(driving: np.ndarray, source: np.ndarray, eye_width: float, crop_size: int) -> np.ndarray:
    """``S×S`` float32 feathered mask (0..1) in the crop: the driving and the source eye contours
    (crop pixels; filled, and their lines), grown by :data:`MASK_GROW` and feathered by
    :data:`MASK_FEATHER` of ``eye_width``; exactly 0 beyond the feather's reach."""
    m = contour_image(driving, source, crop_size).max(axis=2)
    grow = max(1, int(round(MASK_GROW * eye_width)))
    m = cv2.dilate((m > 0.25).astype(np.float32), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
    m = cv2.GaussianBlur(m, (0, 0), max(0.5, MASK_FEATHER * eye_width))
    m[m < 1.0 / 255.0] = 0.0
    return m


def paste_eye(frame: np.ndarray, prediction: np.ndarray, mask: np.ndarray, affine: np.ndarray,
              strength: float = 1.0) -> np.ndarray:
    """``frame`` with ``prediction`` (``S×S×3`` float grey levels in the eye frame ``affine``)
    blended in under ``mask`` (``S×S``, same frame) times ``strength``, at the frame's resolution;
    pixels where the mask is 0 are the frame's own, bit for bit."""
    out = frame.copy()
    h, w = frame.shape[:2]
    ys, xs = np.nonzero(mask)
    if len(ys) == 0 or strength <= 0:
        return out
    box = np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.min()], [xs.min(), ys.max() + 1], [xs.max() + 1, ys.max() + 1]],
                   np.float64)
    corners = apply_affine(cv2.invertAffineTransform(affine), box)
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return out
    shifted = affine.copy()  # frame pixels of the region -> crop pixels
    shifted[:, 2] = affine[:, 2] + affine[:, :2] @ np.array([x0, y0], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    size = (int(x1 - x0), int(y1 - y0))
    region = cv2.warpAffine(prediction.astype(np.float32), index_affine(shifted), size, flags=flags,
                            borderMode=cv2.BORDER_REPLICATE)
    m = cv2.warpAffine(mask.astype(np.float32), index_affine(shifted), size, flags=flags,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    m[m < 1.0 / 255.0] = 0.0
    m = m[..., None] * float(strength)
    base = frame[y0:y1, x0:x1].astype(np.float32)
    blended = np.clip(np.rint(base + m * (region - base)), 0, 255).astype(np.uint8)
    out[y0:y1, x0:x1] = np.where(m > 0, blended, frame[y0:y1, x0:x1])
    return out


def _to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class EyeFiller:
    """Runs an :class:`EyeInteriorNetwork` on rendered frames (see the module docstring)."""

    def __init__(self, network: EyeInteriorNetwork, device: str | torch.device = "cpu") -> None:
        self.network = network.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        cfg = network.config
        self.crop_size = int(cfg.crop_size)
        self.eye_width = float(cfg.eye_width)

    def source_inputs(self, face: np.ndarray, landmarks: np.ndarray, eye: int) -> tuple[np.ndarray, np.ndarray]:
        """The source's crop of eye ``eye`` and its contour in that crop."""
        a = eye_frame(landmarks, eye, self.crop_size, self.eye_width)
        return crop_mouth(face, a, self.crop_size), apply_affine(a, np.asarray(landmarks)[list(EYES[eye][1])])

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray, landmarks: np.ndarray, source_face: np.ndarray,
                 source_landmarks: np.ndarray) -> np.ndarray:
        """``frame`` (uint8, the warped output) with the eyelids drawn where the driving
        ``landmarks`` (pixels of ``frame``) close an eye further than the source's own
        (:func:`fill_strength`); a copy of ``frame`` otherwise.
        ``source_face``/``source_landmarks``: the source crop and its landmarks (its pixels)."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame must be uint8 H×W×3, got {frame.dtype} {frame.shape}")
        lm = np.asarray(landmarks, np.float64)
        s = self.crop_size
        eyes, warped, rasters, sources = [], [], [], []
        for eye in (0, 1):
            strength = fill_strength(lm, source_landmarks, eye)
            if strength <= 0.0:
                continue
            a = eye_frame(lm, eye, s, self.eye_width)
            src, src_contour = self.source_inputs(source_face, source_landmarks, eye)
            drv_contour = apply_affine(a, lm[list(EYES[eye][1])])
            eyes.append((a, strength, eye_mask(drv_contour, src_contour, self.eye_width, s)))
            warped.append(crop_mouth(frame, a, s))
            rasters.append(contour_image(drv_contour, src_contour, s))
            sources.append(src)
        out = frame.copy()
        if not eyes:
            return out
        pred = self.network(_to_tensor(np.stack(warped), self.device),
                            torch.from_numpy(np.stack(rasters)).permute(0, 3, 1, 2).to(self.device),
                            _to_tensor(np.stack(sources), self.device)).image
        pred = ((pred.permute(0, 2, 3, 1).float().cpu().numpy() + 1.0) * 127.5).astype(np.float32)
        for (a, strength, mask), p in zip(eyes, pred):
            out = paste_eye(out, p, mask, a, strength)
        return out


__all__ = [
    "EYES",
    "MASK_FEATHER",
    "MASK_GROW",
    "OPEN_FLOOR",
    "RAMP",
    "SOURCE_MARGIN",
    "EyeFiller",
    "contour_image",
    "eye_frame",
    "eye_mask",
    "eye_opening",
    "fill_strength",
    "paste_eye",
]
