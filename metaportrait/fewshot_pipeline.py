"""Few-shot family (Zakharov et al. 2019; docs/METHOD.md §10) at inference: reenact a personalized generator.

A personalized few-shot generator G'(y) holds the person's identity in its AdaIN parameters
ψ' (initialised to P·ê, then optionally fine-tuned); it renders a face from a landmark image
y alone. Reenactment therefore needs no source photo: the driving landmarks are moved onto the
person's own face (``relative`` mode, reference = the person's first frame), drawn, and
rendered; frames are upsampled from the generator's size to the person's crop size (``size`` in
``person.json``, 256) or ``ReenactOptions.size`` for the video. Driving landmarks are tracked
and One-Euro smoothed as in the MetaPortrait pipeline (:class:`~metaportrait.tracking.LandmarkTracker`).

Layout of a personalized folder (written by
:func:`~metaportrait.training.fewshot_finetune.personalize_fewshot`): ``generator/`` (a
personalized ``FewShotGenerator``), ``person.json`` (T, steps, timings, ``size``: the crop side)
and ``reference_landmarks.npy`` (478×2 in pixels of that crop).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from metaportrait.errors import NoFaceError, WeightsError
from metaportrait.face import draw_landmark_image, transfer_landmarks
from metaportrait.io import DEFAULT_LIMITS, InputLimits
from metaportrait.models.fewshot import FewShotGenerator
from metaportrait.pipeline_types import ProgressCallback, ReenactOptions, ReenactResult
from metaportrait.tensors import to_tensor, to_uint8
from metaportrait.tracking import LandmarkTracker
from metaportrait.video import VideoWriter, add_visible_label, check_output_path, iter_frames
from metaportrait.video_reader import probe_driving


def fewshot_folder(weights: str | Path | None) -> Path:
    """The ``fewshot`` component folder of a pipeline folder / Hub repo (default: the embedded weights)."""
    from metaportrait.weights import find_component

    sub = find_component(weights, "fewshot")
    if sub is None:
        raise WeightsError(f"{weights or 'the embedded weights'} has no few-shot ('fewshot') component; train one with `metaportrait train-fewshot`")
    return sub


def load_fewshot(weights: str | Path | None):
    """(embedder, generator, discriminator) from a pipeline folder's ``fewshot`` component."""
    return load_fewshot_folder(fewshot_folder(weights))


def load_fewshot_folder(sub: Path):
    """(embedder, generator, discriminator) from a ``fewshot`` component folder itself."""
    from metaportrait.models.fewshot import Embedder, ProjectionDiscriminator

    return (Embedder.from_pretrained(sub / "embedder"), FewShotGenerator.from_pretrained(sub / "generator"),
            ProjectionDiscriminator.from_pretrained(sub / "discriminator"))


#: Options of :class:`ReenactOptions` that need a source photo or the MetaPortrait motion controls;
#: the few-shot family renders from landmarks alone, so it refuses them rather than ignore them.
UNSUPPORTED_OPTIONS = ("paste_back", "face", "neutral_mouth", "parts", "motion_scale", "pose_scale", "eyes", "lips",
                       "smile", "audio")


class FewShotPipeline:
    """Reenact a personalized few-shot generator with a driving video (relative motion).

    The same contract as :class:`~metaportrait.pipeline.MetaPortraitPipeline`: load with
    :meth:`from_pretrained`, pass :class:`~metaportrait.pipeline.ReenactOptions` (the driving-side
    ones: smoothing, ``size``, ``batch_size``, ``max_seconds``, ``visible_label``), get a
    :class:`~metaportrait.pipeline.ReenactResult`; a driving video without a face raises
    :class:`~metaportrait.errors.NoFaceError` and leaves no output.

    >>> pipe = FewShotPipeline.from_pretrained("me_fewshot/")      # doctest: +SKIP
    >>> pipe.reenact("driving.mp4", "out.mp4")                      # doctest: +SKIP
    """

    def __init__(self, generator: FewShotGenerator, reference_landmarks: np.ndarray, *, size: int = 256,
                 device: str | torch.device = "cpu", limits: InputLimits = DEFAULT_LIMITS) -> None:
        reference = np.asarray(reference_landmarks, np.float32)
        if reference.ndim != 2 or reference.shape[0] != 478 or reference.shape[1] < 2:
            raise WeightsError(f"reference landmarks must be 478×2, got {reference.shape}")
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.reference = reference[:, :2]
        self.size = int(size)  # the crop side the reference landmarks (and the driving crop) are in
        self.limits = limits

    @classmethod
    def from_pretrained(cls, person_dir: str | Path, *, device: str | torch.device | None = None,
                        limits: InputLimits = DEFAULT_LIMITS) -> FewShotPipeline:
        """Load a folder written by ``metaportrait personalize --family fewshot`` (strict)."""
        person_dir = Path(person_dir)
        info_file = person_dir / "person.json"
        if not info_file.is_file():
            raise WeightsError(f"{person_dir} is not a few-shot personalization folder (no person.json)")
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{info_file} is not readable JSON: {exc}") from exc
        reference_file = person_dir / "reference_landmarks.npy"
        if not reference_file.is_file():
            raise WeightsError(f"{person_dir} has no reference_landmarks.npy")
        generator = FewShotGenerator.from_pretrained(person_dir / "generator")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # folders written before the size was recorded hold landmarks of 256² crops
        return cls(generator, np.load(reference_file, allow_pickle=False), size=int(info.get("size", 256)),
                   device=device, limits=limits)

    @torch.inference_mode()
    def render(self, landmarks: Sequence[np.ndarray], size: int | None = None) -> np.ndarray:
        """Faces (uint8 ``B×N×N×3``, N = ``size`` or :attr:`size`) for landmarks in :attr:`size`² crop pixels."""
        g = self.generator.config.image_size
        n = size or self.size
        marks = np.stack([draw_landmark_image(lm * g / self.size, g) for lm in landmarks])
        out = to_uint8(self.generator(to_tensor(marks, self.device)))
        return np.stack([cv2.resize(o, (n, n), interpolation=cv2.INTER_CUBIC) for o in out])

    def driving_landmarks(self, frames: Iterable[np.ndarray], options: ReenactOptions, stats: dict[str, float],
                          fps: float = 25.0) -> Iterator[np.ndarray | None]:
        """Per driving frame, streaming: the person's reference landmarks moved by the driver's motion
        since its first frame with a face (``relative`` transfer, :attr:`size`² crop pixels), from
        landmarks tracked in one crop box and One-Euro smoothed (``options.smooth_landmarks``); None
        before the first face. ``stats["landmarks"]`` accumulates the tracking time."""
        ref: np.ndarray | None = None
        with LandmarkTracker(self.size, options) as tracker:
            for i, frame in enumerate(frames):
                t0 = time.perf_counter()
                lm = tracker.update(frame, i / fps)
                stats["landmarks"] = stats.get("landmarks", 0.0) + time.perf_counter() - t0
                if lm is None:
                    yield None
                    continue
                ref = lm if ref is None else ref
                yield transfer_landmarks(self.reference, lm, ref, mode="relative").astype(np.float32)

    @staticmethod
    def check_options(options: ReenactOptions) -> None:
        """ValueError naming the options the few-shot family cannot honour (set away from their defaults)."""
        if options.mode != "relative":
            raise ValueError("the few-shot family transfers relative motion only (mode='relative')")
        default = ReenactOptions()
        odd = [name for name in UNSUPPORTED_OPTIONS if getattr(options, name) != getattr(default, name)]
        if odd:
            raise ValueError(f"the few-shot family does not support these options: {', '.join(odd)}")

    def reenact(self, driving: str | Path, output: str | Path, options: ReenactOptions = ReenactOptions(),
                progress: ProgressCallback | None = None) -> ReenactResult:
        """Write the reenacted video to ``output`` (H.264 mp4 with the driving audio); nothing is left
        behind on failure."""
        self.check_options(options)
        output = check_output_path(output)
        info, limits, total = probe_driving(driving, self.limits, options.max_seconds)
        size = options.size or self.size
        stats: dict[str, float] = {}
        pending: list[np.ndarray] = []
        written = missed = 0
        found = False
        if progress:
            progress(0, total, "frames")
        with VideoWriter(
                output, fps=info.fps, audio_from=driving if info.has_audio else None,
                metadata={"title": "metaportrait few-shot reenactment"}) as writer:
            def flush() -> None:
                nonlocal written
                t0 = time.perf_counter()
                frames = self.render(pending, size)
                stats["generation"] = stats.get("generation", 0.0) + time.perf_counter() - t0
                for frame in frames:
                    t1 = time.perf_counter()
                    writer.write(add_visible_label(frame) if options.visible_label else frame)
                    stats["encoding"] = stats.get("encoding", 0.0) + time.perf_counter() - t1
                    written += 1
                    if progress:
                        progress(written, total, "frames")
                pending.clear()

            frames = iter_frames(driving, max_frames=total, limits=limits)
            for lm in self.driving_landmarks(frames, options, stats, fps=info.fps):
                if lm is None:
                    missed += 1  # before the first face: the person's own reference pose
                    lm = self.reference
                else:
                    found = True
                pending.append(lm)
                if len(pending) >= options.batch_size:
                    flush()
            if pending:
                flush()
            if not found:
                raise NoFaceError("no face was found in any frame of the driving video")
        if missed:
            warnings.warn(f"{missed} of {written} driving frames had no detectable face; the previous pose was held",
                          stacklevel=2)
        return ReenactResult(output_path=output, num_frames=written, fps=info.fps, has_audio=info.has_audio,
                             frames_without_face=missed, timings=stats)


def main(argv: Sequence[str] | None = None) -> int:
    """``metaportrait reenact-fewshot --person DIR --driving VIDEO --output OUT.mp4``."""
    ap = argparse.ArgumentParser(prog="metaportrait reenact-fewshot",
                                 description="Reenact a few-shot personalized generator (Zakharov et al. 2019).")
    ap.add_argument("--person", required=True, help="folder written by `metaportrait personalize --family fewshot`")
    ap.add_argument("--driving", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = FewShotPipeline.from_pretrained(args.person, device=args.device).reenact(args.driving, args.output)
    print(f"wrote {result.output_path} ({result.num_frames} frames at {result.fps:g} fps) in "
          f"{time.perf_counter() - t0:.1f}s")
    return 0
