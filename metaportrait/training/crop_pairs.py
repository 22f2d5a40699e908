"""Cached training pairs of the crop networks (mouth interior, eyelids): what both datasets share.

A cache folder holds one ``<split>__<clip>.npz`` per clip, each array a stack of rows: uint8 crops
``warped``, ``source`` and ``target`` a few pixels larger than the training crop (room for a random
shift) plus the feature's contour points. :class:`CropPairs` loads a split, draws the random shift
and the colour jitter shared by the three crops; each network's dataset rasterises its own
condition and mask in :meth:`CropPairs.sample`.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import torch


class CropPairs(torch.utils.data.Dataset, abc.ABC):
    """Rows of one split of a crop-network cache; ``width`` is the feature's width in crop pixels
    (mouth or eye corners apart). Subclasses implement :meth:`sample`."""

    what = "crop"  # named in errors: "no <what> pairs"

    def __init__(self, arrays: dict[str, np.ndarray], crop_size: int, width: float, augment: bool) -> None:
        if not len(arrays.get("target", ())):
            raise ValueError(f"no {self.what} pairs")
        self.arrays = arrays
        self.crop_size, self.width, self.augment = crop_size, float(width), augment
        self.files: list[Path] = []

    @classmethod
    def from_cache(cls, cache_dir: str | Path, split: str, crop_size: int, width: float, augment: bool):
        files = sorted(Path(cache_dir).expanduser().glob(f"{split}__*.npz"))
        if not files:
            raise FileNotFoundError(f"no {split} {cls.what} pairs in {cache_dir} (run build_cache first)")
        parts = [dict(np.load(f)) for f in files]
        out = cls({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, crop_size, width, augment)
        out.files = files
        return out

    def __len__(self) -> int:
        return len(self.arrays["target"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.sample(i, np.random.default_rng() if self.augment else np.random.default_rng(i))

    @abc.abstractmethod
    def sample(self, i: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Row ``i``, augmented with draws from ``rng`` when ``augment``: the crops, the network's
        condition raster and mask as tensors."""

    def crops(self, i: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """Row ``i``'s ``warped``, ``source``, ``target`` crops (float32 ``S×S×3``) cut at a random
        shift when ``augment`` (else centred), and that shift ``(ox, oy)`` to subtract from points."""
        a = self.arrays
        s = self.crop_size
        stored = a["target"].shape[1]
        ox, oy = (rng.integers(0, stored - s + 1, 2) if self.augment else ((stored - s) // 2,) * 2)
        ims = [a[k][i][oy:oy + s, ox:ox + s].astype(np.float32) for k in ("warped", "source", "target")]
        return ims, np.array([ox, oy], np.float64)

    def jitter(self, ims: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Brightness, contrast and saturation drawn once and applied to every crop (when ``augment``)."""
        if not self.augment:
            return ims
        gain, bias, sat = rng.uniform(0.8, 1.2), rng.uniform(-15, 15), rng.uniform(0.7, 1.3)
        out = []
        for im in ims:
            grey = im.mean(axis=2, keepdims=True)
            im = (grey + sat * (im - grey) - 128.0) * gain + 128.0 + bias
            out.append(np.clip(im, 0, 255))
        return out

    @staticmethod
    def tensors(ims: list[np.ndarray]) -> list[torch.Tensor]:
        """Crops as ``3×S×S`` tensors in [-1, 1]."""
        return [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) / 127.5 - 1.0 for im in ims]


__all__ = ["CropPairs"]
