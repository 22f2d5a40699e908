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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from metaportrait.tensors import to_tensor
from metaportrait.training.prepared import LANDMARKS_SIZE, SPLITS, PreparedData, frames_file

# Samples and synthetic motion have their own modules; their names are re-exported here.
from metaportrait.training.samples import (
    MIRROR_INDEX,
    ClipSample,
    ColorJitter,
    PairSample,
    _Seeded,
    collate_clips,
    collate_pairs,
    make_pair,
    mirror_landmarks,
)
from metaportrait.training.synthetic_motion import MotionParams, SyntheticMotionDataset, synthetic_landmark_motion

logger = logging.getLogger(__name__)

Split = Literal["train", "heldout_frames", "heldout_identity"]  # the names of prepared.SPLITS


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
        head_prior: the prior grid is the render path's full-head mesh warp (face + hair, ear and
            neck rings) instead of the face mesh alone.
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
        head_prior: bool = False,
    ) -> None:
        self.head_prior = bool(head_prior)
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
            identity=entry.identity, clip_id=entry.id, head_prior=self.head_prior,
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
        head_prior: bool = False,
    ) -> None:
        if frames_per_identity < 1:
            raise ValueError(f"frames_per_identity must be >= 1, got {frames_per_identity!r}")
        self.pairs = PairDataset(data_dir, split, size, augment, prior_grid_size, seed, min_source_side=min_source_side,
                                 head_prior=head_prior)
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


