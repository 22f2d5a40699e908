"""The files data preparation writes (docs/DATA_FORMAT.md): the manifest's records, and arrays
written atomically or streamed to .npy with their length fixed at the end. Re-exported by
:mod:`metaportrait.training.prepare`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from metaportrait.training.prepared import FORMAT, PreparedData, check_format, crop_source_side

_NPY_HEADER_BYTES = 128  # fixed header size of the streamed .npy files (multiple of 64)


# -- records -----------------------------------------------------------------------------------
@dataclass
class ClipRecord:
    """One prepared clip, as listed in ``manifest.json`` (docs/DATA_FORMAT.md)."""

    id: str
    identity: str
    source_file: str
    fps: float
    num_frames: int
    has_512: bool
    split: str = "train"
    heldout_frames_from: int = 0
    num_valid: int = 0
    crop_box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in the source frame

    @property
    def source_side(self) -> float | None:
        """Side of the crop box in source pixels (None when not recorded): below the crop size, the
        prepared frames are upscaled and blurrier than what a camera gives at that size."""
        return crop_source_side(self.crop_box)


@dataclass
class SkippedRecord:
    source_file: str
    reason: str


@dataclass
class Manifest:
    """``manifest.json`` of a prepared folder: clips (with splits), skipped inputs, settings."""

    clips: list[ClipRecord] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    heldout_identities: list[str] = field(default_factory=list)
    heldout_fraction: float = 0.2
    sizes: list[int] = field(default_factory=lambda: [256, 512])
    format: str = FORMAT

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "heldout_identities": list(self.heldout_identities),
            "heldout_fraction": self.heldout_fraction,
            "sizes": list(self.sizes),
            "clips": [asdict(c) for c in self.clips],
            "skipped": [asdict(s) for s in self.skipped],
        }

    def save(self, path: str | Path) -> None:
        _atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        check_format(d)
        clips = []
        for c in d.get("clips", []):
            c = dict(c)
            if c.get("crop_box") is not None:
                c["crop_box"] = tuple(c["crop_box"])
            clips.append(ClipRecord(**c))
        return cls(
            clips=clips,
            skipped=[SkippedRecord(**s) for s in d.get("skipped", [])],
            heldout_identities=list(d.get("heldout_identities", [])),
            heldout_fraction=float(d.get("heldout_fraction", 0.2)),
            sizes=[int(s) for s in d.get("sizes", [256])],
        )

    @classmethod
    def load(cls, data_dir: str | Path) -> Manifest:
        return cls.from_dict(PreparedData(data_dir).manifest)

    @property
    def identities(self) -> list[str]:
        return sorted({c.identity for c in self.clips})


# -- streamed .npy writing -----------------------------------------------------------------------
def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    """A version-1.0 .npy header padded to exactly ``_NPY_HEADER_BYTES`` bytes."""
    d = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, repr(tuple(shape)))
    body_len = _NPY_HEADER_BYTES - 10
    if len(d) + 1 > body_len:
        raise ValueError(f"array shape {shape} too long for a fixed npy header")
    body = d + " " * (body_len - len(d) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


class _NpyStreamWriter:
    """Appends ``frame_shape`` items to a .npy file whose length is known only at the end."""

    def __init__(self, path: Path, frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._f = open(path, "wb")
        self._f.write(_npy_header((0, *self.frame_shape), self.dtype.str))

    def write(self, item: np.ndarray) -> None:
        if item.shape != self.frame_shape or item.dtype != self.dtype:
            raise ValueError(f"expected {self.frame_shape} {self.dtype}, got {item.shape} {item.dtype}")
        self._f.write(np.ascontiguousarray(item).tobytes())
        self.count += 1

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(_npy_header((self.count, *self.frame_shape), self.dtype.str))
        self._f.close()

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
