"""Reading the prepared training-data format (docs/DATA_FORMAT.md), in one place.

``metaportrait prepare-data`` (:mod:`metaportrait.training.prepare`) writes::

    DATA/manifest.json
    DATA/clips/<clip_id>/frames_256.npy     uint8 N×256×256×3
    DATA/clips/<clip_id>/frames_512.npy     uint8 N×512×512×3 (optional)
    DATA/clips/<clip_id>/landmarks_256.npy  float32 N×478×2, pixels of the 256 crop
    DATA/clips/<clip_id>/valid.npy          bool N

Every reader (the training datasets, few-shot training, super-resolution training, the
re-enactment evaluation) goes through this module: it owns the file names, the format string and
its check, and the rules for splits and validity:

* a clip's manifest ``split`` is ``"train"`` or ``"heldout_identity"`` (``"train"`` when absent);
* frames of a ``"train"`` clip from ``heldout_frames_from`` on are held out in time
  (:attr:`ClipInfo.heldout_start`; a missing value holds out nothing); the three evaluation splits
  of a clip's frames are given by :meth:`ClipInfo.split_range`;
* a frame is usable when ``valid.npy`` says so (every frame, for a clip without ``valid.npy``).

Arrays are opened as read-only memory maps (``np.load(..., mmap_mode="r")``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CLIPS_DIR",
    "FORMAT",
    "HELDOUT_FRAMES",
    "HELDOUT_IDENTITY",
    "LANDMARKS_FILE",
    "LANDMARKS_SIZE",
    "MANIFEST_FILE",
    "MANIFEST_SPLITS",
    "SPLITS",
    "TRAIN",
    "VALID_FILE",
    "ClipInfo",
    "PreparedData",
    "check_format",
    "crop_source_side",
    "frames_file",
]

FORMAT = "metaportrait-prepared-v1"
MANIFEST_FILE = "manifest.json"
CLIPS_DIR = "clips"
LANDMARKS_FILE = "landmarks_256.npy"
VALID_FILE = "valid.npy"
LANDMARKS_SIZE = 256  # landmarks are pixel coordinates in the 256 crop

TRAIN = "train"
HELDOUT_IDENTITY = "heldout_identity"
HELDOUT_FRAMES = "heldout_frames"  # not a manifest split: the held-out-in-time frames of "train" clips
MANIFEST_SPLITS: tuple[str, ...] = (TRAIN, HELDOUT_IDENTITY)
SPLITS: tuple[str, ...] = (TRAIN, HELDOUT_FRAMES, HELDOUT_IDENTITY)


def frames_file(size: int = 256) -> str:
    """File name of a clip's frames at ``size`` (``frames_256.npy`` or ``frames_512.npy``)."""
    return f"frames_{int(size)}.npy"


def check_format(manifest: dict, where: str | Path = MANIFEST_FILE) -> None:
    """Raise ``ValueError`` unless ``manifest`` declares the prepared-data :data:`FORMAT`."""
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise ValueError(f"{where}: not a prepared-data manifest: format {found!r}, expected {FORMAT!r}")


def crop_source_side(crop_box: Sequence[float] | None) -> float | None:
    """The shorter side of a manifest ``crop_box`` (x0, y0, x1, y1) in source pixels; None if absent."""
    if crop_box is None:
        return None
    x0, y0, x1, y1 = crop_box
    return float(min(x1 - x0, y1 - y0))


@dataclass(frozen=True)
class ClipInfo:
    """One ``clips`` entry of a manifest (``record`` keeps the entry as written)."""

    index: int  # position in the manifest
    id: str
    identity: str
    num_frames: int
    split: str = TRAIN
    heldout_frames_from: int | None = None
    has_512: bool = False
    crop_box: tuple[float, float, float, float] | None = None
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_record(cls, index: int, rec: dict[str, Any]) -> ClipInfo:
        held = rec.get("heldout_frames_from")
        box = rec.get("crop_box")
        return cls(
            index=index,
            id=str(rec["id"]),
            identity=str(rec.get("identity", "")),
            num_frames=int(rec["num_frames"]),
            split=str(rec.get("split", TRAIN)),
            heldout_frames_from=None if held is None else int(held),
            has_512=bool(rec.get("has_512", False)),
            crop_box=None if box is None else tuple(float(v) for v in box),
            record=dict(rec),
        )

    @property
    def source_side(self) -> float | None:
        """Side of the crop box in source pixels (None when not recorded)."""
        return crop_source_side(self.crop_box)

    def heldout_start(self, num_frames: int | None = None) -> int:
        """First held-out-in-time frame, clamped to ``num_frames`` (default: the manifest's count);
        ``num_frames`` when the manifest gives none."""
        n = self.num_frames if num_frames is None else int(num_frames)
        if self.heldout_frames_from is None:
            return n
        return max(0, min(self.heldout_frames_from, n))

    def split_range(self, split: str, num_frames: int | None = None) -> tuple[int, int] | None:
        """Frame range ``[lo, hi)`` of this clip in ``split`` (one of :data:`SPLITS`), or None when
        the clip is not in it."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        n = self.num_frames if num_frames is None else int(num_frames)
        if split == HELDOUT_IDENTITY:
            return (0, n) if self.split == HELDOUT_IDENTITY else None
        if self.split != TRAIN:
            return None
        start = self.heldout_start(n)
        return (0, start) if split == TRAIN else (start, n)


class PreparedData:
    """A prepared-data folder: its checked manifest and its clips' arrays.

    Raises ``FileNotFoundError`` (naming ``prepare-data``) when there is no manifest and
    ``ValueError`` when its format is not :data:`FORMAT`.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.manifest_path = self.data_dir / MANIFEST_FILE
        if not self.manifest_path.is_file():
            raise FileNotFoundError(f"no {MANIFEST_FILE} in {self.data_dir} (run `metaportrait prepare-data` first)")
        self.manifest: dict[str, Any] = json.loads(self.manifest_path.read_text())
        check_format(self.manifest, self.manifest_path)
        self.clips: list[ClipInfo] = [ClipInfo.from_record(i, r) for i, r in enumerate(self.manifest.get("clips", []))]

    def clips_in(self, split: str) -> Iterator[ClipInfo]:
        """Clips (manifest order) with frames in ``split``: ``"train"`` and ``"heldout_frames"`` give
        the manifest's ``"train"`` clips, ``"heldout_identity"`` its held-out identities."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        wanted = HELDOUT_IDENTITY if split == HELDOUT_IDENTITY else TRAIN
        return (c for c in self.clips if c.split == wanted)

    def clip_dir(self, clip: ClipInfo) -> Path:
        return self.data_dir / CLIPS_DIR / clip.id

    def has_file(self, clip: ClipInfo, name: str) -> bool:
        return (self.clip_dir(clip) / name).is_file()

    def open_array(self, clip: ClipInfo, name: str) -> np.ndarray:
        """A clip's ``.npy`` file as a read-only memory map."""
        return np.load(self.clip_dir(clip) / name, mmap_mode="r")

    def frames(self, clip: ClipInfo, size: int = 256) -> np.ndarray:
        """``N×size×size×3`` uint8 frames (read-only memory map)."""
        return self.open_array(clip, frames_file(size))

    def landmarks(self, clip: ClipInfo) -> np.ndarray:
        """``N×478×2`` float32 landmarks in pixels of the 256 crop (read-only memory map)."""
        return self.open_array(clip, LANDMARKS_FILE)

    def valid(self, clip: ClipInfo, num_frames: int | None = None) -> np.ndarray:
        """Boolean mask of the frames where a face was found (all ``num_frames``, default the
        manifest's count, when the clip has no ``valid.npy``)."""
        path = self.clip_dir(clip) / VALID_FILE
        if path.is_file():
            return np.load(path).astype(bool, copy=False)
        return np.ones(clip.num_frames if num_frames is None else int(num_frames), bool)

    def usable_frames(self, clip: ClipInfo, split: str, num_frames: int | None = None) -> np.ndarray:
        """Indices of ``clip``'s valid frames in ``split`` (empty when the clip is not in it)."""
        r = clip.split_range(split, num_frames)
        if r is None:
            return np.zeros(0, np.int64)
        lo, hi = r
        return (np.flatnonzero(self.valid(clip, num_frames)[lo:hi]) + lo).astype(np.int64)
