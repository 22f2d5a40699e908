"""Face crop that keeps its transform (docs/METHOD.md §2.2): a square box around the face with a
margin, resampled to the model's resolution, and pasted back into the original frame.

Coordinates are continuous pixel coordinates (``(0, 0)`` = top-left corner of the image, pixel
centres at ``i + 0.5``), so ``points_to_crop`` / ``points_to_image`` are exact inverses and agree
with ``grid_sample(align_corners=False)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _as_points(pts: np.ndarray, name: str = "pts") -> np.ndarray:
    pts = np.asarray(pts)
    if pts.ndim < 1 or pts.shape[-1] not in (2, 3):
        raise ValueError(f"{name} must have shape (..., 2) or (..., 3), got {pts.shape}")
    return pts


@dataclass(frozen=True)
class CropTransform:
    """Square box ``center``/``side`` (pixels of the original image) resampled to ``size``²."""

    center: tuple[float, float]
    side: float
    size: int

    def __post_init__(self) -> None:
        if not (np.isfinite(self.side) and self.side > 0):
            raise ValueError(f"side must be a positive finite number, got {self.side!r}")
        if not isinstance(self.size, (int, np.integer)) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if len(self.center) != 2 or not all(np.isfinite(c) for c in self.center):
            raise ValueError(f"center must be two finite numbers, got {self.center!r}")
        object.__setattr__(self, "center", (float(self.center[0]), float(self.center[1])))
        object.__setattr__(self, "side", float(self.side))
        object.__setattr__(self, "size", int(self.size))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_landmarks(
        cls,
        landmarks: np.ndarray,
        size: int = 256,
        margin: float = 1.9,
        shift_up: float = 0.1,
    ) -> CropTransform:
        """Square box around ``landmarks`` (``N×2``/``N×3`` pixels), like FOMM/VoxCeleb crops.

        ``side = margin × max(width, height)`` of the landmarks' extent (MediaPipe's mesh spans
        upper forehead to chin, so 1.9 leaves room for hair, ears, neck and a bit of shoulder);
        the centre is moved up by ``shift_up × extent`` so the top of the head is inside.
        """
        pts = _as_points(landmarks, "landmarks")[..., :2].reshape(-1, 2).astype(np.float64)
        if pts.shape[0] < 2 or not np.all(np.isfinite(pts)):
            raise ValueError(f"landmarks must be ≥ 2 finite points, got shape {pts.shape}")
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin!r}")
        lo, hi = pts.min(0), pts.max(0)
        extent = float(max(hi - lo))
        if extent <= 0:
            raise ValueError(f"landmarks have zero extent: {lo} .. {hi}")
        cx, cy = (lo + hi) / 2.0
        return cls(center=(float(cx), float(cy - shift_up * extent)), side=margin * extent,
                   size=size)

    @classmethod
    def from_box(cls, box: tuple[float, float, float, float], size: int = 256) -> CropTransform:
        """The square with the same centre as ``(x0, y0, x1, y1)`` and side its larger edge."""
        x0, y0, x1, y1 = (float(v) for v in box)
        return cls(center=((x0 + x1) / 2, (y0 + y1) / 2), side=max(x1 - x0, y1 - y0), size=size)

    def rescaled(self, size: int) -> CropTransform:
        """Same box, another output resolution (e.g. 256 -> 512 for super-resolution)."""
        return CropTransform(center=self.center, side=self.side, size=size)

    # -- geometry ----------------------------------------------------------------------------
    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the square in the original image (may exceed the image)."""
        cx, cy = self.center
        h = self.side / 2.0
        return (cx - h, cy - h, cx + h, cy + h)

    @property
    def scale(self) -> float:
        """Crop pixels per original pixel."""
        return self.size / self.side

    @property
    def matrix(self) -> np.ndarray:
        """2×3 float64 affine, original -> crop, in continuous pixel coordinates."""
        s = self.scale
        x0, y0 = self.box[:2]
        return np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s]], np.float64)

    def _index_matrix(self, size: int) -> np.ndarray:
        """Original -> crop of ``size``² in pixel-index coordinates (what cv2 uses)."""
        s = size / self.side
        x0, y0 = self.box[:2]
        return np.array(
            [[s, 0.0, (0.5 - x0) * s - 0.5], [0.0, s, (0.5 - y0) * s - 0.5]], np.float64
        )

    def points_to_crop(self, pts: np.ndarray) -> np.ndarray:
        """Original-image points ``(..., 2|3)`` -> crop pixels (a z column is scaled too)."""
        pts = _as_points(pts)
        out = pts.astype(np.float64, copy=True)
        x0, y0 = self.box[:2]
        s = self.scale
        out[..., 0] = (out[..., 0] - x0) * s
        out[..., 1] = (out[..., 1] - y0) * s
        if out.shape[-1] == 3:
            out[..., 2] *= s
        return out.astype(np.float32)

    def points_to_image(self, pts: np.ndarray) -> np.ndarray:
        """Crop pixels ``(..., 2|3)`` -> original-image points (inverse of ``points_to_crop``)."""
        pts = _as_points(pts)
        out = pts.astype(np.float64, copy=True)
        x0, y0 = self.box[:2]
        s = self.scale
        out[..., 0] = out[..., 0] / s + x0
        out[..., 1] = out[..., 1] / s + y0
        if out.shape[-1] == 3:
            out[..., 2] /= s
        return out.astype(np.float32)

    # -- images ------------------------------------------------------------------------------
    def crop(self, image: np.ndarray) -> np.ndarray:
        """``size×size×3`` crop of ``image`` (uint8 ``H×W×C``); outside the image: reflection."""
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise ValueError(f"image must be H×W or H×W×C, got shape {image.shape}")
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        if interp == cv2.INTER_AREA:
            # warpAffine has no area filter: pre-shrink, then warp with a ≥ 1 scale.
            factor = self.scale * 1.0001
            small = cv2.resize(
                image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA
            )
            fx = small.shape[1] / image.shape[1]
            fy = small.shape[0] / image.shape[0]
            m = self._index_matrix(self.size)
            # index_small = (index_orig + 0.5) * f - 0.5  =>  compose.
            pre = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])
            m = (np.vstack([m, [0, 0, 1.0]]) @ np.linalg.inv(pre))[:2]
            src = small
        else:
            m = self._index_matrix(self.size)
            src = image
        return cv2.warpAffine(
            src, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )

    def paste_mask(self, image_shape: tuple[int, ...], feather: float = 0.1) -> np.ndarray:
        """float32 ``H×W`` blend weight of the pasted crop: 1 inside, smooth fall to 0 at the box.

        The weight is a product of two smoothsteps over the outer ``feather`` fraction of the
        box on each side (a rounded, feathered square), warped into the original frame.
        """
        if not 0.0 <= feather <= 0.5:
            raise ValueError(f"feather must be in [0, 0.5], got {feather!r}")
        h, w = int(image_shape[0]), int(image_shape[1])
        n = max(self.size, 64)
        u = (np.arange(n, dtype=np.float64) + 0.5) / n  # crop-normalised pixel centres
        d = np.minimum(u, 1.0 - u)
        if feather > 0:
            t = np.clip(d / feather, 0.0, 1.0)
            ramp = t * t * (3.0 - 2.0 * t)
        else:
            ramp = np.ones_like(d)
        mask_crop = np.outer(ramp, ramp).astype(np.float32)
        m = self._index_matrix(n)
        return cv2.warpAffine(
            mask_crop, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
        )

    def paste_back(
        self, original: np.ndarray, generated: np.ndarray, feather: float = 0.1
    ) -> np.ndarray:
        """Blend ``generated`` (uint8 ``S×S×3``, any square size ``S``) into ``original``.

        Returns a new array with ``original``'s shape; pixels outside the box are unchanged.
        """
        original = np.asarray(original)
        generated = np.asarray(generated)
        if original.dtype != np.uint8 or original.ndim != 3 or original.shape[2] != 3:
            raise ValueError(
                f"original must be uint8 H×W×3, got {original.dtype} {original.shape}"
            )
        if (
            generated.dtype != np.uint8
            or generated.ndim != 3
            or generated.shape[2] != 3
            or generated.shape[0] != generated.shape[1]
        ):
            raise ValueError(
                f"generated must be uint8 S×S×3 (square), got {generated.dtype} {generated.shape}"
            )
        h, w = original.shape[:2]
        if generated.shape[0] > self.side * 1.25:
            # Downsampling back to the original resolution: area filter first (no aliasing).
            n = max(1, int(round(self.side)))
            generated = cv2.resize(generated, (n, n), interpolation=cv2.INTER_AREA)
        back = cv2.warpAffine(
            generated, self._index_matrix(generated.shape[0]), (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
        )
        mask = self.paste_mask(original.shape, feather)[..., None]
        blend = original.astype(np.float32) * (1.0 - mask) + back.astype(np.float32) * mask
        out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        return np.where(mask > 0, out, original)
