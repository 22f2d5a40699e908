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
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from metaportrait.errors import WeightsError
from metaportrait.face import CropTransform, FaceAnalyzer, draw_landmark_image, transfer_landmarks
from metaportrait.io import DEFAULT_LIMITS, InputLimits
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
