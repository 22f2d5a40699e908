"""Few-shot training data: the training videos of a prepared-data folder (read through
:mod:`metaportrait.training.prepared`) and the meta-learning episodes drawn from them.
Re-exported by :mod:`metaportrait.training.fewshot`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metaportrait.tensors import to_tensor
from metaportrait.training.prepared import TRAIN, ClipInfo, PreparedData, frames_file


# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Clip:
    id: str
    path: Path
    frames: np.ndarray  # usable frame indices (valid and before heldout_frames_from)
    info: ClipInfo  # the manifest entry


class FewShotVideoData:
    """The training videos of a prepared-data folder (docs/DATA_FORMAT.md), read with memory maps.

    Video index i is the position of a ``split == "train"`` clip among the usable ones (manifest
    order). A clip needs at least 2 usable frames (valid, index < ``heldout_frames_from``); clips
    with fewer are listed in :attr:`skipped`.
    """

    def __init__(self, data_dir: str | Path, image_size: int) -> None:
        self.data_dir = Path(data_dir)
        self.image_size = int(image_size)
        self.prepared = PreparedData(self.data_dir)
        self.clips: list[_Clip] = []
        self.skipped: list[tuple[str, str]] = []
        for rec in self.prepared.clips_in(TRAIN):
            n = int(self.prepared.landmarks(rec).shape[0])
            usable = self.prepared.usable_frames(rec, TRAIN, num_frames=n)
            if usable.size < 2:
                self.skipped.append((rec.id, f"{usable.size} usable frames (need 2)"))
                continue
            self.clips.append(_Clip(id=rec.id, path=self.prepared.clip_dir(rec), frames=usable, info=rec))
        if not self.clips:
            raise ValueError(f"{self.data_dir}: no training clip with at least 2 usable frames")
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:  # worker processes reopen the memory maps
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    @property
    def num_videos(self) -> int:
        return len(self.clips)

    def _open(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._arrays:
            clip = self.clips[i]
            frames = self.prepared.frames(clip.info)
            landmarks = self.prepared.landmarks(clip.info)
            if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2]:
                raise ValueError(f"{clip.path / frames_file(256)}: expected N×S×S×3, got {frames.shape}")
            self._arrays[i] = (frames, landmarks)
        return self._arrays[i]

    def load(self, i: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames and landmark images of video i: two ``N×3×S×S`` tensors in [-1, 1] (S = image_size)."""
        frames, landmarks = self._open(i)
        idx = np.asarray(indices, dtype=np.int64)
        src = frames.shape[1]
        x = to_tensor(np.asarray(frames[idx]))
        s = self.image_size
        if src != s:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
        from metaportrait.face.drawing import draw_landmark_image

        pts = np.asarray(landmarks[idx], dtype=np.float32) * (s / src)
        y = to_tensor(np.stack([draw_landmark_image(p, s) for p in pts]))
        return x, y


@dataclass
class Episode:
    """A meta-learning batch: K frames + landmark images per video and one target frame each.

    ``x_frames``/``y_frames``: ``B×K×3×H×W``; ``x_target``/``y_target``: ``B×3×H×W``;
    ``video_index``: ``B`` (long).
    """

    x_frames: torch.Tensor
    y_frames: torch.Tensor
    x_target: torch.Tensor
    y_target: torch.Tensor
    video_index: torch.Tensor

    def to(self, device: torch.device) -> Episode:
        return Episode(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


class EpisodeDataset(torch.utils.data.Dataset):
    """Item j is the whole episode batch of training step ``start_step + j``.

    The sampling is a pure function of (seed, step, process index), so a resumed run sees
    exactly the episodes an uninterrupted run would have seen, with any number of workers.
    """

    def __init__(self, data: FewShotVideoData, *, batch_size: int, k: int, seed: int, start_step: int, steps: int,
                 process_index: int = 0) -> None:
        self.data = data
        self.batch_size = batch_size
        self.k = k
        self.seed = seed
        self.start_step = start_step
        self.steps = steps
        self.process_index = process_index

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def episode(self, step: int) -> Episode:
        rng = np.random.default_rng([self.seed, step, self.process_index])
        n = self.data.num_videos
        videos = rng.choice(n, size=self.batch_size, replace=self.batch_size > n)
        xs, ys, xt, yt = [], [], [], []
        for i in videos:
            usable = self.data.clips[int(i)].frames
            t = int(rng.integers(usable.size))
            others = np.delete(usable, t)
            chosen = rng.choice(others, size=self.k, replace=self.k > others.size)
            x, y = self.data.load(int(i), [*chosen.tolist(), int(usable[t])])
            xs.append(x[:-1])
            ys.append(y[:-1])
            xt.append(x[-1])
            yt.append(y[-1])
        return Episode(torch.stack(xs), torch.stack(ys), torch.stack(xt), torch.stack(yt),
                       torch.as_tensor(videos, dtype=torch.long))

    def __getitem__(self, j: int) -> Episode:
        if not 0 <= j < len(self):
            raise IndexError(j)
        return self.episode(self.start_step + j)


def _identity_collate(item: Episode) -> Episode:
    return item
