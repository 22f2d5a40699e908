"""Few-shot family (Zakharov et al. 2019; docs/METHOD.md §10) at inference: personalize on T frames, then reenact.

A personalized few-shot generator G'(y) holds the person's identity in its AdaIN parameters
ψ' (initialised to P·ê, then optionally fine-tuned); it renders a face from a landmark image
y alone. Reenactment therefore needs no source photo: the driving landmarks are moved onto the
person's own face (``relative`` mode, reference = the person's first frame), drawn, and
rendered; frames are upsampled from the generator's size to 256² for the video.

Layout of a personalized folder: ``generator/`` (a personalized ``FewShotGenerator``),
``person.json`` (T, steps, timings) and ``reference_landmarks.npy`` (478×2 at 256²).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from metaportrait.errors import WeightsError
from metaportrait.face import CropTransform, FaceAnalyzer, draw_landmark_image, transfer_landmarks
from metaportrait.io import DEFAULT_LIMITS, InputLimits
from metaportrait.person import PersonFrames
from metaportrait.tensors import to_tensor, to_uint8
from metaportrait.video import VideoWriter, add_visible_label, iter_frames, probe_video


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
    from metaportrait.models.fewshot import Embedder, FewShotGenerator, ProjectionDiscriminator

    return (Embedder.from_pretrained(sub / "embedder"), FewShotGenerator.from_pretrained(sub / "generator"),
            ProjectionDiscriminator.from_pretrained(sub / "discriminator"))


def fewshot_loss_weights(folder: Path):
    """The loss weights the few-shot models in ``folder`` were trained with (``training_config.json``),
    so fine-tuning optimises the same objective; the paper's weights when the file is absent."""
    from metaportrait.training.fewshot import FewShotLossWeights

    cfg = Path(folder) / "training_config.json"
    if cfg.is_file():
        return FewShotLossWeights(**json.loads(cfg.read_text()).get("loss_weights", {}))
    return FewShotLossWeights()


def person_tensors(person: PersonFrames, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames and landmark images of ``person`` at the few-shot generator's size, in [-1, 1]."""
    scale = size / person.frames.shape[1]
    frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in person.frames])
    marks = np.stack([draw_landmark_image(lm * scale, size) for lm in person.landmarks])
    return to_tensor(frames), to_tensor(marks)


@dataclass(frozen=True)
class FineTuneSchedule:
    """How `metaportrait personalize --family fewshot` fine-tunes (FT, Zakharov et al. 2019 §3.3).

    G' (all weights and ψ', initialised to P·ê) and D' (all weights, w' = w_0 + ê and b) are trained
    on the person's T frames with the objective the model was meta-learned with (content, adversarial
    and feature-matching terms). Measured on the 128² embedded weights (README "Few-shot family"):
    the meta-learned start alone is not a face of the person, these steps carry it. ``bfloat16``
    autocast (``None``: when :func:`fast_bfloat16` says so) halves the step time on a CPU with
    AVX512-BF16/AMX and is many times slower on one without. ``steps`` is the budget for T = 32
    within 5 minutes of a 2-core CPU.
    """

    steps: int = 200
    batch_size: int = 8
    lr_generator: float = 5e-4
    lr_discriminator: float = 2e-4
    bfloat16: bool | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.steps, int) and self.steps >= 0 and isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"FineTuneSchedule: need steps >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not (self.lr_generator > 0 and self.lr_discriminator > 0):
            raise ValueError(f"FineTuneSchedule: learning rates must be > 0, got {self.lr_generator}, {self.lr_discriminator}")

    def replace(self, **changes) -> FineTuneSchedule:
        return dataclasses.replace(self, **changes)

    def kwargs(self, device: str | torch.device = "cpu") -> dict:
        """Keyword arguments of :func:`metaportrait.training.fewshot.finetune_fewshot` on ``device``."""
        bf16 = fast_bfloat16(device) if self.bfloat16 is None else self.bfloat16
        return {"steps": self.steps, "batch_size": self.batch_size, "lr_generator": self.lr_generator,
                "lr_discriminator": self.lr_discriminator, "autocast_dtype": torch.bfloat16 if bf16 else None}


def fast_bfloat16(device: str | torch.device = "cpu") -> bool:
    """bf16 autocast pays on CUDA and on CPUs with AVX512-BF16 or AMX (Linux ``/proc/cpuinfo`` flags)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


FT_SCHEDULE = FineTuneSchedule()


@dataclass
class FewShotPersonalization:
    output_dir: Path
    frames: int
    steps: int
    embed_seconds: float
    finetune_seconds: float
    losses: list[dict[str, float]]


def personalize_fewshot(person: PersonFrames, output_dir: str | Path, *, weights: str | Path | None = None,
                        steps: int | None = None, feed_forward: bool = False, seconds: float | None = None,
                        callback: Callable[[int, dict[str, float]], bool | None] | None = None,
                        schedule: FineTuneSchedule = FT_SCHEDULE) -> FewShotPersonalization:
    """FT (``schedule``; ``steps`` overrides its step count; stops early when ``seconds`` are spent) or
    FF (``feed_forward=True``: ψ = P·ê only) on ``person``; ``callback(step, losses)`` after each
    step (losses: ``loss_g``, ``loss_content``, ``loss_adv``, ``loss_fm``, ``loss_d``), True to stop."""
    from metaportrait.training.fewshot import finetune_fewshot

    if steps is not None:
        schedule = schedule.replace(steps=steps)
    sub = fewshot_folder(weights)
    embedder, generator, disc = load_fewshot_folder(sub)
    loss_weights = fewshot_loss_weights(sub)
    frames, marks = person_tensors(person, generator.config.image_size)
    kwargs = schedule.kwargs(generator.P.device)
    if feed_forward:
        kwargs["steps"] = 0
    res = finetune_fewshot(embedder, generator, disc, frames, marks, **kwargs, feed_forward=feed_forward,
                           evaluate=False, loss_weights=loss_weights, seconds=seconds, callback=callback)
    out = Path(output_dir)
    res.generator.save_pretrained(out / "generator")
    np.save(out / "reference_landmarks.npy", person.landmarks[0].astype(np.float32))
    (out / "person.json").write_text(json.dumps({
        "family": "fewshot", "frames": len(person), "steps": len(res.losses), "feed_forward": feed_forward,
        "embed_seconds": res.embed_seconds, "finetune_seconds": res.finetune_seconds,
        "schedule": {**dataclasses.asdict(schedule), "bfloat16": kwargs["autocast_dtype"] is not None}}, indent=2))
    return FewShotPersonalization(out, len(person), len(res.losses), res.embed_seconds, res.finetune_seconds,
                                  res.losses)


class FewShotPipeline:
    """Reenact a personalized few-shot generator with a driving video (relative motion)."""

    def __init__(self, person_dir: str | Path, device: str = "cpu", limits: InputLimits = DEFAULT_LIMITS) -> None:
        from metaportrait.models.fewshot import FewShotGenerator

        person_dir = Path(person_dir)
        if not (person_dir / "person.json").is_file():
            raise WeightsError(f"{person_dir} is not a few-shot personalization folder (no person.json)")
        self.generator = FewShotGenerator.from_pretrained(person_dir / "generator").to(device).eval()
        self.reference = np.load(person_dir / "reference_landmarks.npy")
        self.device, self.limits, self.size = torch.device(device), limits, 256

    @torch.inference_mode()
    def render(self, landmarks: list[np.ndarray]) -> np.ndarray:
        g = self.generator.config.image_size
        marks = np.stack([draw_landmark_image(lm * g / self.size, g) for lm in landmarks])
        out = to_uint8(self.generator(to_tensor(marks, self.device)))
        return np.stack([cv2.resize(o, (self.size, self.size), interpolation=cv2.INTER_CUBIC) for o in out])

    def reenact(self, driving: str | Path, output: str | Path, visible_label: bool = True, batch: int = 8) -> Path:
        info = probe_video(driving, self.limits)
        crop = ref = None
        pending: list[np.ndarray] = []
        last = self.reference
        with FaceAnalyzer(static_image_mode=False, max_faces=1) as fa, VideoWriter(
                output, fps=info.fps, audio_from=driving if info.has_audio else None,
                metadata={"title": "metaportrait few-shot reenactment"}) as writer:
            def flush():
                for frame in self.render(pending):
                    writer.write(add_visible_label(frame) if visible_label else frame)
                pending.clear()

            for frame in iter_frames(driving, limits=self.limits):
                dets = fa.detect(frame)
                if dets:
                    if crop is None:
                        crop = CropTransform.from_landmarks(dets[0].landmarks, size=self.size)
                    lm = crop.points_to_crop(dets[0].landmarks).astype(np.float32)
                    ref = lm if ref is None else ref
                    last = transfer_landmarks(self.reference, lm, ref, mode="relative").astype(np.float32)
                pending.append(last)
                if len(pending) >= batch:
                    flush()
            if pending:
                flush()
        return Path(output)


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
    out = FewShotPipeline(args.person, device=args.device).reenact(args.driving, args.output)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0
