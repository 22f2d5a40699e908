"""Video reading through PyAV: validation, probing and streaming decode of user videos.

* :func:`probe_video` validates an uploaded driving video (container, stream, first decodable
  frame, :class:`~metaportrait.io.InputLimits`) and returns a :class:`VideoInfo`.
* :func:`iter_frames` streams ``uint8`` RGB ``H×W×3`` frames (constant memory), applying the
  container's rotation (phone videos), and fails loudly on truncated or corrupt streams instead
  of silently returning fewer frames.

Demuxers are restricted to :data:`VIDEO_FORMATS` and to local files, so an upload cannot make
FFmpeg follow playlists (HLS/concat) to other files or URLs. Everything here is re-exported by
:mod:`metaportrait.video`, which writes videos.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Union

import av
import numpy as np

from metaportrait.errors import InputTooLargeError, InvalidVideoError
from metaportrait.io import DEFAULT_LIMITS, InputLimits

__all__ = ["VIDEO_FORMATS", "PathLike", "VideoInfo", "iter_frames", "probe_video", "read_frames", "read_metadata"]

PathLike = Union[str, os.PathLike]


#: FFmpeg demuxers accepted for reading (no playlists, images or devices).
VIDEO_FORMATS: tuple[str, ...] = (
    "mov",
    "mp4",
    "m4a",
    "3gp",
    "3g2",
    "mj2",
    "matroska",
    "webm",
    "avi",
    "mpegts",
    "flv",
    "ogg",
    "gif",
)
_OPEN_OPTIONS = {"format_whitelist": ",".join(VIDEO_FORMATS), "protocol_whitelist": "file"}
AUDIO_FORMATS: tuple[str, ...] = VIDEO_FORMATS + ("wav", "mp3", "flac", "aac")
"""Demuxers an audio source may use: a video's or a plain audio file (wav, mp3, m4a, flac, ogg, aac)."""
_AUDIO_OPEN_OPTIONS = {"format_whitelist": ",".join(AUDIO_FORMATS), "protocol_whitelist": "file"}

# A truncated stream may lose this many frames to B-frame reordering/edit lists before
# we call it truncated (only when the container states an exact frame count).
_MISSING_FRAMES_TOLERANCE = 2



@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found.

    Attributes:
        path: the probed file.
        width, height: display size in pixels (after the container's rotation, as
            :func:`iter_frames` yields them).
        fps: average frame rate.
        num_frames: frame count. Exact when the container indexes its frames (MP4/MOV, AVI:
            ``frames_counted`` is True); otherwise estimated as ``round(duration * fps)``
            (Matroska/WebM, MPEG-TS; ``frames_counted`` is False).
        duration: video stream duration in seconds (container duration if the stream has none).
        has_audio: the file has at least one audio stream.
        codec: the video codec's FFmpeg name (``"h264"``, ``"hevc"``, ``"vp9"``, ...).
        rotation: counter-clockwise rotation in degrees applied to decoded frames (0, 90, 180, 270).
        frames_counted: whether ``num_frames`` comes from the container's index.
    """

    path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    has_audio: bool
    codec: str
    rotation: int = 0
    frames_counted: bool = True


def _open_input(path: Path, what: str, options: dict[str, str] = _OPEN_OPTIONS) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", options=options)
    except av.FFmpegError as e:
        raise InvalidVideoError(
            f"'{path}' is not a readable {what} (FFmpeg: {e}). Supported containers: MP4/MOV, "
            f"WebM/MKV, AVI, MPEG-TS, FLV, Ogg, GIF{', WAV, MP3, FLAC, AAC' if options is not _OPEN_OPTIONS else ''}."
        ) from e


def _check_file(path: PathLike, limits: InputLimits) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidVideoError(f"'{p}' does not exist or is not a file.")
    size = p.stat().st_size
    if size == 0:
        raise InvalidVideoError(f"'{p}' is empty (0 bytes); it is not a video.")
    if size > limits.max_video_bytes:
        raise InputTooLargeError(
            f"'{p}' is {size / 2**20:.1f} MiB; the limit for videos is "
            f"{limits.max_video_bytes / 2**20:.1f} MiB."
        )
    return p


def _stream_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0 and math.isfinite(float(rate)):
            return Fraction(rate)
    return None


def _normalise_rotation(degrees: float | int | None) -> int:
    if not degrees:
        return 0
    return int(round(float(degrees) / 90.0)) % 4 * 90


def _rotate(arr: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate counter-clockwise by ``rotation`` degrees (a multiple of 90)."""
    if rotation == 0:
        return arr
    return np.ascontiguousarray(np.rot90(arr, k=rotation // 90))


def _decode_first_frame(container: av.container.InputContainer, path: Path) -> av.VideoFrame:
    try:
        for frame in container.decode(video=0):
            return frame
    except av.FFmpegError as e:
        raise InvalidVideoError(
            f"'{path}' is corrupt: no video frame could be decoded (FFmpeg: {e})."
        ) from e
    raise InvalidVideoError(f"'{path}' has a video stream but no decodable frames.")


def probe_video(path: PathLike, limits: InputLimits = DEFAULT_LIMITS) -> VideoInfo:
    """Validate a video file and describe it; decodes the first frame to prove it is readable.

    Raises:
        InvalidVideoError: missing/empty file, not a video (e.g. text renamed ``.mp4``), corrupt
            or truncated headers, no video stream, no decodable frame.
        InputTooLargeError: file bytes, duration, frame count or resolution over ``limits``;
            the message gives the measured value and the limit.
    """
    p = _check_file(path, limits)
    with _open_input(p, "video") as container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "no streams"
            raise InvalidVideoError(f"'{p}' has no video stream (found: {kinds}).")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise InvalidVideoError(f"'{p}' has a corrupt video header (frame size {width}×{height}).")
        rate = _stream_rate(stream)
        if rate is None:
            raise InvalidVideoError(f"'{p}' does not state a frame rate; re-encode it (e.g. to MP4).")
        fps = float(rate)
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None and container.duration > 0:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        counted = stream.frames > 0
        num_frames = int(stream.frames) if counted else int(round(duration * fps))
        if duration <= 0.0 and num_frames > 0:
            duration = num_frames / fps
        if duration <= 0.0 and num_frames <= 0:
            raise InvalidVideoError(f"'{p}' states neither a duration nor a frame count; it has no frames.")
        if max(width, height) > limits.max_video_side:
            raise InputTooLargeError(
                f"'{p}' is {width}×{height}; the largest side allowed is {limits.max_video_side} "
                "pixels. Downscale the video and try again."
            )
        if duration > limits.max_video_seconds + 0.5 / fps:
            raise InputTooLargeError(
                f"'{p}' is {duration:.2f} s long; the limit is {limits.max_video_seconds:g} s. "
                "Trim the video and try again."
            )
        if num_frames > limits.max_video_frames:
            raise InputTooLargeError(
                f"'{p}' has {num_frames} frames{'' if counted else ' (estimated)'}; the limit is "
                f"{limits.max_video_frames} frames."
            )
        has_audio = len(container.streams.audio) > 0
        codec = ctx.name
        first = _decode_first_frame(container, p)
        rotation = _normalise_rotation(first.rotation)
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        path=p,
        width=width,
        height=height,
        fps=fps,
        num_frames=num_frames,
        duration=duration,
        has_audio=has_audio,
        codec=codec,
        rotation=rotation,
        frames_counted=counted,
    )


def iter_frames(
    path: PathLike, *, max_frames: int | None = None, limits: InputLimits = DEFAULT_LIMITS
) -> Iterator[np.ndarray]:
    """Stream the frames of a video as ``uint8`` RGB ``H×W×3`` arrays (constant memory).

    The file is validated with :func:`probe_video` first (when iteration starts). Frames are
    rotated as the container asks (phone videos) and rescaled to the first frame's size if the
    stream changes resolution midway.

    Args:
        max_frames: stop after this many frames (``None``: all).

    Raises:
        InvalidVideoError: see :func:`probe_video`; also when decoding fails after some frames
            or the stream ends well before the frame count its container states (a truncated
            upload), with the number of frames read in the message.
        InputTooLargeError: see :func:`probe_video`; also if more than
            ``limits.max_video_frames`` frames turn up in a file whose count was estimated.
    """
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 0):
        raise ValueError(f"max_frames must be None or an int >= 0, got {max_frames!r}")
    info = probe_video(path, limits)
    if max_frames == 0:
        return
    p = info.path
    n = 0
    with _open_input(p, "video") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size: tuple[int, int] | None = None
        try:
            for frame in container.decode(stream):
                if size is None:
                    size = (frame.width, frame.height)
                if (frame.width, frame.height) != size:
                    arr = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                else:
                    arr = frame.to_ndarray(format="rgb24")
                n += 1
                if n > limits.max_video_frames:
                    raise InputTooLargeError(
                        f"'{p}' has more than {limits.max_video_frames} frames; the limit is "
                        f"{limits.max_video_frames} frames."
                    )
                yield _rotate(arr, info.rotation)
                if max_frames is not None and n >= max_frames:
                    return
        except av.FFmpegError as e:
            if n == 0:
                raise InvalidVideoError(
                    f"'{p}' is corrupt: no video frame could be decoded (FFmpeg: {e})."
                ) from e
            raise InvalidVideoError(
                f"'{p}' is truncated or corrupt: decoding stopped after {n} of "
                f"{info.num_frames}{'' if info.frames_counted else ' (estimated)'} frames "
                f"(FFmpeg: {e})."
            ) from e
    if n == 0:
        raise InvalidVideoError(f"'{p}' has a video stream but no decodable frames.")
    if info.frames_counted and n < info.num_frames - _MISSING_FRAMES_TOLERANCE:
        raise InvalidVideoError(
            f"'{p}' is truncated or corrupt: decoding stopped after {n} of the "
            f"{info.num_frames} frames its header lists."
        )


def read_frames(
    path: PathLike, max_frames: int | None = None, *, limits: InputLimits = DEFAULT_LIMITS
) -> list[np.ndarray]:
    """All frames (or the first ``max_frames``) of a video as a list; see :func:`iter_frames`."""
    return list(iter_frames(path, max_frames=max_frames, limits=limits))


def read_metadata(path: PathLike) -> dict[str, str]:
    """The container-level metadata of a media file (``title``, ``comment``, ``encoder``, ...)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidVideoError(f"'{p}' does not exist or is not a file.")
    with _open_input(p, "video") as container:
        return {str(k): str(v) for k, v in container.metadata.items()}


def probe_driving(path: PathLike, limits, max_seconds: float | None = None) -> tuple[VideoInfo, object, int]:
    """(info, limits to read it with, frames to use) for a driving video trimmed to its first
    ``max_seconds`` (None: the whole video, refused when over ``limits``). A longer video is trimmed,
    not refused, when ``max_seconds`` is within the limit."""
    import dataclasses

    if max_seconds is not None:
        if max_seconds > limits.max_video_seconds:
            raise InputTooLargeError(f"max_seconds {max_seconds:g} is over the limit of {limits.max_video_seconds:g} s")
        limits = dataclasses.replace(limits, max_video_seconds=float("inf"), max_video_frames=2**62)
    info = probe_video(path, limits)
    frames = info.num_frames
    if max_seconds is not None:
        frames = min(frames, max(1, int(round(max_seconds * info.fps))))
    return info, limits, frames
