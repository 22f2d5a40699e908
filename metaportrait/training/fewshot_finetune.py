"""Few-shot fine-tuning on a new person (Zakharov et al. 2019 §3.3; the FF variant with
``feed_forward=True``). Re-exported by :mod:`metaportrait.training.fewshot`.

:func:`personalize_fewshot` is the few-shot family's personalization: it fine-tunes on a person's
frames and writes the folder :class:`~metaportrait.fewshot_pipeline.FewShotPipeline` loads."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from metaportrait.face import draw_landmark_image
from metaportrait.fewshot_pipeline import fewshot_folder, load_fewshot_folder
from metaportrait.models.fewshot import Embedder, FewShotGenerator, ProjectionDiscriminator
from metaportrait.person import PersonFrames
from metaportrait.tensors import to_tensor
from metaportrait.training.fewshot_config import FewShotLossWeights, _check_compatible
from metaportrait.training.fewshot_losses import ContentLoss
from metaportrait.training.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss


# -- few-shot fine-tuning ------------------------------------------------------------------------
@dataclass
class FineTuneResult:
    """Personalised G' (ψ' in ``generator.adain_personal``) and D' (w' in ``discriminator.w_personal``).

    ``embedding``: ê_NEW (``D``); ``losses``: per-step scalars; ``content_loss_before/after``: the
    content loss of G' on all T frames (eval mode) at initialisation and after fine-tuning (``nan``
    with ``evaluate=False``);
    timings in seconds: ``embed_seconds`` (ê_NEW and the copies), ``finetune_seconds`` (the steps).
    """

    generator: FewShotGenerator
    discriminator: ProjectionDiscriminator
    embedding: torch.Tensor
    losses: list[dict[str, float]]
    content_loss_before: float
    content_loss_after: float
    embed_seconds: float
    finetune_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.embed_seconds + self.finetune_seconds

    @property
    def seconds_per_step(self) -> float:
        return self.finetune_seconds / len(self.losses) if self.losses else 0.0


@torch.no_grad()
def _chunked_content_loss(generator: FewShotGenerator, frames: torch.Tensor, landmark_images: torch.Tensor,
                          content_loss: ContentLoss, chunk: int) -> float:
    was = generator.training
    generator.eval()
    total = 0.0
    for s in range(0, frames.shape[0], chunk):
        x, y = frames[s : s + chunk], landmark_images[s : s + chunk]
        total += content_loss(generator(y), x).total.item() * x.shape[0]
    generator.train(was)
    return total / frames.shape[0]


def finetune_fewshot(
    embedder: Embedder,
    generator: FewShotGenerator,
    discriminator: ProjectionDiscriminator,
    frames: torch.Tensor,
    landmark_images: torch.Tensor,
    *,
    steps: int = 40,
    lr_generator: float = 5e-5,
    lr_discriminator: float = 2e-4,
    adam_betas: tuple[float, float] = (0.0, 0.9),
    batch_size: int = 8,
    d_steps_per_g_step: int = 1,
    feed_forward: bool = False,
    loss_weights: FewShotLossWeights | None = None,
    content_loss: ContentLoss | None = None,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    chunk: int = 16,
    evaluate: bool = True,
    seconds: float | None = None,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> FineTuneResult:
    """Personalise the meta-learned model to T frames of a new person (paper §3.3).

    Args:
        embedder, generator, discriminator: the meta-learned E, G, D (left unchanged).
        frames, landmark_images: ``T×3×H×W`` in [-1, 1] (T >= 1), on the models' device.
        steps: generator updates (each followed by ``d_steps_per_g_step`` discriminator updates).
        lr_generator, lr_discriminator, adam_betas: Adam settings for G' (all weights and ψ') and
            D' (all weights, w' and b).
        batch_size: frames per step (sampled without replacement from the T frames, at most T).
        feed_forward: the FF variant: no optimisation (``steps`` is ignored), ψ' = P·ê_NEW.
        loss_weights / content_loss: the objective (default: :class:`FewShotLossWeights`; the
            embedding-match weight is unused here). ``content_loss`` overrides the weights' content part.
        autocast_dtype: e.g. ``torch.bfloat16`` to run forward passes under autocast.
        seed: seeds the frame sampling.
        chunk: frames per forward pass when embedding or evaluating all T frames.
        evaluate: measure the content loss on all T frames before and after (``nan`` when False).
        seconds: a wall-clock budget for the fine-tuning steps (stops early when spent).
        callback: ``callback(step, losses)`` after every step (1-based); returning True stops
            (a cancel button).
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or landmark_images.shape != frames.shape or frames.shape[0] < 1:
        raise ValueError(
            f"frames and landmark_images must both be T×3×H×W with T >= 1, got {tuple(frames.shape)} and "
            f"{tuple(landmark_images.shape)}"
        )
    if steps < 0 or batch_size < 1 or d_steps_per_g_step < 1 or chunk < 1:
        raise ValueError(
            f"need steps >= 0, batch_size >= 1, d_steps_per_g_step >= 1, chunk >= 1; got {steps}, {batch_size}, "
            f"{d_steps_per_g_step}, {chunk}"
        )
    _check_compatible(embedder, generator, discriminator)
    weights = loss_weights or FewShotLossWeights()
    if content_loss is None:
        content_loss = ContentLoss(weights)
    device = generator.P.device
    content_loss = content_loss.to(device)
    frames = frames.to(device)
    landmark_images = landmark_images.to(device)
    t_count = frames.shape[0]

    def autocast() -> Any:
        if autocast_dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=autocast_dtype)

    # ê_NEW, ψ' = P·ê_NEW, w' = w_0 + ê_NEW
    t0 = time.perf_counter()
    was_training = embedder.training
    embedder.eval()
    with torch.no_grad(), autocast():
        e_sum = torch.zeros(embedder.embed_dim, device=device)
        for s in range(0, t_count, chunk):
            e_sum += embedder(frames[s : s + chunk], landmark_images[s : s + chunk]).float().sum(dim=0)
    embedder.train(was_training)
    e_new = e_sum / t_count
    g_p = generator.personalize(e_new)
    d_p = discriminator.personalize(e_new)
    embed_seconds = time.perf_counter() - t0

    before = _chunked_content_loss(g_p, frames, landmark_images, content_loss, chunk) if evaluate else math.nan
    losses: list[dict[str, float]] = []
    t1 = time.perf_counter()
    if not feed_forward and steps > 0:
        g_p.train()
        d_p.train()
        opt_g = torch.optim.Adam(g_p.parameters(), lr=lr_generator, betas=adam_betas)
        opt_d = torch.optim.Adam(d_p.parameters(), lr=lr_discriminator, betas=adam_betas)
        rng = np.random.default_rng(seed)
        n = min(batch_size, t_count)
        for _ in range(steps):
            sel = torch.as_tensor(rng.choice(t_count, size=n, replace=False), device=device)
            x, y = frames[sel], landmark_images[sel]
            with autocast():
                fake = g_p(y)
                out_fake = d_p(fake, y)
                with torch.no_grad():
                    out_real = d_p(x, y)
                cnt = content_loss(fake, x)
                adv = generator_adversarial_loss(out_fake.score.float(), kind="hinge")
                fm = feature_matching_loss([f.float() for f in out_real.features], [f.float() for f in out_fake.features])
                loss_g = cnt.total + weights.adversarial * adv + weights.feature_matching * fm
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            fake_d = fake.detach()
            for _ in range(d_steps_per_g_step):
                with autocast():
                    out = d_p(torch.cat([x, fake_d]), torch.cat([y, y]))
                    real_score, fake_score = out.score.float().split(n)
                    loss_d = discriminator_loss(real_score, fake_score, kind="hinge")
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            losses.append({"loss_g": loss_g.item(), "loss_content": cnt.total.item(), "loss_adv": adv.item(),
                           "loss_fm": fm.item(), "loss_d": loss_d.item()})
            if callback is not None and callback(len(losses), losses[-1]):
                break
            if seconds is not None and time.perf_counter() - t1 >= seconds:
                break
    finetune_seconds = time.perf_counter() - t1
    after = _chunked_content_loss(g_p, frames, landmark_images, content_loss, chunk) if losses and evaluate else before
    g_p.eval()
    d_p.eval()
    return FineTuneResult(generator=g_p, discriminator=d_p, embedding=e_new, losses=losses,
                          content_loss_before=before, content_loss_after=after,
                          embed_seconds=embed_seconds, finetune_seconds=finetune_seconds)


# -- personalization of the few-shot family -------------------------------------------------------
def fewshot_loss_weights(folder: Path):
    """The loss weights the few-shot models in ``folder`` were trained with (``training_config.json``),
    so fine-tuning optimises the same objective; the paper's weights when the file is absent."""
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


@dataclass
class FewShotPersonalization:
    output_dir: Path
    frames: int
    steps: int
    embed_seconds: float
    finetune_seconds: float
    losses: list[dict[str, float]]


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
        """Keyword arguments of :func:`finetune_fewshot` on ``device``."""
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


def personalize_fewshot(person: PersonFrames, output_dir: str | Path, *, weights: str | Path | None = None,
                        steps: int | None = None, feed_forward: bool = False, seconds: float | None = None,
                        callback: Callable[[int, dict[str, float]], bool | None] | None = None,
                        schedule: FineTuneSchedule = FT_SCHEDULE) -> FewShotPersonalization:
    """FT (``schedule``; ``steps`` overrides its step count; stops early when ``seconds`` are spent) or
    FF (``feed_forward=True``: ψ = P·ê only) on ``person``; ``callback(step, losses)`` after each
    step (losses: ``loss_g``, ``loss_content``, ``loss_adv``, ``loss_fm``, ``loss_d``), True to stop."""
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
        "family": "fewshot", "frames": len(person), "size": int(person.frames.shape[1]), "steps": len(res.losses),
        "feed_forward": feed_forward,
        "embed_seconds": res.embed_seconds, "finetune_seconds": res.finetune_seconds,
        "schedule": {**dataclasses.asdict(schedule), "bfloat16": kwargs["autocast_dtype"] is not None}}, indent=2))
    return FewShotPersonalization(out, len(person), len(res.losses), res.embed_seconds, res.finetune_seconds,
                                  res.losses)
