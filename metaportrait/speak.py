"""Audio-driven talking heads: a portrait photo + a speech recording -> a talking video.

The speech drives the landmarks; the landmarks drive the same renderer as a driving video
(:meth:`MetaPortraitPipeline.motion` / :func:`metaportrait.pipeline.draw`):

1. :func:`metaportrait.audio.analyse_audio` checks the recording and measures its reference level
   (bad audio is refused here, before any output exists);
2. :class:`SpeechFeatures` streams normalised log-mel windows around each video frame's time and a
   voice-activity gate, a block of frames at a time (memory does not grow with the length); beside
   the mels, the viseme class of every 10 ms (:mod:`metaportrait.visemes`, phone recognition in a
   pass over the recording before the first frame);
3. :class:`~metaportrait.models.audio_to_motion.AudioToMotion` predicts each frame's mouth, jaw and
   cheek displacement in the canonical face frame; gated by the voice activity (silence: the
   closed, resting mouth) it is mapped onto the source's own closed-mouth landmarks;
4. :class:`LifeMotion` adds what speakers do beyond the lips: head rotation (band-limited noise with
   the spread and correlation time measured on the training clips, scaled by ``head_motion``),
   blinks (a Poisson process at the measured rate) and brow movement that follows the speech;
   seeded, so a seed gives the same video;
5. the motion controls of :class:`~metaportrait.pipeline.ReenactOptions` apply on top, and frames
   are rendered in batches and encoded with the speech muxed in.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from metaportrait.audio import MAX_AUDIO_SECONDS, AudioInfo, analyse_audio, iter_audio
from metaportrait.errors import InvalidAudioError, WeightsError
from metaportrait.face.canonical import displacement_to_pixels
from metaportrait.face.controls import eye_opening, raise_brows, rotate_head, set_eye_opening
from metaportrait.face.motion import STABLE_POINTS, close_mouth, irises_inside_eyelids
from metaportrait.models.audio_to_motion import AudioToMotion
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions, ReenactResult, SourceFace, draw
from metaportrait.render import output_size
from metaportrait.video import VideoWriter, add_visible_label, check_output_path, write_frames
from metaportrait.visemes import viseme_track
from metaportrait.weights import find_component

MAX_TEXT_CHARS = 1000


@dataclass(frozen=True)
class SpeakOptions:
    """Per-request settings of :func:`speak` (``controls``: size, paste-back, label, motion controls)."""

    fps: float = 25.0
    head_motion: float = 1.0  # scale of the head's rotation (0 = still; blinks and brows go on)
    seed: int = 0
    max_seconds: float = MAX_AUDIO_SECONDS
    batch_size: int = 25  # frames per block (memory per block, not per recording)
    controls: ReenactOptions = field(default_factory=ReenactOptions)

    def __post_init__(self) -> None:
        if not 1 <= self.fps <= 60:
            raise ValueError(f"fps must be in [1, 60], got {self.fps!r}")
        if not 0 <= self.head_motion <= 3:
            raise ValueError(f"head_motion must be in [0, 3], got {self.head_motion!r}")
        if not 0 < self.max_seconds <= MAX_AUDIO_SECONDS:
            raise ValueError(f"max_seconds must be in (0, {MAX_AUDIO_SECONDS:g}], got {self.max_seconds!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.controls.face == "all" or self.controls.face is not None:
            raise ValueError("speak animates the largest face of the photo (controls.face must be None)")


def load_audio_model(weights: str | Path | None = None, device: str | torch.device = "cpu") -> AudioToMotion:
    """The audio-to-motion model of a pipeline folder (``audio`` in its model_index.json), strictly."""
    folder = find_component(weights, "audio")
    if folder is None:
        raise WeightsError("these weights have no audio-to-motion model (model_index.json names no 'audio')")
    return AudioToMotion.from_pretrained(folder).to(device).eval().requires_grad_(False)


class SpeechFeatures:
    """Normalised log-mel windows and a voice-activity gate for consecutive blocks of video frames,
    from a stream of 16 kHz chunks; holds one block of samples at a time.

    Frame ``t`` is at ``t / fps`` seconds; its window is the ``2·context + 1`` mel columns centred
    there (zeros, i.e. silence, before the start and after the end). A model with visemes also needs
    ``visemes``, the recording's :func:`~metaportrait.visemes.viseme_track` (one class per 10 ms).
    """

    def __init__(self, model: AudioToMotion, chunks: Iterator[np.ndarray], reference_db: float, fps: float,
                 threshold_db: float, release_seconds: float = 0.08, visemes: np.ndarray | None = None) -> None:
        c = model.config
        if c.num_visemes and visemes is None:
            raise ValueError("this audio model reads visemes: pass the recording's viseme_track")
        self.visemes = None if not c.num_visemes else np.asarray(visemes, np.int64)
        self.num_visemes = c.num_visemes
        self.model, self.fps, self.ref, self.threshold = model, float(fps), float(reference_db), float(threshold_db)
        self.hop, self.n_fft, self.ctx = c.hop_length, c.n_fft, c.context_frames
        self.rate = c.sample_rate / c.hop_length  # mel columns per second
        self.pad = self.ctx * self.hop + self.n_fft // 2  # zeros before sample 0 ("padded" coordinates)
        self.buf = np.zeros(self.pad, np.float32)
        self.start = 0  # padded index of buf[0]
        self.chunks = chunks
        self.exhausted = False
        self.gate = 0.0
        self.release = math.exp(-1.0 / max(release_seconds * fps, 1e-6))

    def _column(self, t: int) -> int:
        return int(round(t * self.rate / self.fps))

    def _ensure(self, end: int) -> None:
        parts = [self.buf]
        have = self.start + len(self.buf)
        while have < end and not self.exhausted:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.exhausted = True
                break
            parts.append(np.asarray(chunk, np.float32))
            have += len(chunk)
        if len(parts) > 1:
            self.buf = np.concatenate(parts)

    def _segment(self, s0: int, s1: int) -> np.ndarray:
        self._ensure(s1)
        seg = self.buf[max(0, s0 - self.start): max(0, s1 - self.start)]
        if len(seg) < s1 - s0:
            seg = np.concatenate([seg, np.zeros(s1 - s0 - len(seg), np.float32)])
        return seg

    @torch.inference_mode()
    def windows(self, f0: int, f1: int) -> tuple[torch.Tensor, np.ndarray]:
        """Features ``(f1−f0) × n_mels × window`` of frames ``f0 … f1−1`` and their gates in [0, 1].
        Blocks must come in order."""
        j0, j1 = self._column(f0), self._column(f1 - 1) + 2 * self.ctx
        s0, s1 = j0 * self.hop, j1 * self.hop + self.n_fft
        seg = self._segment(s0, s1)
        mel = AudioToMotion.normalise(self.model.log_mel(torch.from_numpy(seg).to(self.model.mean.device)), self.ref)
        offsets = torch.tensor([self._column(t) - j0 for t in range(f0, f1)])
        index = offsets[:, None] + torch.arange(2 * self.ctx + 1)[None]
        feats = mel[:, index].permute(1, 0, 2).contiguous().float()  # B×M×W
        if self.visemes is not None:  # column j is the recording's 10 ms frame j − context
            frames = index + j0 - self.ctx
            inside = (frames >= 0) & (frames < len(self.visemes))
            cls = torch.from_numpy(self.visemes)[frames.clamp(0, max(len(self.visemes) - 1, 0))] \
                if len(self.visemes) else torch.zeros_like(frames)
            cls = torch.where(inside, cls, torch.zeros_like(cls))  # outside the recording: silence
            onehot = torch.nn.functional.one_hot(cls, self.num_visemes).permute(0, 2, 1).float()
            feats = torch.cat([feats, onehot.to(feats.device)], 1)
        gates = np.empty(f1 - f0, np.float32)
        half = 4 * self.hop  # ±40 ms around the frame's time
        for i, t in enumerate(range(f0, f1)):
            centre = (self._column(t) + self.ctx) * self.hop + self.n_fft // 2 - s0
            x = seg[max(0, centre - half): centre + half].astype(np.float64)
            level = 10.0 * math.log10(float(np.mean(x * x)) + 1e-12) if len(x) else -120.0
            raw = min(max((level - self.threshold) / 10.0, 0.0), 1.0)
            self.gate = max(raw, self.gate * self.release)  # fast attack, ~80 ms release
            if self.gate < 0.05:
                self.gate = 0.0  # a tail this small snaps to the exact resting mouth
            gates[i] = self.gate
        keep = self._column(f1) * self.hop
        if keep > self.start:
            self.buf = self.buf[keep - self.start:]
            self.start = keep
        return feats.cpu(), gates


class LifeMotion:
    """Seeded head rotation, blinks and brow movement for frame ``t`` (closed form or lazily sampled,
    so a long recording needs no state beyond the next blink)."""

    def __init__(self, model: AudioToMotion, fps: float, seed: int, head_motion: float) -> None:
        c = model.config
        rng = np.random.default_rng(seed)
        self.fps = fps
        # head: per axis a sum of 6 sinusoids, frequencies spread up to the measured correlation time's
        # bandwidth, amplitudes giving the measured spread (sum of N unit-phase sines: var = N·A²/2)
        top = 1.0 / (2 * math.pi * max(c.head_time_constant, 0.05)) * 2.0
        n = 6
        self.freq = rng.uniform(0.1 * top, top, (3, n))
        self.phase = rng.uniform(0, 2 * math.pi, (3, n))
        self.amp = np.asarray(c.head_std_deg, np.float64)[:, None] * math.sqrt(2.0 / n) * head_motion
        self.brow_freq = rng.uniform(0.2, 0.8, 4)
        self.brow_phase = rng.uniform(0, 2 * math.pi, 4)
        self.brow_std = c.brow_std
        self.blink_rate, self.blink_len = c.blink_rate, c.blink_seconds
        self.rng = rng
        self.next_blink = self._gap() if self.blink_rate > 0 else math.inf
        self.slow_gate = 0.0

    def _gap(self) -> float:
        return 0.6 + float(self.rng.exponential(max(1.0 / self.blink_rate - 0.6, 0.1)))

    def head(self, t: int) -> np.ndarray:
        s = t / self.fps
        return (self.amp * np.sin(2 * math.pi * self.freq * s + self.phase)).sum(1)

    def blink(self, t: int) -> float:
        """Lid closure 0 … 1 at frame ``t`` (frames must come in order)."""
        s = t / self.fps
        while s > self.next_blink + self.blink_len:
            self.next_blink += self._gap()
        u = (s - self.next_blink) / self.blink_len
        if not 0 <= u <= 1:
            return 0.0
        return math.sin(math.pi * min(u / 0.4, 1.0) / 2) if u < 0.4 else math.cos(math.pi * (u - 0.4) / 1.2)

    def brows(self, t: int, gate: float) -> float:
        self.slow_gate += (gate - self.slow_gate) * (1.0 - math.exp(-1.0 / (0.5 * self.fps)))
        s = t / self.fps
        wave = float(np.sin(2 * math.pi * self.brow_freq * s + self.brow_phase).sum()) * math.sqrt(2.0 / 4)
        return float(np.clip(self.brow_std * wave * (0.3 + 0.7 * self.slow_gate), -1.5, 1.5))


def speech_landmarks(
    model: AudioToMotion, source: SourceFace, audio: str | Path, info: AudioInfo, options: SpeakOptions,
    stats: dict[str, float] | None = None,
) -> Iterator[list[np.ndarray]]:
    """Blocks of target landmarks (crop pixels of ``source``), ``options.batch_size`` frames each,
    for ``round(duration · fps)`` frames."""
    stats = {} if stats is None else stats
    n = max(1, int(round(info.duration * options.fps)))
    visemes = None
    if model.config.num_visemes:
        t0 = time.perf_counter()
        visemes = viseme_track(iter_audio(audio, max_seconds=options.max_seconds))
        stats["visemes"] = time.perf_counter() - t0
    features = SpeechFeatures(model, iter_audio(audio, max_seconds=options.max_seconds), info.reference_db,
                              options.fps, info.speech_threshold_db, visemes=visemes)
    life = LifeMotion(model, options.fps, options.seed, options.head_motion)
    rest = close_mouth(source.landmarks)
    depth = source.landmarks_3d[:, 2] if source.landmarks_3d is not None else np.zeros(len(rest), np.float32)
    eyes = eye_opening(source.landmarks)
    stable = list(STABLE_POINTS)
    device = model.mean.device
    for f0 in range(0, n, options.batch_size):
        f1 = min(n, f0 + options.batch_size)
        t0 = time.perf_counter()
        feats, gates = features.windows(f0, f1)
        with torch.inference_mode():
            disp = model(feats.to(device)).displacement.float().cpu().numpy()
        stats["audio_model"] = stats.get("audio_model", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        pixels = displacement_to_pixels(rest, disp * gates[:, None, None])
        block = []
        for i, t in enumerate(range(f0, f1)):
            lm = rest + pixels[i]
            brow = life.brows(t, float(gates[i]))
            if abs(brow) > 1e-3:
                lm = raise_brows(lm, brow)
            closure = life.blink(t)
            if closure > 0:
                lm = set_eye_opening(lm, min(1.5, eyes * (1.0 - closure)))
            yaw, pitch, roll = life.head(t)
            if options.head_motion > 0 and source.landmarks_3d is not None:
                turned = rotate_head(np.c_[lm, depth], float(yaw), float(pitch), float(roll))
                lm = turned + (lm[stable].mean(0) - turned[stable].mean(0))
            block.append(MetaPortraitPipeline.control(source, irises_inside_eyelids(lm), options.controls))
        stats["motion"] = stats.get("motion", 0.0) + time.perf_counter() - t0
        yield block


def speak(
    pipe: MetaPortraitPipeline,
    source: str | Path | np.ndarray | SourceFace,
    audio: str | Path,
    output: str | Path,
    options: SpeakOptions = SpeakOptions(),
    model: AudioToMotion | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ReenactResult:
    """Write ``output`` (H.264 mp4, the speech muxed in): ``source`` talking ``audio``.

    Bad audio or a photo without a face raise a :class:`~metaportrait.errors.MetaPortraitError`
    before anything is written; no output file is left behind on failure.
    """
    output = check_output_path(output)
    audio = Path(audio).expanduser()
    stats: dict[str, float] = {}
    t0 = time.perf_counter()
    info = analyse_audio(audio, max_seconds=options.max_seconds)
    stats["audio"] = time.perf_counter() - t0
    model = model if model is not None else load_audio_model(device=pipe.device)
    t0 = time.perf_counter()
    src = source if isinstance(source, SourceFace) else pipe.prepare_source(source)
    stats["source"] = time.perf_counter() - t0
    n = max(1, int(round(info.duration * options.fps)))
    controls = options.controls
    size = output_size(src.crop, controls.size, pipe.size)
    if progress:
        progress(0, n, "frames")

    def frames() -> Iterator[np.ndarray]:
        for block in speech_landmarks(model, src, audio, info, options, stats):
            t0 = time.perf_counter()
            grids, residuals = pipe.motion(src, block, controls.full_head)
            stats["generation"] = stats.get("generation", 0.0) + time.perf_counter() - t0
            for k in range(len(block)):
                t0 = time.perf_counter()
                frame = draw(src, grids[k], None if residuals is None else residuals[k], controls.paste_back, size,
                             target=block[k], mouth=pipe.mouth, eyes=pipe.eyes)
                if controls.visible_label:
                    frame = add_visible_label(frame)
                stats["render"] = stats.get("render", 0.0) + time.perf_counter() - t0
                yield frame

    with VideoWriter(output, fps=options.fps, audio_from=audio,
                     metadata={"title": "metaportrait talking head (audio-driven)", "source_mode": "audio"}) as writer:
        written = write_frames(writer, frames(), stats, progress, n)
        t0 = time.perf_counter()
    stats["encoding"] = stats.get("encoding", 0.0) + time.perf_counter() - t0
    return ReenactResult(output_path=output, num_frames=written, fps=options.fps, has_audio=True,
                         frames_without_face=0, timings=stats)


# ------------------------------------------------------------------ typed text, spoken offline
def espeak_available() -> bool:
    """Whether the ``espeak-ng`` speech synthesiser (Debian package ``espeak-ng``) is installed."""
    return shutil.which("espeak-ng") is not None


def synthesize_speech(text: str, output: str | Path | None = None, voice: str = "en-us", speed: int = 150) -> Path:
    """``text`` spoken by espeak-ng into a wav file (a temporary one when ``output`` is None)."""
    text = " ".join(str(text).split())
    if not text:
        raise InvalidAudioError("there is no text to speak")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidAudioError(f"the text is {len(text)} characters long, over the limit of {MAX_TEXT_CHARS}")
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise InvalidAudioError("speaking typed text needs espeak-ng (Debian/Ubuntu: apt-get install espeak-ng)")
    if output is None:
        fd, name = tempfile.mkstemp(suffix=".wav", prefix="metaportrait-tts-")
        os.close(fd)
        output = name
    output = Path(output)
    try:
        subprocess.run([exe, "-v", voice, "-s", str(int(speed)), "-w", str(output), "--", text],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        output.unlink(missing_ok=True)
        detail = getattr(e, "stderr", b"") or b""
        raise InvalidAudioError(f"espeak-ng could not speak the text: {detail.decode(errors='replace').strip() or e}") from e
    return output


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    """``metaportrait speak --source IMG --audio AUDIO --output OUT.mp4 [--fps 25] [--head-motion F] [--seed N]``"""
    import argparse

    p = argparse.ArgumentParser(prog="metaportrait speak", description="make a portrait photo talk: a photo + speech -> a video")
    p.add_argument("--source", required=True, help="portrait photo (jpg/png/webp...)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--audio", help="speech: wav/mp3/m4a/flac/ogg, or a video whose audio track is used")
    what.add_argument("--text", help="text to speak offline through espeak-ng (must be installed)")
    p.add_argument("--output", required=True, help="output .mp4 (H.264 with the speech)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--head-motion", type=float, default=1.0, help="head rotation scale (0 = still, 1 = as measured "
                   "on real talking clips, up to 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the head motion, blinks and brows (same seed, same video)")
    p.add_argument("--weights", default=None, help="pipeline folder or Hub repo id (default: embedded weights/)")
    p.add_argument("--adapter", default=None, help="personalization adapter folder (metaportrait personalize)")
    p.add_argument("--size", choices=["auto", "256", "512", "1024"], default="auto")
    p.add_argument("--paste-back", action="store_true", help="the whole photo at its own resolution")
    p.add_argument("--parts", default="all", help="motion parts: all | head | expression | eyes | lips (combinable)")
    p.add_argument("--motion-scale", type=float, default=1.0, help="exaggerate (> 1) or damp (< 1) the expression")
    p.add_argument("--eyes", type=float, default=None, help="hold the eye opening (0 closed … 1 wide open)")
    p.add_argument("--smile", type=float, default=0.0, help="add a smile (−1 … 1)")
    p.add_argument("--max-seconds", type=float, default=MAX_AUDIO_SECONDS, help="refuse longer audio")
    p.add_argument("--device", default=None)
    p.add_argument("--no-visible-label", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    controls = ReenactOptions(size=None if args.size == "auto" else int(args.size), paste_back=args.paste_back,
                              visible_label=not args.no_visible_label, parts=tuple(args.parts.split(",")),
                              motion_scale=args.motion_scale, eyes=args.eyes, smile=args.smile)
    options = SpeakOptions(fps=args.fps, head_motion=args.head_motion, seed=args.seed, max_seconds=args.max_seconds,
                           controls=controls)
    output = check_output_path(args.output)
    audio = args.audio
    spoken = None
    if args.text is not None:
        spoken = audio = synthesize_speech(args.text)
    try:
        pipe = MetaPortraitPipeline.from_pretrained(args.weights, device=args.device, adapter=args.adapter)
        model = load_audio_model(args.weights, device=pipe.device)
        result = speak(pipe, args.source, audio, output, options, model=model)
    finally:
        if spoken is not None:
            spoken.unlink(missing_ok=True)
    t = result.timings
    if not args.quiet:
        print(f"wrote {result.output_path} ({result.num_frames} frames at {result.fps:g} fps, speech kept); "
              f"audio model {t.get('audio_model', 0):.1f}s, motion {t.get('motion', 0):.1f}s, generation "
              f"{t.get('generation', 0):.1f}s, render {t.get('render', 0):.1f}s, encoding {t.get('encoding', 0):.1f}s, "
              f"{result.fps_end_to_end:.1f} FPS end to end")
    return 0


__all__ = [
    "LifeMotion",
    "SpeakOptions",
    "SpeechFeatures",
    "espeak_available",
    "load_audio_model",
    "main",
    "speak",
    "speech_landmarks",
    "synthesize_speech",
]
