"""Dubbing: a source *video* whose face takes a driver's mouth and eye motion while its own head
motion and background stay (``MetaPortraitPipeline.reenact`` with a video source). The relative
motion transfer of MetaPortrait §3.1 applied per source frame, each frame its own source.

The pipeline's methods ``animate_video_source`` and ``reenact`` (for a video source) call these
functions; they use the pipeline only through :class:`DubbingModel`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from metaportrait.errors import NoFaceError
from metaportrait.face import CropTransform, transfer_landmarks
from metaportrait.face.controls import apply_parts
from metaportrait.face.head_mesh import head_rig, silhouette_factors
from metaportrait.face.segmentation import person_mask
from metaportrait.io import InputLimits
from metaportrait.live_session import MotionModel
from metaportrait.pipeline_types import ProgressCallback, ReenactOptions, ReenactResult, SourceFace
from metaportrait.render import draw
from metaportrait.video import VideoWriter, add_visible_label, iter_frames, probe_video, write_frames


class DubbingModel(MotionModel, Protocol):
    """What dubbing needs of the pipeline (``MetaPortraitPipeline`` is one)."""

    def driving_landmarks(self, frames: Iterable[np.ndarray], options: ReenactOptions, stats: dict[str, float],
                          fps: float = 25.0) -> Iterator[tuple[np.ndarray, np.ndarray | None]]: ...

    def track(self, frames: Iterable[np.ndarray], options: ReenactOptions, stats: dict[str, float],
              fps: float = 25.0) -> Iterator[tuple[np.ndarray, np.ndarray | None, CropTransform | None]]: ...

    def source_from_crop(self, face: np.ndarray, landmarks: np.ndarray, *, image: np.ndarray | None = None,
                         crop: CropTransform | None = None, landmarks_3d: np.ndarray | None = None) -> SourceFace: ...

    def animate_video_source(self, source_frames: Iterable[np.ndarray], driving_frames: Iterable[np.ndarray],
                             options: ReenactOptions = ReenactOptions(), stats: dict[str, float] | None = None,
                             fps: float = 25.0) -> Iterator[np.ndarray]: ...


def animate_video_source(pipe: DubbingModel, source_frames: Iterable[np.ndarray], driving_frames: Iterable[np.ndarray],
                         options: ReenactOptions, stats: dict[str, float] | None, fps: float) -> Iterator[np.ndarray]:
    """``MetaPortraitPipeline.animate_video_source`` (see its docstring)."""
    stats = {} if stats is None else stats
    # the head pose always comes from the source video; of the driver's motion, by default the mouth
    # and eyes (dubbing: a driver's turn, seen in 2-D, would squeeze the source's face)
    parts = tuple(p for p in options.parts if p not in ("all", "head")) or ("lips",)
    driver = pipe.driving_landmarks(driving_frames, options, stats, fps=fps)
    drv_ref: np.ndarray | None = None
    drv_last: np.ndarray | None = None
    base: SourceFace | None = None
    silhouette = None
    for frame, lm, crop in pipe.track(source_frames, options, stats, fps):
        nxt = next(driver, None)
        if nxt is not None and nxt[1] is not None:
            drv_last = nxt[1]
            drv_ref = drv_last if drv_ref is None else drv_ref
        t0 = time.perf_counter()
        if lm is None or drv_last is None:
            out = frame
        else:
            face = crop.crop(frame)
            if base is None:  # identity and head silhouette from the first frame with a face
                base = pipe.source_from_crop(face, lm, image=frame, crop=crop)
                silhouette = silhouette_factors(lm, person_mask(face))
            rings, triangles = head_rig(lm, pipe.size, silhouette)
            src = SourceFace(image=frame, crop=crop, face=face, landmarks=lm, identity=base.identity,
                             rings=rings, triangles=triangles)
            # this frame's own face, its mouth (made neutral first: the source's own speech is
            # replaced) and eyes moved by the driver's change since its first frame
            moved = transfer_landmarks(lm, drv_last, drv_ref, mode="relative", neutral_mouth=True)
            target = apply_parts(lm, moved, parts, options.motion_scale)
            target = pipe.control(src, target, dataclasses.replace(options, parts=("all",), motion_scale=1.0,
                                                                   pose_scale=1.0))
            t1 = time.perf_counter()
            grids, residuals = pipe.motion(src, [target], options.full_head)
            spent = time.perf_counter() - t1
            stats["generation"] = stats.get("generation", 0.0) + spent
            t0 += spent  # "render" below counts the rest: rings, triangulation, sampling, label
            out = draw(src, grids[0], None if residuals is None else residuals[0], True, pipe.size, target=target,
                       mouth=pipe.mouth, eyes=pipe.eyes)
        if options.visible_label:
            out = add_visible_label(out)
        stats["render"] = stats.get("render", 0.0) + time.perf_counter() - t0
        yield out
    if base is None:
        raise NoFaceError("no face was found in any frame of the source video")


def reenact_video_source(pipe: DubbingModel, source: Path, driving, output: Path, options: ReenactOptions,
                         limits: InputLimits, progress: ProgressCallback | None) -> ReenactResult:
    """``reenact`` with a video as the source: the output has the source video's frames, size and
    frame rate, and the audio of ``options.audio`` ("driving" or "source")."""
    src_info = probe_video(source, limits)
    n = src_info.num_frames
    if options.max_seconds is not None:
        n = min(n, max(1, int(round(options.max_seconds * src_info.fps))))
    audio = {"driving": driving, "source": source}[options.audio]
    has_audio = probe_video(audio, limits).has_audio
    stats: dict[str, float] = {}
    if progress:
        progress(0, n, "frames")
    with VideoWriter(output, fps=src_info.fps, audio_from=audio if has_audio else None,
                     metadata={"title": "metaportrait reenactment (video source)", "source_mode": "video"}) as writer:
        frames = pipe.animate_video_source(iter_frames(source, max_frames=n, limits=limits),
                                           iter_frames(driving, limits=limits), options, stats, fps=src_info.fps)
        written = write_frames(writer, frames, stats, progress, n)
    return ReenactResult(output_path=output, num_frames=written, fps=src_info.fps, has_audio=has_audio,
                         frames_without_face=0, timings=stats)
