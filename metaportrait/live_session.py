"""Live reenactment: one camera frame in, one output frame out (``MetaPortraitPipeline.live``).
Re-exported by :mod:`metaportrait.pipeline`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from metaportrait.face import transfer_landmarks
from metaportrait.pipeline_types import ReenactOptions, SourceFace
from metaportrait.render import draw, output_size
from metaportrait.tracking import LandmarkTracker
from metaportrait.video import add_visible_label


class MotionModel(Protocol):
    """What a live session needs of the pipeline (``MetaPortraitPipeline`` is one)."""

    size: int

    def control(self, source: SourceFace, target: np.ndarray, options: ReenactOptions) -> np.ndarray: ...

    def motion(self, source: SourceFace, driving_landmarks: Sequence[np.ndarray],
               full_head: bool = True) -> tuple[np.ndarray, np.ndarray | None]: ...


class LiveSession:
    """Live reenactment, one camera frame in, one output frame out (``pipe.live(source)``).

    The first frame with a face (or the next one after :meth:`calibrate`) is the driver's reference
    (neutral) pose; motion parts, scales and retargeting of ``options`` apply per frame. Timestamps
    passed to ``__call__`` drive the smoothing; a caller that falls behind should drop stale camera
    frames rather than queue them (``metaportrait live`` does), so latency stays flat.
    """

    def __init__(self, pipe: MotionModel, source: SourceFace, options: ReenactOptions) -> None:
        self.pipe, self.source, self.options = pipe, source, options
        self.tracker = LandmarkTracker(pipe.size, options)
        self.reference: np.ndarray | None = None
        self.size = output_size(source.crop, options.size, pipe.size)
        self.frames = 0
        self.seconds = 0.0
        self._t0 = time.perf_counter()

    def calibrate(self) -> None:
        """The next frame with a face becomes the reference (neutral) pose of the driver."""
        self.reference = None

    def set_controls(self, options: ReenactOptions) -> None:
        """Change the motion parts, scales and retargeting mid-stream (the tracking state is kept)."""
        self.options = options

    def __call__(self, frame: np.ndarray, t: float | None = None) -> np.ndarray:
        start = time.perf_counter()
        t = start - self._t0 if t is None else t
        lm = self.tracker.update(frame, t)
        if lm is None:
            out = self.source.image if self.options.paste_back else self.source.face_at(self.size)
        else:
            if self.reference is None:
                self.reference = lm
            target = transfer_landmarks(self.source.landmarks, lm, self.reference, mode=self.options.mode,
                                        neutral_mouth=self.options.neutral_mouth)
            target = self.pipe.control(self.source, target, self.options)
            grids, residuals = self.pipe.motion(self.source, [target], self.options.full_head)
            out = draw(self.source, grids[0], None if residuals is None else residuals[0], self.options.paste_back,
                       self.size, target=target, mouth=self.pipe.mouth, eyes=self.pipe.eyes)
        if self.options.visible_label:
            out = add_visible_label(out)
        self.frames += 1
        self.seconds += time.perf_counter() - start
        return out

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.seconds / max(self.frames, 1)

    def close(self) -> None:
        self.tracker.close()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
