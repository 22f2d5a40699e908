"""The inputs of data preparation: clips found under a folder (video files or folders of frames,
layouts in :mod:`metaportrait.training.prepare`) and their frames at a chosen frame rate.
Re-exported by :mod:`metaportrait.training.prepare`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaportrait.errors import InvalidImageError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FRAME_FOLDER_FPS = 25.0


# -- discovery ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSource:
    """An input clip: a video file or a folder of frames."""

    id: str
    identity: str
    path: str
    kind: str  # "video" | "frames"


def discover_clips(input_dir: str | Path) -> list[ClipSource]:
    """All clips under ``input_dir`` (layouts in the module docstring), sorted by id.

    Raises ``ValueError`` when ``input_dir`` is not a folder or two inputs would get the same id.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise ValueError(f"input_dir must be a folder, got {str(input_dir)!r}")
    found: dict[str, ClipSource] = {}

    def add(src: ClipSource) -> None:
        if src.id in found:
            raise ValueError(f"two inputs map to clip id {src.id!r}: {found[src.id].path} and {src.path}")
        found[src.id] = src

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        images = [f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
        if images and rel_dir.parts:
            parts = rel_dir.parts
            add(ClipSource(id="/".join(parts), identity=parts[0], path=str(Path(dirpath)), kind="frames"))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            rel = rel_dir / name
            parts = rel.with_suffix("").parts
            identity = parts[0]
            add(ClipSource(id="/".join(parts), identity=identity, path=str(Path(dirpath) / name), kind="video"))
    return [found[k] for k in sorted(found)]


# -- frame sources -----------------------------------------------------------------------------
def _iter_frame_folder(folder: Path, max_frames: int | None) -> Iterator[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if max_frames is not None:
        files = files[:max_frames]
    for p in files:
        try:
            with Image.open(p) as im:
                yield np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidImageError(f"frame {p} is not a decodable image: {e}") from e


def _resample(frames: Iterator[np.ndarray], src_fps: float, dst_fps: float) -> Iterator[np.ndarray]:
    """Nearest-frame resampling in time from ``src_fps`` to ``dst_fps`` (drop or repeat frames)."""
    k = 0
    for i, frame in enumerate(frames):
        # output frame k shows source frame round(k * src / dst)
        while round(k * src_fps / dst_fps) == i:
            yield frame
            k += 1


def _training_limits() -> object:
    """Input limits for data preparation: the app's upload limits do not apply to training data."""
    from metaportrait.io import InputLimits

    return InputLimits(
        max_video_bytes=64 * 2**30, max_video_seconds=24 * 3600.0, max_video_side=8192,
        max_video_frames=10_000_000,
    )


def _open_source(src: ClipSource, max_frames: int | None, fps: float | None) -> tuple[Iterator[np.ndarray], float]:
    """(frame iterator, fps of the frames it yields)."""
    if src.kind == "frames":
        native = DEFAULT_FRAME_FOLDER_FPS if fps is None else float(fps)
        return _iter_frame_folder(Path(src.path), max_frames), native
    if src.kind == "video":
        from metaportrait.video import iter_frames, probe_video

        limits = _training_limits()
        info = probe_video(src.path, limits)
        native = float(info.fps)
        if fps is None or abs(native - fps) / fps < 0.01:
            return iter_frames(src.path, max_frames=max_frames, limits=limits), native
        frames = _resample(iter_frames(src.path, limits=limits), native, float(fps))

        def limited() -> Iterator[np.ndarray]:
            for n, f in enumerate(frames):
                if max_frames is not None and n >= max_frames:
                    return
                yield f

        return limited(), float(fps)
    raise ValueError(f"unknown clip kind {src.kind!r}")
