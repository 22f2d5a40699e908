"""Video input/output through PyAV (the pipeline's video reading, encoding and "AI-generated" labelling).

* :func:`probe_video`, :func:`iter_frames` and the other readers live in
  :mod:`metaportrait.video_reader` (validated, streaming decode) and are re-exported here.
* :class:`VideoWriter` streams frames into H.264/yuv420p MP4 with ``+faststart`` (plays and
  streams in browsers; OpenCV cannot write H.264 here), optionally with the driving clip's
  audio re-encoded to AAC and trimmed to the video, always tagged
  ``comment = "AI-generated with metaportrait"``, written to a temporary file and renamed
  atomically so that no partial output is ever left behind.
* :func:`add_visible_label` burns a visible "AI-generated" label into a frame.

Demuxers are restricted to :data:`VIDEO_FORMATS` and to local files, so an upload cannot make
FFmpeg follow playlists (HLS/concat) to other files or URLs.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from metaportrait.errors import InvalidVideoError
from metaportrait.io import DEFAULT_LIMITS, InputLimits

# Reading lives in its own module; its names are re-exported here, where they have always been
# imported from.
from metaportrait.video_reader import (
    VIDEO_FORMATS,
    PathLike,
    VideoInfo,
    AUDIO_FORMATS,
    _AUDIO_OPEN_OPTIONS,
    _open_input,
    iter_frames,
    probe_video,
    read_frames,
    read_metadata,
)

__all__ = [
    "AI_GENERATED_COMMENT",
    "VIDEO_FORMATS",
    "VideoInfo",
    "VideoWriter",
    "add_visible_label",
    "iter_frames",
    "probe_video",
    "read_frames",
    "read_metadata",
    "write_frames",
]

#: The provenance tag every written video carries in its ``comment`` metadata.
AI_GENERATED_COMMENT = "AI-generated with metaportrait"

# Metadata keys the MP4 muxer writes as standard iTunes tags; any other key switches the muxer
# to QuickTime "mdta" keys so that it is kept rather than silently dropped.
_ILST_KEYS = frozenset(
    {
        "title",
        "artist",
        "album_artist",
        "album",
        "composer",
        "date",
        "comment",
        "genre",
        "copyright",
        "description",
        "synopsis",
        "show",
        "episode_id",
        "network",
        "lyrics",
        "grouping",
    }
)
_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
def _fps_to_rate(fps: float | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)):
        raise ValueError(f"fps must be a number, got {fps!r}")
    if not math.isfinite(float(fps)) or not 0 < float(fps) <= 1000:
        raise ValueError(f"fps must be in (0, 1000], got {fps!r}")
    if isinstance(fps, Fraction):
        return fps
    # 29.97002997 -> 30000/1001, 25.0 -> 25, 12.5 -> 25/2
    return Fraction(fps).limit_denominator(1001)


class _AudioTrack:
    """Decodes the source's first audio stream and encodes it as AAC in step with the video.

    Samples are produced lazily (:meth:`advance` up to a time), so memory stays constant and
    audio interleaves with video in the output. The audio keeps its offset from the source's
    video stream (silence is inserted / samples are dropped) and is cut at the video's end.
    """

    def __init__(self, src: Path, output: av.container.OutputContainer) -> None:
        self.src_path = src
        self.input = _open_input(src, "audio source", _AUDIO_OPEN_OPTIONS)
        try:
            in_stream = self.input.streams.audio[0]
            in_ctx = in_stream.codec_context
            channels = in_ctx.channels or 1
            self.layout = "mono" if channels == 1 else "stereo"
            src_rate = int(in_ctx.sample_rate or 48000)
            self.rate = src_rate if src_rate in _AAC_RATES else 48000
            self.stream = output.add_stream("aac", rate=self.rate, layout=self.layout)
            self.stream.codec_context.bit_rate = 96_000 if channels == 1 else 160_000
            self.stream.codec_context.format = "fltp"
            self.resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
            self.fifo = av.AudioFifo()
            self.frames = self.input.decode(in_stream)
            self.output = output
            self.emitted = 0  # samples encoded so far
            self.exhausted = False
            offset = 0.0
            if in_stream.start_time is not None and self.input.streams.video:
                vs = self.input.streams.video[0]
                v_start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
                offset = float(in_stream.start_time * in_stream.time_base) - v_start
            self.skip = max(0, int(round(-offset * self.rate)))
            lead = int(round(offset * self.rate))
            if lead > 0:
                self.fifo.write(self._silence(lead))
        except BaseException:
            self.input.close()
            raise

    def _silence(self, samples: int) -> av.AudioFrame:
        channels = 1 if self.layout == "mono" else 2
        frame = av.AudioFrame.from_ndarray(
            np.zeros((channels, samples), dtype=np.float32), format="fltp", layout=self.layout
        )
        frame.sample_rate = self.rate
        return frame

    def _pull(self) -> bool:
        """Decode one more source frame into the FIFO; False once the source is exhausted."""
        if self.exhausted:
            return False
        try:
            frame = next(self.frames)
        except StopIteration:
            frame = None
        except av.FFmpegError as e:
            raise InvalidVideoError(f"the audio of '{self.src_path}' is corrupt (FFmpeg: {e}).") from e
        out_frames = self.resampler.resample(frame)
        if frame is None:
            self.exhausted = True
        for f in out_frames:
            f.pts = None
            self.fifo.write(f)
        if self.skip and self.fifo.samples:
            drop = min(self.skip, self.fifo.samples)
            self.fifo.read(drop)
            self.skip -= drop
        return not self.exhausted or self.fifo.samples > 0

    def _encode(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            frame.pts = self.emitted
            frame.time_base = Fraction(1, self.rate)
            frame.sample_rate = self.rate
            self.emitted += frame.samples
        for packet in self.stream.encode(frame):
            self.output.mux(packet)

    def advance(self, seconds: float, final: bool = False) -> None:
        """Encode audio up to ``seconds`` (whole AAC frames unless ``final``)."""
        target = int(round(seconds * self.rate))
        chunk = self.stream.codec_context.frame_size or 1024
        while True:
            wanted = target - self.emitted
            if wanted <= 0:
                break
            if wanted < chunk and not final:
                break
            need = min(chunk, wanted)
            while self.fifo.samples < need and not self.exhausted:
                self._pull()
            if self.fifo.samples == 0:
                break
            take = min(need, self.fifo.samples)
            frame = self.fifo.read(take)
            if frame is None:
                break
            self._encode(frame)
        if final:
            self._encode(None)

    def close(self) -> None:
        self.input.close()


def _probe_audio(path: PathLike) -> Path | None:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidVideoError(f"audio_from '{p}' does not exist or is not a file.")
    with _open_input(p, "audio source", _AUDIO_OPEN_OPTIONS) as c:
        return p if c.streams.audio else None


_BROWSER_CODECS = {("mp4", "h264"), ("mov", "h264"), ("webm", "vp8"), ("webm", "vp9"), ("ogg", "theora")}


def browser_playable(path: PathLike) -> bool:
    """Whether a browser's ``<video>`` element can play the file (MP4/H.264, WebM/VP8-9, Ogg/Theora)."""
    try:
        with av.open(str(path)) as c:
            formats = set(c.format.name.split(","))
            codec = c.streams.video[0].codec_context.name if c.streams.video else ""
    except (av.error.FFmpegError, OSError, IndexError):
        return False
    return any(fmt in formats and codec == want for fmt, want in _BROWSER_CODECS)


def transcode_for_browser(path: PathLike, output: PathLike, limits: InputLimits = DEFAULT_LIMITS) -> Path:
    """Re-encode a video the browser cannot play (FLV, AVI, MPEG-4 Part 2, …) to H.264 MP4, keeping
    its frame rate and audio (validated against ``limits`` like any driving video)."""
    info = probe_video(path, limits)
    with VideoWriter(output, fps=info.fps, audio_from=path if info.has_audio else None, crf=20, preset="veryfast") as w:
        for frame in iter_frames(path, limits=limits):
            w.write(frame)
    return Path(output)


def check_output_path(path: PathLike, suffixes: tuple[str, ...] | None = None, *, kind: str = "file") -> Path:
    """Validate an output path before any work is done; create its missing parent folders.

    ``kind="file"``: the path must not be a directory and its suffix must be one of ``suffixes``
    (default: the video suffixes :class:`VideoWriter` writes); an existing file is overwritten.
    ``kind="folder"``: the path must not be an existing file. Raises
    :class:`~metaportrait.errors.OutputPathError` with one line saying what to change.
    """
    from metaportrait.errors import OutputPathError

    p = Path(path).expanduser()
    if kind == "file":
        allowed = tuple(suffixes) if suffixes is not None else tuple(sorted(_OUTPUT_FORMATS))
        if p.is_dir():
            raise OutputPathError(f"the output '{p}' is an existing folder; give a file name ending in one of {list(allowed)}")
        if p.suffix.lower() not in allowed:
            raise OutputPathError(
                f"the output '{p}' has the suffix {p.suffix or '(none)'!r}; use one of {list(allowed)}"
            )
    elif kind == "folder":
        if p.exists() and not p.is_dir():
            raise OutputPathError(f"the output folder '{p}' is an existing file; give a folder path")
    else:
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    parent = p.parent if kind == "file" else p
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the folder '{parent}' for the output: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"the folder '{parent}' is not writable")
    return p


class VideoWriter:
    """Stream ``uint8`` RGB frames into a browser-playable H.264 MP4, atomically.

    ``VideoWriter(path, fps, *, size=None, audio_from=None, metadata=None, crf=18)``; use as a
    context manager and call :meth:`write` per frame.

    * ``size`` is ``(width, height)``; when ``None`` the first frame fixes it. Every frame must
      match it (``ValueError`` otherwise). yuv420p needs even sides: an odd width/height is
      padded by one replicated pixel column/row on the right/bottom (deterministic, nothing is
      resampled), so the output is ``(w + w % 2) × (h + h % 2)``.
    * Encoding: libx264, yuv420p, BT.709 (limited range) tagged, ``crf`` (0-51, 18 default),
      ``preset`` (``"medium"``), MP4 with ``+faststart``. The suffix picks MP4 (``.mp4``/``.m4v``)
      or QuickTime (``.mov``).
    * ``audio_from``: a media file; if it has an audio stream, that audio is re-encoded to AAC,
      kept in sync with the source's video start and trimmed to this video's duration
      (``frames / fps``). A file without audio adds none.
    * ``metadata``: extra container tags (``title``, ...). ``comment`` always contains
      :data:`AI_GENERATED_COMMENT` (a caller's comment is appended after it); this cannot be
      turned off. Keys other than the standard MP4 tags are written as QuickTime metadata keys.
    * The output is written to a hidden temporary file beside ``path`` and renamed over it only
      when :meth:`close` succeeds; an exception inside the ``with`` block, in :meth:`write` or
      while finalising removes the temporary file and leaves no output.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float | Fraction,
        *,
        size: tuple[int, int] | None = None,
        audio_from: PathLike | None = None,
        metadata: dict[str, str] | None = None,
        crf: int = 18,
        preset: str = "medium",
    ) -> None:
        self.path = Path(path).expanduser()
        suffix = self.path.suffix.lower()
        if suffix not in _OUTPUT_FORMATS:
            raise ValueError(
                f"VideoWriter: unsupported output suffix {self.path.suffix!r} in '{self.path}'; use "
                f"one of {sorted(_OUTPUT_FORMATS)}"
            )
        self._format = _OUTPUT_FORMATS[suffix]
        if not self.path.parent.is_dir():
            raise ValueError(f"VideoWriter: the folder '{self.path.parent}' does not exist")
        if self.path.is_dir():
            raise ValueError(f"VideoWriter: '{self.path}' is an existing folder")
        self.rate = _fps_to_rate(fps)
        self.fps = float(self.rate)
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an int in [0, 51], got {crf!r}")
        self.crf = crf
        if not isinstance(preset, str) or not preset:
            raise ValueError(f"preset must be an x264 preset name, got {preset!r}")
        self.preset = preset
        self.size: tuple[int, int] | None = None
        if size is not None:
            if (
                not isinstance(size, (tuple, list))
                or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            ):
                raise ValueError(f"size must be (width, height) positive ints, got {size!r}")
            self.size = (int(size[0]), int(size[1]))
        self.metadata = self._build_metadata(metadata)
        self._audio_src = _probe_audio(audio_from) if audio_from is not None else None
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.part")
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._audio: _AudioTrack | None = None
        self.frames_written = 0
        self._closed = False

    @staticmethod
    def _build_metadata(extra: dict[str, str] | None) -> dict[str, str]:
        meta: dict[str, str] = {}
        for key, value in (extra or {}).items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise ValueError(f"metadata must map non-empty str keys to str values, got {key!r}: {value!r}")
            meta[key.lower()] = value
        user_comment = meta.pop("comment", "").strip()
        if user_comment.startswith(AI_GENERATED_COMMENT):
            user_comment = user_comment[len(AI_GENERATED_COMMENT) :].lstrip(" .;")
        meta["comment"] = AI_GENERATED_COMMENT + (f". {user_comment}" if user_comment else "")
        return meta

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return None
        self.close()
        return None

    # -- writing ---------------------------------------------------------------------------
    def _open(self, width: int, height: int) -> None:
        movflags = "+faststart"
        if any(k not in _ILST_KEYS for k in self.metadata):
            movflags += "+use_metadata_tags"
        container = av.open(str(self._tmp), mode="w", format=self._format, options={"movflags": movflags})
        self._container = container
        for key, value in self.metadata.items():
            container.metadata[key] = value
        stream = container.add_stream("libx264", rate=self.rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.rate
        stream.codec_context.color_range = av.video.reformatter.ColorRange.MPEG
        stream.codec_context.colorspace = av.video.reformatter.Colorspace.ITU709
        stream.codec_context.color_primaries = av.video.reformatter.ColorPrimaries.BT709
        stream.codec_context.color_trc = av.video.reformatter.ColorTrc.BT709
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        self._stream = stream
        if self._audio_src is not None:
            self._audio = _AudioTrack(self._audio_src, container)

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            desc = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"VideoWriter.write expects a uint8 H×W×3 RGB array, got {desc}")
        h, w = frame.shape[:2]
        if self.size is None:
            self.size = (w, h)
        elif (w, h) != self.size:
            raise ValueError(
                f"VideoWriter: frame {self.frames_written} is {w}×{h} but the video is "
                f"{self.size[0]}×{self.size[1]} (width×height)"
            )
        if w % 2 or h % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        return np.ascontiguousarray(frame)

    def write(self, frame: np.ndarray) -> None:
        """Encode one ``uint8`` RGB ``H×W×3`` frame."""
        if self._closed:
            raise ValueError("VideoWriter: write() after close()")
        try:
            arr = self._prepare(frame)
            if self._container is None:
                self._open(arr.shape[1], arr.shape[0])
            vf = av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG"
            )
            vf.pts = self.frames_written
            vf.time_base = 1 / self.rate
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self.frames_written += 1
            if self._audio is not None:
                self._audio.advance(self.frames_written / self.fps)
        except BaseException:
            self.abort()
            raise

    @property
    def duration(self) -> float:
        """Seconds of video written so far."""
        return self.frames_written / self.fps

    def close(self) -> None:
        """Flush encoders, mux the audio tail, write the trailer and rename into place."""
        if self._closed:
            return
        try:
            if self.frames_written == 0:
                raise ValueError(f"VideoWriter: no frames were written to '{self.path}'")
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.advance(self.duration, final=True)
                self._audio.close()
                self._audio = None
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything: close the encoders quietly and delete the temporary file."""
        self._closed = True
        # the file is being discarded: errors while closing it (its trailer) do not matter
        if self._audio is not None:
            with contextlib.suppress(av.FFmpegError):
                self._audio.close()
            self._audio = None
        if self._container is not None:
            with contextlib.suppress(av.FFmpegError, ValueError, OSError):
                self._container.close()
            self._container = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def write_frames(writer: VideoWriter, frames, stats: dict[str, float], progress=None, total: int = 0) -> int:
    """Encode every frame ``frames`` yields with ``writer``: the encoding time (not what the iterator
    spends making a frame) is added to ``stats["encoding"]``, and ``progress(done, total, "frames")``
    is called after each frame. Returns the number of frames written."""
    written = 0
    for frame in frames:
        t0 = time.perf_counter()
        writer.write(frame)
        stats["encoding"] = stats.get("encoding", 0.0) + time.perf_counter() - t0
        written += 1
        if progress:
            progress(written, total, "frames")
    return written


def add_visible_label(frame: np.ndarray, text: str = "AI-generated") -> np.ndarray:
    """Return a copy of ``frame`` (uint8 RGB ``H×W×3``) with a visible label, bottom right.

    White text (cv2 Hershey font, anti-aliased) on a half-transparent dark box; the text height
    is about 3.5 % of the frame's shorter side (at least ~9 px) and it shrinks to fit narrow
    frames. Only ASCII text can be drawn.
    """
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"add_visible_label expects a uint8 H×W×3 RGB array, got {desc}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"label text must be a non-empty string, got {text!r}")
    if not text.isascii() or not text.isprintable():
        raise ValueError(f"label text must be printable ASCII (cv2 Hershey fonts), got {text!r}")
    out = np.array(frame, copy=True, order="C")
    h, w = out.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    margin = max(2, round(0.02 * min(h, w)))
    pad = max(2, round(0.01 * min(h, w)))
    target_h = max(9.0, 0.035 * min(h, w))
    (_, base_h), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = target_h / base_h
    thickness = max(1, round(scale * 1.5))
    (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
    max_w = w - 2 * margin - 2 * pad
    if tw > max_w > 0:
        scale *= max_w / tw
        thickness = max(1, round(scale * 1.5))
        (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
    x1, y1 = w - margin, h - margin
    x0, y0 = max(0, x1 - tw - 2 * pad), max(0, y1 - th - baseline - 2 * pad)
    box = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.rint(box * 0.45).astype(np.uint8)  # 55 % black box
    origin = (x0 + pad, y1 - pad - baseline)
    cv2.putText(out, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out
