"""The generator objective on one batch, shared by base training, meta-learning and personalization.

L = L_w^VGG + λ_r L_r^VGG + λ_id L_id + λ_eye L_eye + λ_mouth L_mouth + λ_adv L_adv (+ feature
matching) (MetaPortrait §3.1; docs/METHOD.md §7), plus an optional plain L1 on the output
(``pixel_l1``, not in the paper) that our CPU recipes use because the perceptual network is the
offline SFace fallback and dominates the step time at full resolution, and an optional
``pixel_ssim`` term ``1 − SSIM`` (L1 + SSIM is the photometric loss of Zhao et al. 2017; SSIM is
also what the evaluation compares with the mesh warp), and for a gated residual (refinement
``residual_gate=True``) a sparsity term ``gate_sparsity · mean(gate)`` that keeps the gate at zero
wherever the residual does not lower the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from metaportrait.models.face_align import align_faces
from metaportrait.training.datasets import PairSample
from metaportrait.training.losses import BaseLoss, IdentityLoss, LossWeights, PerceptualLoss, ssim


@dataclass(frozen=True)
class ObjectiveConfig:
    weights: dict = field(default_factory=dict)  # overrides of LossWeights fields
    pixel_l1: float = 0.0
    pixel_ssim: float = 0.0
    perceptual_network: Literal["auto", "vgg19", "sface"] = "auto"
    perceptual_pyramid: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    gate_sparsity: float = 0.0  # λ of mean(gate): the gated residual draws only where it pays

    def __post_init__(self) -> None:
        if isinstance(self.perceptual_pyramid, list):
            object.__setattr__(self, "perceptual_pyramid", tuple(self.perceptual_pyramid))
        if self.pixel_l1 < 0:
            raise ValueError(f"pixel_l1 must be >= 0, got {self.pixel_l1}")
        if self.pixel_ssim < 0:
            raise ValueError(f"pixel_ssim must be >= 0, got {self.pixel_ssim}")
        if self.gate_sparsity < 0:
            raise ValueError(f"gate_sparsity must be >= 0, got {self.gate_sparsity}")
        LossWeights(**self.weights)  # validates names and values


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    terms: dict[str, float]
    output: object  # GeneratorOutput


class GeneratorObjective(nn.Module):
    """Computes the generator loss of a :class:`PairSample` batch (frozen identity encoder inside)."""

    def __init__(self, identity_encoder: nn.Module, config: ObjectiveConfig = ObjectiveConfig()) -> None:
        super().__init__()
        self.config = config
        self.weights = LossWeights(**config.weights)
        self.encoder = identity_encoder.eval().requires_grad_(False)
        perceptual = PerceptualLoss(pyramid=config.perceptual_pyramid, network=config.perceptual_network,
                                    identity_encoder=identity_encoder)
        identity = IdentityLoss(identity_encoder) if self.weights.identity > 0 else None
        self.criterion = BaseLoss(weights=self.weights, perceptual=perceptual, identity=identity)

    @torch.no_grad()
    def source_identity(self, batch: PairSample) -> torch.Tensor:
        return self.encoder(align_faces(batch.source, batch.source_five_points)).float()

    def forward(self, generator: nn.Module, batch: PairSample, stage: Literal["warp", "full"] = "full",
                discriminator: nn.Module | None = None, identity: torch.Tensor | None = None) -> ObjectiveOutput:
        if stage not in ("warp", "full"):
            raise ValueError(f"stage must be 'warp' or 'full', got {stage!r}")
        if identity is None:
            identity = self.source_identity(batch)
        gen = generator.module if hasattr(generator, "module") else generator
        out = generator(batch.source, batch.source_landmark_image, batch.driving_landmark_image, identity,
                        prior_grid=batch.prior_grid if gen.config.use_prior else None, stage=stage)
        adversarial = discriminator is not None and stage == "full" and self.weights.adv > 0
        fake = real = None
        if adversarial:
            fake = discriminator(out.image, batch.driving_landmark_image)
            with torch.no_grad():
                real = discriminator(batch.driving, batch.driving_landmark_image)
        terms = self.criterion(
            out.warped, batch.driving,
            refined=out.image if stage == "full" else None,
            source=batch.source, driving_boxes=batch.driving_boxes,
            source_points=batch.source_five_points, driving_points=batch.driving_five_points,
            fake_logits=fake.logits if adversarial else None,
            real_feats=real.features if adversarial else None,
            fake_feats=fake.features if adversarial else None,
        )
        loss = terms.total
        logged = terms.as_floats()
        if self.config.pixel_l1 > 0:
            pixel = (out.image.float() - batch.driving.float()).abs().mean()
            loss = loss + self.config.pixel_l1 * pixel
            logged["pixel_l1"] = float(pixel.detach())
        if self.config.pixel_ssim > 0:
            structural = 1.0 - ssim(out.image, batch.driving)
            loss = loss + self.config.pixel_ssim * structural
            logged["pixel_ssim"] = float(structural.detach())
        gate = getattr(out, "gate", None)
        if gate is not None:
            logged["gate_mean"] = float(gate.detach().mean())
            if self.config.gate_sparsity > 0:
                loss = loss + self.config.gate_sparsity * gate.float().mean()
        logged["total"] = float(loss.detach())
        return ObjectiveOutput(loss=loss, terms=logged, output=out)
