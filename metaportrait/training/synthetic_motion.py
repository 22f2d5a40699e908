"""Still portraits animated by landmark-driven synthetic motion (head roll/scale/shift/turn, mouth
opening, blinks) rendered with the piecewise-affine mesh warp (docs/METHOD.md §7). For these pairs
the prior grid reproduces the driving frame exactly (``prior_is_exact``). Re-exported by
:mod:`metaportrait.training.datasets`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from metaportrait.errors import NoFaceError
from metaportrait.tensors import to_uint8
from metaportrait.training.samples import ColorJitter, PairSample, _Seeded, _to_tensor_image, make_pair, mirror_landmarks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MotionParams:
    """Synthetic landmark motion of a still portrait.

    roll_deg: in-plane head rotation; scale: zoom about the face centre; shift: ``(dx, dy)`` as a
    fraction of the crop size; yaw: head turn proxy in [-1, 1] (the inner face shifts sideways
    relative to the face outline, by up to 8 % of the face width); mouth_open: jaw drop in
    [0, 1] (1 = 15 % of the eyes-to-chin height); blink: eyelid closure in [0, 1].
    """

    roll_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    yaw: float = 0.0
    mouth_open: float = 0.0
    blink: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> MotionParams:
        return cls(
            roll_deg=float(rng.uniform(-8, 8)),
            scale=float(rng.uniform(0.95, 1.05)),
            shift=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
            yaw=float(rng.uniform(-1, 1)),
            mouth_open=float(rng.uniform(0.2, 1.0)) if rng.random() < 0.6 else 0.0,
            blink=float(rng.uniform(0.5, 1.0)) if rng.random() < 0.3 else 0.0,
        )


def _split_loop(loop: Sequence[int], a: int, b: int, member: int) -> list[int]:
    """The arc of the closed ``loop`` strictly between corners ``a`` and ``b`` that holds ``member``."""
    loop = list(loop)
    ia, ib = loop.index(a), loop.index(b)
    n = len(loop)
    arc1 = [loop[(ia + k) % n] for k in range(1, (ib - ia) % n)]
    arc2 = [loop[(ib + k) % n] for k in range(1, (ia - ib) % n)]
    return arc1 if member in arc1 else arc2


def _region_indices() -> dict[str, list[int]]:
    from metaportrait.face.regions import LEFT_EYE, MOUTH_INNER, MOUTH_OUTER, RIGHT_EYE

    return {
        "lower_lip": _split_loop(MOUTH_INNER, 78, 308, 14) + _split_loop(MOUTH_OUTER, 61, 291, 17),
        "upper_lip": [78, 308, 61, 291] + _split_loop(MOUTH_INNER, 78, 308, 13) + _split_loop(MOUTH_OUTER, 61, 291, 0),
        "left_upper": _split_loop(LEFT_EYE, 33, 133, 159),
        "left_lower": [33] + _split_loop(LEFT_EYE, 33, 133, 145) + [133],
        "right_upper": _split_loop(RIGHT_EYE, 263, 362, 386),
        "right_lower": [263] + _split_loop(RIGHT_EYE, 263, 362, 374) + [362],
        "left_iris": list(range(468, 473)),
        "right_iris": list(range(473, 478)),
    }


def synthetic_landmark_motion(landmarks: np.ndarray, params: MotionParams, size: int) -> np.ndarray:
    """Driving landmarks: ``landmarks`` (478×2 pixels of a ``size`` crop) moved by ``params``.

    Expression first (blink: upper-lid points move to the lower lid at the same position along
    the eye, irises follow half-way; mouth: the lower lip and every point below it drop along
    the face's vertical axis, the upper lip stays, the drop fades out towards the jaw corners
    and up to the line of the mouth corners), then the head
    motion (yaw proxy, then a similarity: roll, scale, shift about the face centre).
    """
    lm = np.asarray(landmarks, np.float64).copy()
    if lm.shape != (478, 2):
        raise ValueError(f"landmarks must be 478×2, got {lm.shape}")
    idx = _region_indices()
    eye_l, eye_r = lm[468], lm[473]
    eyes = (eye_l + eye_r) / 2
    chin = lm[152]
    down = chin - eyes
    face_h = float(np.linalg.norm(down))
    if face_h < 1e-3:
        raise ValueError("degenerate landmarks (eyes and chin coincide)")
    down /= face_h
    across = np.array([-down[1], down[0]])  # image-left -> image-right for an upright face
    if np.dot(across, eye_r - eye_l) < 0:
        across = -across
    face_w = float(np.ptp(lm[:468] @ across))

    # blink
    if params.blink > 0:
        for side in ("left", "right"):
            upper, lower = idx[f"{side}_upper"], idx[f"{side}_lower"]
            la, lt = lm[lower] @ across, lm[lower] @ down
            order = np.argsort(la)
            for u in upper:
                target_t = np.interp(lm[u] @ across, la[order], lt[order])
                lm[u] += params.blink * (target_t - lm[u] @ down) * down
            iris = idx[f"{side}_iris"]
            centre = lm[iris[0]]
            gap = np.interp(centre @ across, la[order], lt[order]) - centre @ down
            lm[iris] += 0.5 * params.blink * max(gap, 0.0) * down

    # mouth opening (jaw drop)
    if params.mouth_open > 0:
        corner_l, corner_r = lm[78], lm[308]
        mouth_c = (corner_l + corner_r) / 2
        rel = lm[:468] - mouth_c
        t = rel @ down
        a = rel @ across
        drop = params.mouth_open * 0.15 * face_h
        # below the outer lower lip: full drop; between the corner line and it: a ramp
        t_lower = max(float((lm[17] - mouth_c) @ down), 1.0)
        w_t = np.clip(t / t_lower, 0.0, 1.0)
        w_t[idx["lower_lip"]] = 1.0
        w_t[idx["upper_lip"]] = 0.0
        w_a = np.clip(1.0 - (a / (0.5 * face_w)) ** 2, 0.0, 1.0)
        lm[:468] += (drop * w_t * w_a)[:, None] * down

    # head turn proxy: inner face slides sideways relative to the outline
    if params.yaw != 0:
        centre = lm[:468].mean(0)
        a = (lm - centre) @ across
        w = np.clip(1.0 - (a / (0.5 * face_w)) ** 2, 0.0, 1.0)
        lm += (params.yaw * 0.08 * face_w * w)[:, None] * across

    # similarity
    centre = lm[:468].mean(0)
    th = np.deg2rad(params.roll_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    lm = (lm - centre) @ (params.scale * rot).T + centre + np.asarray(params.shift) * size
    return lm.astype(np.float32)


def _load_images(images: Sequence[np.ndarray] | str | Path) -> list[tuple[str, np.ndarray]]:
    if isinstance(images, (str, Path)):
        from metaportrait.io import load_image

        folder = Path(images)
        if not folder.is_dir():
            raise ValueError(f"images must be a list of uint8 arrays or an image folder, got {str(images)!r}")
        from metaportrait.training.clip_sources import IMAGE_EXTENSIONS

        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        return [(p.name, load_image(p)) for p in files]
    out = []
    for k, img in enumerate(images):
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"images[{k}] must be uint8 H×W×3, got {arr.dtype} {arr.shape}")
        out.append((f"image_{k}", arr))
    return out


class SyntheticMotionDataset(_Seeded, Dataset):
    """Still portraits with synthetic landmark-driven motion, as :class:`PairSample` s.

    Landmarks are detected once per image (largest face); the image is cropped like a training
    clip (``CropTransform.from_landmarks``). Each item draws :class:`MotionParams`, moves the
    landmarks (:func:`synthetic_landmark_motion`) and renders the driving frame by warping the
    still with the piecewise-affine mesh warp of the moved landmarks. ``prior_grid`` is that very
    grid, so ``grid_sample(source, prior_grid) == driving`` (``prior_is_exact=True``): weight or
    mask the prior accordingly in the trainer. With ``swap_probability`` the roles are exchanged
    (the still becomes the target, teaching e.g. to close a mouth); the prior is then the
    inverse mesh warp, not exact.

    Args:
        images: uint8 RGB portraits, or a folder of images. Images without a face are skipped
            with a warning; ``NoFaceError`` if none has one.
        size: crop size. num_samples: items per epoch. augment: flip + colour jitter.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray] | str | Path,
        size: int = 256,
        num_samples: int = 1000,
        augment: bool = True,
        swap_probability: float = 0.3,
        seed: int = 0,
    ) -> None:
        from metaportrait.face import CropTransform, FaceAnalyzer

        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
        if not 0.0 <= swap_probability <= 1.0:
            raise ValueError(f"swap_probability must be in [0, 1], got {swap_probability!r}")
        self.size, self.num_samples, self.augment = int(size), int(num_samples), bool(augment)
        self.swap_probability, self.seed = float(swap_probability), int(seed)
        self.jitter = ColorJitter() if augment else None
        self.stills: list[tuple[str, np.ndarray, np.ndarray]] = []  # name, crop, landmarks
        with FaceAnalyzer(static_image_mode=True, max_faces=4) as analyzer:
            for name, img in _load_images(images):
                faces = analyzer.detect(img)
                if not faces:
                    logger.warning("SyntheticMotionDataset: no face in %s; skipped", name)
                    continue
                crop = CropTransform.from_landmarks(faces[0].landmarks, size=self.size)
                self.stills.append((name, crop.crop(img), crop.points_to_crop(faces[0].landmarks)[:, :2]))
        if not self.stills:
            raise NoFaceError("SyntheticMotionDataset: no face found in any of the images")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> PairSample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = self._rng(index)
        name, still, lm = self.stills[index % len(self.stills)]
        if self.augment and rng.random() < 0.5:
            still = np.ascontiguousarray(still[:, ::-1])
            lm = mirror_landmarks(lm, self.size)
        params = MotionParams.random(rng)
        moved = synthetic_landmark_motion(lm, params, self.size)
        return self.render(still, lm, moved, rng=rng, swap=bool(rng.random() < self.swap_probability), name=name)

    def render(
        self,
        still: np.ndarray,
        landmarks: np.ndarray,
        moved: np.ndarray,
        *,
        rng: np.random.Generator,
        swap: bool = False,
        name: str = "",
    ) -> PairSample:
        """The pair (still → moved landmarks), or (rendered → still) when ``swap``."""
        from metaportrait.face import mesh_warp_grid

        grid = torch.from_numpy(mesh_warp_grid(landmarks, moved, self.size))
        still_t = _to_tensor_image(still)
        rendered = F.grid_sample(still_t[None], grid[None], mode="bilinear", padding_mode="border",
                                 align_corners=False)[0]
        if not swap:
            return make_pair(
                still, still, landmarks, moved, rng=rng, jitter=self.jitter, identity=name,
                clip_id=f"synthetic/{name}", prior_grid=grid, prior_is_exact=True, driving_tensor=rendered,
            )
        rendered_u8 = to_uint8(rendered[None])[0]
        return make_pair(
            rendered_u8, still, moved, landmarks, rng=rng, jitter=self.jitter, prior_grid_size=None,
            identity=name, clip_id=f"synthetic/{name}", prior_is_exact=False,
        )
