"""Training samples of MetaPortrait's objective (docs/METHOD.md §7): a source/driving pair with
everything the losses need (:func:`make_pair`, :class:`PairSample`), clips for super-resolution
(:class:`ClipSample`), batching, horizontal mirroring of landmarks (:data:`MIRROR_INDEX`) and
colour jitter. Conventions as in :mod:`metaportrait.training.datasets`, which re-exports these
names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from metaportrait.tensors import to_tensor

def _mirror_index() -> np.ndarray:
    """Permutation of MediaPipe's 478 indices under a left-right mirror.

    The canonical mesh is symmetric by construction: 28 points lie on the midline, the other
    points below 248 are one half in increasing order, and 248..467 are their mirror images in
    the same order; the irises 468-472 and 473-477 swap (centre, then the four rim points with
    the horizontal ones exchanged). Verified against MediaPipe on flipped real faces (Hungarian
    matching over 10 faces gives exactly this permutation).
    """
    midline = [0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 94, 151, 152, 164, 168,
               175, 195, 197, 199, 200]
    half = [i for i in range(248) if i not in set(midline)]
    perm = np.arange(478)
    perm[half] = np.arange(248, 468)
    perm[248:468] = half
    perm[[468, 469, 470, 471, 472]] = [473, 476, 475, 474, 477]
    perm[[473, 474, 475, 476, 477]] = [468, 471, 470, 469, 472]
    return perm


MIRROR_INDEX: np.ndarray = _mirror_index()


def mirror_landmarks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Landmarks of the horizontally flipped ``size``-wide image, in MediaPipe index order."""
    out = np.asarray(landmarks, np.float32)[MIRROR_INDEX].copy()
    out[:, 0] = size - out[:, 0]
    return out


# -- samples -----------------------------------------------------------------------------------
@dataclass
class PairSample:
    """A source/driving pair (or a batch of pairs after :func:`collate_pairs`).

    Attributes (per item; batched tensors have a leading ``B``):
        source, driving: ``3×H×W`` RGB in [-1, 1].
        source_landmark_image, driving_landmark_image: ``3×H×W`` in [-1, 1] (docs/METHOD.md §2.3).
        source_landmarks, driving_landmarks: ``478×2`` pixels.
        prior_grid: ``H×W×2`` grid_sample coords; ``grid_sample(source, prior_grid)`` is the
            classical mesh warp of the source onto the driving landmarks.
        source_boxes, driving_boxes: ``3×4`` float boxes (left eye, right eye, mouth) in pixels,
            image-left/right as in ``metaportrait.face.regions``.
        source_five_points, driving_five_points: ``5×2`` (ArcFace template order).
        prior_is_exact: 0-d bool, True when the driving frame was rendered with ``prior_grid``
            (synthetic motion): the prior then reproduces the target.
        identity, clip_id: strings (lists after collation).
    """

    source: torch.Tensor
    driving: torch.Tensor
    source_landmark_image: torch.Tensor
    driving_landmark_image: torch.Tensor
    source_landmarks: torch.Tensor
    driving_landmarks: torch.Tensor
    prior_grid: torch.Tensor
    source_boxes: torch.Tensor
    driving_boxes: torch.Tensor
    source_five_points: torch.Tensor
    driving_five_points: torch.Tensor
    prior_is_exact: torch.Tensor
    identity: str | list[str]
    clip_id: str | list[str]

    @property
    def batch_size(self) -> int:
        return int(self.source.shape[0]) if self.source.ndim == 4 else 1

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PairSample:
        """A copy on ``device``; floating tensors cast to ``dtype`` when given."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None,
                         non_blocking=True)
            kw[f.name] = v
        return PairSample(**kw)


def collate_pairs(samples: Sequence[PairSample]) -> PairSample:
    """Stack items (or concatenate already-batched samples) into one batched :class:`PairSample`."""
    if not samples:
        raise ValueError("collate_pairs needs at least one sample")
    kw = {}
    for f in fields(PairSample):
        vals = [getattr(s, f.name) for s in samples]
        if isinstance(vals[0], torch.Tensor):
            batched = samples[0].source.ndim == 4
            kw[f.name] = torch.cat(vals) if batched else torch.stack(vals)
        else:
            out: list[str] = []
            for v in vals:
                out.extend(v if isinstance(v, list) else [v])
            kw[f.name] = out
    return PairSample(**kw)


@dataclass
class ClipSample:
    """Consecutive frames of one clip (a batch after ``torch.utils.data.default_collate``
    of ``ClipSample`` is not supported; use :func:`collate_clips`).

    Attributes:
        frames: ``T×3×S×S`` in [-1, 1] at the dataset's ``size`` (the SR target at 512).
        frames_256: ``T×3×256×256`` in [-1, 1], the same crop box at 256 (the SR input).
        landmarks: ``T×478×2`` pixels of the ``S`` crop.
        valid: ``T`` bool.
        clip_id: the clip; start: index of the first frame.
    """

    frames: torch.Tensor
    frames_256: torch.Tensor
    landmarks: torch.Tensor
    valid: torch.Tensor
    clip_id: str | list[str]
    start: int | list[int]


def collate_clips(samples: Sequence[ClipSample]) -> ClipSample:
    """Stack :class:`ClipSample` items into ``B×T×...`` tensors."""
    if not samples:
        raise ValueError("collate_clips needs at least one sample")
    return ClipSample(
        frames=torch.stack([s.frames for s in samples]),
        frames_256=torch.stack([s.frames_256 for s in samples]),
        landmarks=torch.stack([s.landmarks for s in samples]),
        valid=torch.stack([s.valid for s in samples]),
        clip_id=[s.clip_id for s in samples],  # type: ignore[misc]
        start=[s.start for s in samples],  # type: ignore[misc]
    )


# -- shared helpers ----------------------------------------------------------------------------
def _to_tensor_image(img: np.ndarray) -> torch.Tensor:
    """uint8 ``H×W×3`` -> contiguous float ``3×H×W`` in [-1, 1]."""
    return to_tensor(img)[0].contiguous()


@dataclass(frozen=True)
class ColorJitter:
    """Small photometric jitter, the same for the source and the driving frame of a pair."""

    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02

    def sample(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        return (
            float(rng.uniform(1 - self.brightness, 1 + self.brightness)),
            float(rng.uniform(1 - self.contrast, 1 + self.contrast)),
            float(rng.uniform(1 - self.saturation, 1 + self.saturation)),
            float(rng.uniform(-self.hue, self.hue)),
        )

    @staticmethod
    def apply(x: torch.Tensor, params: tuple[float, float, float, float]) -> torch.Tensor:
        """``x``: ``3×H×W`` in [-1, 1]. Brightness (scale), contrast (about the mean grey),
        saturation (towards grey) and hue (rotation in YIQ) are all affine in RGB, so they are
        composed into one 3×3 matrix and an offset and applied in a single pass."""
        b, c, s, h = params
        w = np.array([0.299, 0.587, 0.114])
        y = (x + 1.0) * 0.5  # [0, 1]
        mu = b * float((w[:, None] * y.mean(dim=(1, 2)).double().numpy()[:, None]).sum())
        sat = s * np.eye(3) + (1 - s) * np.outer(np.ones(3), w)
        yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        th = h * 2 * np.pi
        rot = np.array([[1, 0, 0], [0, np.cos(th), -np.sin(th)], [0, np.sin(th), np.cos(th)]])
        hue = np.linalg.inv(yiq) @ rot @ yiq
        a = hue @ sat * (c * b)
        off = hue @ sat @ np.full(3, (1 - c) * mu)
        # [-1, 1] in and out: x' = 2 (A (x + 1)/2 + off) - 1 = A x + (A 1 + 2 off - 1)
        bias = a @ np.ones(3) + 2 * off - 1
        out = torch.addmm(torch.from_numpy(bias).float()[:, None], torch.from_numpy(a).float(), x.reshape(3, -1))
        return out.reshape(x.shape).clamp_(-1.0, 1.0)


def _boxes_tensor(landmarks: np.ndarray, size: int) -> torch.Tensor:
    from metaportrait.face import region_boxes

    rb = region_boxes(landmarks, size)
    return torch.tensor([rb.left_eye, rb.right_eye, rb.mouth], dtype=torch.float32)


def _prior_grid(src_lm: np.ndarray, drv_lm: np.ndarray, size: int, grid_size: int | None,
                head: bool = False) -> torch.Tensor:
    """Mesh-warp grid ``size×size×2``, computed at ``grid_size`` and upsampled bilinearly; ``head``:
    the render path's full-head mesh warp (face + hair/ear/neck rings + still border, always at
    ``size``) instead of the face mesh alone (no motion outside the face outline)."""
    from metaportrait.face import mesh_warp_grid

    if head:
        from metaportrait.face.head_mesh import head_rig, head_warp_grid

        src, drv = np.asarray(src_lm, np.float64), np.asarray(drv_lm, np.float64)
        rings, tris = head_rig(src, size)
        return torch.from_numpy(np.ascontiguousarray(head_warp_grid(src, drv, rings, size, triangles=tris)))
    g = torch.from_numpy(mesh_warp_grid(src_lm, drv_lm, size, out_size=grid_size))
    if grid_size is not None and grid_size != size:
        g = F.interpolate(g.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        g = g.permute(1, 2, 0).contiguous()
    return g


def make_pair(
    source: np.ndarray,
    driving: np.ndarray,
    source_landmarks: np.ndarray,
    driving_landmarks: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    flip: bool = False,
    jitter: ColorJitter | None = None,
    prior_grid_size: int | None = None,
    identity: str = "",
    clip_id: str = "",
    prior_grid: torch.Tensor | None = None,
    prior_is_exact: bool = False,
    driving_tensor: torch.Tensor | None = None,
    head_prior: bool = False,
) -> PairSample:
    """Build a :class:`PairSample` from two ``S×S×3`` uint8 crops and their landmarks.

    ``flip`` mirrors both frames (landmarks mirrored with :data:`MIRROR_INDEX`); ``jitter``
    applies the same colour jitter to both (drawn from ``rng``). ``prior_grid`` (and
    ``driving_tensor``) may be given precomputed (synthetic motion); otherwise the grid is the
    mesh warp at ``prior_grid_size`` (``None`` = full size) upsampled to ``S`` — the full-head mesh
    warp of the render path with ``head_prior``.
    """
    from metaportrait.face import draw_landmark_image, five_points

    size = int(source.shape[0])
    if source.shape != (size, size, 3) or driving.shape != source.shape:
        raise ValueError(f"source/driving must be equal S×S×3 crops, got {source.shape} and {driving.shape}")
    src_lm = np.asarray(source_landmarks, np.float32)
    drv_lm = np.asarray(driving_landmarks, np.float32)
    if flip:
        if prior_grid is not None or driving_tensor is not None:
            raise ValueError("flip cannot be combined with a precomputed prior_grid/driving_tensor")
        source = source[:, ::-1]
        driving = driving[:, ::-1]
        src_lm = mirror_landmarks(src_lm, size)
        drv_lm = mirror_landmarks(drv_lm, size)
    src_t = _to_tensor_image(source)
    drv_t = driving_tensor if driving_tensor is not None else _to_tensor_image(driving)
    if jitter is not None:
        if rng is None:
            raise ValueError("jitter needs an rng")
        params = jitter.sample(rng)
        src_t = ColorJitter.apply(src_t, params)
        drv_t = ColorJitter.apply(drv_t, params)
    grid = prior_grid if prior_grid is not None else _prior_grid(src_lm, drv_lm, size, prior_grid_size, head_prior)
    return PairSample(
        source=src_t,
        driving=drv_t,
        source_landmark_image=_to_tensor_image(draw_landmark_image(src_lm, size)),
        driving_landmark_image=_to_tensor_image(draw_landmark_image(drv_lm, size)),
        source_landmarks=torch.from_numpy(src_lm.copy()),
        driving_landmarks=torch.from_numpy(drv_lm.copy()),
        prior_grid=grid,
        source_boxes=_boxes_tensor(src_lm, size),
        driving_boxes=_boxes_tensor(drv_lm, size),
        source_five_points=torch.from_numpy(five_points(src_lm)),
        driving_five_points=torch.from_numpy(five_points(drv_lm)),
        prior_is_exact=torch.tensor(bool(prior_is_exact)),
        identity=identity,
        clip_id=clip_id,
    )


class _Seeded:
    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws of every item (call once per epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), salt])
