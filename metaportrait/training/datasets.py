"""Torch datasets over prepared data (docs/DATA_FORMAT.md) for the training stages of
MetaPortrait (docs/METHOD.md §7 base model, §8 meta-learning, §9 temporal super-resolution).

* :class:`PairDataset` — source/driving frames of the same clip (paper §4: "source and driving
  frames from the same video"), with everything the base objective needs: landmark images
  (METHOD §2.3), the classical mesh-warp prior grid (§4.1), eye/mouth boxes (§2.4, for the eye/mouth
  losses of §7) and the five points for identity alignment (§6.1).
* :class:`IdentityFramesDataset` — one item = a batch of pairs of one identity (Reptile inner
  loop, METHOD §8: 48 images per identity in the paper's recipe).
* :class:`ClipDataset` — ``clip_len`` consecutive frames (super-resolution, METHOD §9: 7 frames).
* :class:`SyntheticMotionDataset` — still portraits animated by landmark-driven synthetic motion
  (head roll/scale/shift/turn, mouth opening, blinks) rendered with the piecewise-affine mesh
  warp. For these pairs the prior grid reproduces the driving frame exactly (``prior_is_exact``),
  so the trainer should weight them accordingly (they teach landmark following, not
  appearance completion).

Conventions: tensors RGB in [-1, 1], ``3×H×W`` per item (a leading ``B`` after
:func:`collate_pairs`); landmarks ``478×2`` float32 pixels of the ``size`` crop; boxes
``(x0, y0, x1, y1)`` pixels; grids ``H×W×2`` in grid_sample coordinates (align_corners=False).

Splits follow the manifest exactly: ``"train"`` = frames ``< heldout_frames_from`` of training
clips, ``"heldout_frames"`` = frames ``>= heldout_frames_from`` of training clips,
``"heldout_identity"`` = every frame of held-out-identity clips. Only frames whose ``valid`` flag
is set are used (except by :class:`ClipDataset`, which needs contiguous frames).

Horizontal flip: images are mirrored, landmark x becomes ``size - x`` and the landmark indices
are permuted with :data:`MIRROR_INDEX` (MediaPipe's mesh is symmetric: index ``i`` of the
mirrored face is ``MIRROR_INDEX[i]`` of the original), so a flipped sample has the same
semantics as an unflipped one — the landmark image keeps one colour per anatomical edge, and
``five_points``/``region_boxes`` stay correct.

Randomness is seeded: an item's draws depend only on ``(seed, epoch, index)``
(:meth:`set_epoch`), so results do not depend on DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from metaportrait.errors import NoFaceError
from metaportrait.tensors import to_tensor, to_uint8
from metaportrait.training.prepared import LANDMARKS_SIZE, SPLITS, PreparedData, frames_file

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout_frames", "heldout_identity"]  # the names of prepared.SPLITS


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


def _prior_grid(src_lm: np.ndarray, drv_lm: np.ndarray, size: int, grid_size: int | None) -> torch.Tensor:
    """Mesh-warp grid ``size×size×2``, computed at ``grid_size`` and upsampled bilinearly."""
    from metaportrait.face import mesh_warp_grid

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
) -> PairSample:
    """Build a :class:`PairSample` from two ``S×S×3`` uint8 crops and their landmarks.

    ``flip`` mirrors both frames (landmarks mirrored with :data:`MIRROR_INDEX`); ``jitter``
    applies the same colour jitter to both (drawn from ``rng``). ``prior_grid`` (and
    ``driving_tensor``) may be given precomputed (synthetic motion); otherwise the grid is the
    mesh warp at ``prior_grid_size`` (``None`` = full size) upsampled to ``S``.
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
    grid = prior_grid if prior_grid is not None else _prior_grid(src_lm, drv_lm, size, prior_grid_size)
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


# -- prepared-data access ------------------------------------------------------------------------
@dataclass
class _ClipEntry:
    index: int  # position in the manifest
    id: str
    identity: str
    frames: np.ndarray  # usable frame indices in this split (valid ones)


class _PreparedData:
    """Manifest + lazily opened memory maps (re-opened per worker process; pickles cheaply)."""

    def __init__(self, data_dir: str | Path, size: int) -> None:
        self.data_dir = Path(data_dir)
        if size not in (256, 512):
            raise ValueError(f"size must be 256 or 512, got {size!r}")
        self.size = size
        self.manifest = PreparedData(self.data_dir)
        if size == 512:
            missing = [c.id for c in self.manifest.clips if not c.has_512]
            if missing:
                raise ValueError(f"size=512 needs {frames_file(512)}; clips without it: {missing[:5]}")
        self._frames: dict[int, np.ndarray] = {}
        self._frames256: dict[int, np.ndarray] = {}
        self._landmarks: dict[int, np.ndarray] = {}
        self._valid: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_frames", "_frames256", "_landmarks", "_valid"):
            state[k] = {}
        return state

    def clip_dir(self, i: int) -> Path:
        return self.manifest.clip_dir(self.manifest.clips[i])

    def frames(self, i: int) -> np.ndarray:
        if i not in self._frames:
            self._frames[i] = self.manifest.frames(self.manifest.clips[i], self.size)
        return self._frames[i]

    def frames256(self, i: int) -> np.ndarray:
        if self.size == 256:
            return self.frames(i)
        if i not in self._frames256:
            self._frames256[i] = self.manifest.frames(self.manifest.clips[i], 256)
        return self._frames256[i]

    def landmarks(self, i: int) -> np.ndarray:
        """``N×478×2`` in pixels of the ``size`` crop."""
        if i not in self._landmarks:
            lm = np.asarray(self.manifest.landmarks(self.manifest.clips[i]), dtype=np.float32)
            self._landmarks[i] = lm * (self.size / float(LANDMARKS_SIZE))
        return self._landmarks[i]

    def valid(self, i: int) -> np.ndarray:
        if i not in self._valid:
            self._valid[i] = self.manifest.valid(self.manifest.clips[i])
        return self._valid[i]

    def split_range(self, i: int, split: str) -> tuple[int, int] | None:
        """Frame range ``[lo, hi)`` of clip ``i`` in ``split``, or None when the clip is not in it."""
        return self.manifest.clips[i].split_range(split)

    def entries(self, split: str, min_frames: int = 2, min_source_side: float = 0) -> list[_ClipEntry]:
        """Clips of ``split`` with at least ``min_frames`` valid frames and, when ``min_source_side`` is
        set, a crop box of at least that many source pixels (clips without a recorded box are left out)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        out = []
        for c in self.manifest.clips_in(split):
            if min_source_side and (c.source_side is None or c.source_side < min_source_side):
                continue
            lo, hi = c.split_range(split)
            idx = np.flatnonzero(self.valid(c.index)[lo:hi]) + lo
            if idx.size >= min_frames:
                out.append(_ClipEntry(c.index, c.id, c.identity, idx.astype(np.int64)))
        return out


class _Seeded:
    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws of every item (call once per epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), salt])


# -- datasets ----------------------------------------------------------------------------------
class PairDataset(_Seeded, Dataset):
    """Same-clip source/driving pairs from prepared data.

    One item per usable driving frame of the split; the source is another valid frame of the
    same clip and split, drawn at random (seeded by ``(seed, epoch, index)``).

    Args:
        data_dir: prepared-data folder (manifest.json).
        split: ``"train"``, ``"heldout_frames"`` or ``"heldout_identity"``.
        size: 256 or 512 (512 needs ``frames_512.npy``).
        augment: random horizontal flip (p=0.5) and small colour jitter, the same for both frames.
        prior_grid_size: resolution of the mesh-warp computation, upsampled to ``size``
            (``None`` = full resolution).
        seed: base seed.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: Split = "train",
        size: int = 256,
        augment: bool = True,
        prior_grid_size: int | None = None,
        seed: int = 0,
        min_source_side: float = 0,
    ) -> None:
        self.data = _PreparedData(data_dir, size)
        self.split = split
        self.size = size
        self.augment = bool(augment)
        self.prior_grid_size = prior_grid_size
        self.seed = int(seed)
        self.jitter = ColorJitter() if augment else None
        self.clips = self.data.entries(split, min_source_side=min_source_side)
        counts = np.array([len(c.frames) for c in self.clips], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        if len(self) == 0:
            logger.warning("PairDataset(%s, split=%r) is empty", data_dir, split)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def identities(self) -> list[str]:
        return sorted({c.identity for c in self.clips})

    def locate(self, index: int) -> tuple[_ClipEntry, int]:
        """(clip entry, driving frame index) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        entry = self.clips[k]
        return entry, int(entry.frames[index - self._offsets[k]])

    def pair(self, entry: _ClipEntry, driving_frame: int, rng: np.random.Generator) -> PairSample:
        """A pair with the given driving frame and a random other source frame of ``entry``."""
        others = entry.frames[entry.frames != driving_frame]
        source_frame = int(rng.choice(others))
        frames = self.data.frames(entry.index)
        lms = self.data.landmarks(entry.index)
        flip = bool(self.augment and rng.random() < 0.5)
        return make_pair(
            np.array(frames[source_frame]), np.array(frames[driving_frame]),
            lms[source_frame], lms[driving_frame],
            rng=rng, flip=flip, jitter=self.jitter, prior_grid_size=self.prior_grid_size,
            identity=entry.identity, clip_id=entry.id,
        )

    def __getitem__(self, index: int) -> PairSample:
        entry, d = self.locate(index)
        return self.pair(entry, d, self._rng(index))


class IdentityFramesDataset(_Seeded, Dataset):
    """One item = ``frames_per_identity`` same-clip pairs of one identity, batched (Reptile, METHOD §8).

    Clips of the identity are drawn in proportion to their usable frames; each pair's source and
    driving come from the same clip. Items are batched :class:`PairSample` s (``B =
    frames_per_identity``); use ``DataLoader(..., batch_size=None)``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        frames_per_identity: int = 48,
        split: Split = "train",
        size: int = 256,
        augment: bool = True,
        prior_grid_size: int | None = None,
        seed: int = 0,
        min_source_side: float = 0,
    ) -> None:
        if frames_per_identity < 1:
            raise ValueError(f"frames_per_identity must be >= 1, got {frames_per_identity!r}")
        self.pairs = PairDataset(data_dir, split, size, augment, prior_grid_size, seed, min_source_side=min_source_side)
        self.frames_per_identity = int(frames_per_identity)
        self.seed = int(seed)
        by_id: dict[str, list[_ClipEntry]] = {}
        for c in self.pairs.clips:
            by_id.setdefault(c.identity, []).append(c)
        self.identities = sorted(by_id)
        self._clips = [by_id[i] for i in self.identities]

    def __len__(self) -> int:
        return len(self.identities)

    def __getitem__(self, index: int) -> PairSample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} identities")
        rng = self._rng(index)
        clips = self._clips[index]
        weights = np.array([len(c.frames) for c in clips], np.float64)
        picks = rng.choice(len(clips), size=self.frames_per_identity, p=weights / weights.sum())
        items = []
        for k in picks:
            entry = clips[int(k)]
            d = int(rng.choice(entry.frames))
            items.append(self.pairs.pair(entry, d, rng))
        return collate_pairs(items)


class ClipDataset(_Seeded, Dataset):
    """Windows of ``clip_len`` consecutive frames (temporal super-resolution, MetaPortrait §3.3).

    Every window lies inside one clip's split range; ``stride`` spaces the window starts.
    ``augment`` flips the whole window horizontally with p=0.5.
    """

    def __init__(
        self,
        data_dir: str | Path,
        clip_len: int = 7,
        size: int = 512,
        split: Split = "train",
        stride: int = 1,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        if clip_len < 1 or stride < 1:
            raise ValueError(f"clip_len and stride must be >= 1, got {clip_len!r}, {stride!r}")
        self.data = _PreparedData(data_dir, size)
        self.clip_len, self.size, self.split = int(clip_len), size, split
        self.augment, self.seed = bool(augment), int(seed)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.windows: list[tuple[int, int]] = []
        for i in range(len(self.data.manifest.clips)):
            r = self.data.split_range(i, split)
            if r is None:
                continue
            lo, hi = r
            self.windows += [(i, s) for s in range(lo, hi - self.clip_len + 1, stride)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> ClipSample:
        i, start = self.windows[index]
        sl = slice(start, start + self.clip_len)
        frames = np.array(self.data.frames(i)[sl])
        frames256 = np.array(self.data.frames256(i)[sl])
        lms = self.data.landmarks(i)[sl].copy()
        valid = np.asarray(self.data.valid(i)[sl]).copy()
        if self.augment and self._rng(index).random() < 0.5:
            frames, frames256 = frames[:, :, ::-1], frames256[:, :, ::-1]
            lms = np.stack([mirror_landmarks(lm, self.size) for lm in lms])
        return ClipSample(
            frames=to_tensor(frames), frames_256=to_tensor(frames256), landmarks=torch.from_numpy(lms),
            valid=torch.from_numpy(valid), clip_id=self.data.manifest.clips[i].id, start=start,
        )


# -- synthetic motion ------------------------------------------------------------------------------
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
        from metaportrait.training.prepare import IMAGE_EXTENSIONS

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
