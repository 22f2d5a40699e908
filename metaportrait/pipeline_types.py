"""The reenactment pipeline's option, source and result dataclasses (frozen; a new object per request).

:class:`ReenactOptions` and :class:`EditOptions` check their values when built, so a bad request
fails before any work; :class:`SourceFace` is what the pipeline computes once from a source photo;
:class:`ReenactResult` is what ``MetaPortraitPipeline.reenact`` returns. All are re-exported by
:mod:`metaportrait.pipeline`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from metaportrait.face import CropTransform
from metaportrait.face.controls import PARTS
from metaportrait.face.head_mesh import HeadRings

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, stage)``; ``total`` is 0 when unknown."""


def _check_controls(options: object, ranges: dict[str, tuple[float, float]]) -> None:
    """The checks ReenactOptions and EditOptions share: ``size`` one of 256/512/1024 or None, ``eyes``
    and ``lips`` openings in [0, 1.5] or None, and each named field within its range."""
    size = getattr(options, "size")
    if size is not None and size not in (256, 512, 1024):
        raise ValueError(f"size must be 256, 512 or 1024, got {size!r}")
    for name in ("eyes", "lips"):
        v = getattr(options, name)
        if v is not None and not 0 <= v <= 1.5:
            raise ValueError(f"{name} must be in [0, 1.5] or None, got {v!r}")
    for name, (lo, hi) in ranges.items():
        if not lo <= getattr(options, name) <= hi:
            raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {getattr(options, name)!r}")


@dataclass(frozen=True)
class ReenactOptions:
    """Per-request settings (a new object per request; never mutated)."""

    mode: Literal["absolute", "relative"] = "relative"
    paste_back: bool = False
    visible_label: bool = True
    batch_size: int = 8
    max_seconds: float | None = None
    smooth_landmarks: bool = True
    smoothing_min_cutoff: float = 1.5  # Hz (One-Euro filter), face and head
    smoothing_beta: float = 0.075  # per 256-crop pixel/second; scaled to the model's crop size
    eye_min_cutoff: float = 8.0  # Hz: eyelids and irises (a blink lasts 100-150 ms)
    mouth_min_cutoff: float = 4.0  # Hz: lips
    size: int | None = None  # face-crop output side 256|512|1024; None: 512 when the photo has the pixels
    full_head: bool = True  # extend the mesh to hair, ears, neck and background (else face mesh only)
    neutral_mouth: bool = False  # relative mode: expression relative to closed-mouth estimates of both faces
    parts: tuple[str, ...] = ("all",)  # motion parts: all | head | expression | eyes | lips (combinable)
    motion_scale: float = 1.0  # exaggerate (> 1) or damp (< 1) the expression
    pose_scale: float = 1.0  # scale the head pose change
    eyes: float | None = None  # retargeting: hold the eye opening (0 closed … 1 wide open) whatever the driver does
    lips: float | None = None  # retargeting: hold the mouth opening (0 closed … 1 wide open)
    smile: float = 0.0  # retargeting: add a smile (−1 … 1)
    face: int | Literal["all"] | None = None  # which face of the photo: None = the largest, 1.. from the left, "all"
    audio: Literal["driving", "source"] = "driving"  # a video source: whose audio the output keeps
    # render a face with fewer pixels than the SR output (512) at 256² and upscale it with the
    # temporal super-resolution network; a face that has the pixels is rendered at 512² directly
    super_resolution: bool = False

    def __post_init__(self) -> None:
        if self.audio not in ("driving", "source"):
            raise ValueError(f"audio must be 'driving' or 'source', got {self.audio!r}")
        if self.face is not None and self.face != "all" and (
            isinstance(self.face, bool) or not isinstance(self.face, int) or self.face < 1
        ):
            raise ValueError(f"face must be None, 'all' or a number from 1 (the leftmost face), got {self.face!r}")
        if self.face == "all" and not self.paste_back:
            object.__setattr__(self, "paste_back", True)  # several faces live in the whole photo
        if self.super_resolution and self.paste_back:
            raise ValueError("super_resolution upscales the face crop; the whole photo (paste_back, or every face) "
                             "is already drawn at the photo's own resolution")
        if self.super_resolution and self.size not in (None, 512):
            raise ValueError(f"super_resolution gives 512² faces; size must be None or 512, got {self.size!r}")
        object.__setattr__(self, "parts", tuple(self.parts))
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise ValueError(f"parts must be a non-empty combination of {PARTS}, got {self.parts!r}")
        _check_controls(self, ranges={"motion_scale": (0, 3), "pose_scale": (0, 3), "smile": (-1.5, 1.5)})
        for name in ("smoothing_min_cutoff", "eye_min_cutoff", "mouth_min_cutoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.mode not in ("absolute", "relative"):
            raise ValueError(f"mode must be 'absolute' or 'relative', got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")


@dataclass(frozen=True)
class EditOptions:
    """A portrait edit without a driving video (a new object per request). ``None``/0 = unchanged.

    eyes / lips: opening 0 (closed) … 1 (wide open); smile / brows: −1 … 1; yaw / pitch / roll:
    head rotation in degrees (3-D rotation of the landmarks about the head centre); gaze_x / gaze_y:
    −1 … 1 (image left … right, up … down).
    """

    eyes: float | None = None
    lips: float | None = None
    smile: float = 0.0
    brows: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0
    size: int | None = None
    paste_back: bool = False
    visible_label: bool = True
    full_head: bool = True

    def __post_init__(self) -> None:
        _check_controls(self, ranges={"smile": (-1.5, 1.5), "brows": (-1.5, 1.5), "gaze_x": (-1.5, 1.5),
                                      "gaze_y": (-1.5, 1.5), "yaw": (-45, 45), "pitch": (-45, 45),
                                      "roll": (-45, 45)})


@dataclass(frozen=True)
class SourceFace:
    """Everything computed once from the source photo."""

    image: np.ndarray  # the whole photo, uint8 RGB
    crop: CropTransform
    face: np.ndarray  # size×size×3 uint8 crop (the networks' working size)
    landmarks: np.ndarray  # 478×2 in crop pixels
    identity: torch.Tensor  # 1×D embedding
    rings: HeadRings | None = None  # full-head extension (working-size crop pixels)
    triangles: np.ndarray | None = None  # fixed mesh connectivity over landmarks + rings + border
    landmarks_3d: np.ndarray | None = None  # 478×3 in crop pixels (x, y, relative depth), for head rotation
    _faces: dict = field(default_factory=dict, repr=False, compare=False)

    def face_at(self, size: int) -> np.ndarray:
        """The source crop at ``size``² resampled from the photo itself (cached)."""
        if size == self.face.shape[0]:
            return self.face
        if size not in self._faces:
            self._faces[size] = self.crop.rescaled(size).crop(self.image)
        return self._faces[size]


@dataclass(frozen=True)
class ReenactResult:
    output_path: Path
    num_frames: int
    fps: float
    has_audio: bool
    frames_without_face: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def fps_end_to_end(self) -> float:
        total = sum(self.timings.values())
        return self.num_frames / total if total > 0 else float("nan")


VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".flv", ".mpg", ".mpeg", ".wmv")


def is_video_path(source: object) -> bool:
    """Whether a reenactment source names a video file (by its suffix) rather than a photo."""
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() in VIDEO_SUFFIXES
