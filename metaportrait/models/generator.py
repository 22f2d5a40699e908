"""MetaPortrait base generator: warping network + ID-preserving refinement network (paper §3.1).

One Hub model holding both networks (saved/loaded as one ``config.json`` + ``model.safetensors``).
``stage="warp"`` runs the warping network only (training stage 1 of docs/METHOD.md §7: the output
image is the warped source); ``stage="full"`` runs both (stage 2 and inference).

Presets (:data:`PRESETS`, :func:`generator_config`):

* ``"paper"`` — 256², official-like widths (E_w 64-…-512, 512-d motion code, flow at 64), no prior,
  tanh output; ≈130M parameters like the 130.28M MetaPortrait reports.
* ``"demo"`` — 256², mesh-warp prior as input (the network predicts a residual on it), residual
  output; sized for interactive use on a 2-core CPU.
* ``"demo-blend"`` — ``"demo"`` whose refinement output is a per-pixel mixture of the warped source
  and blurred copies of itself plus the bounded residual (``output_mode="blend"``); the embedded
  weights have that residual head at zero (trained alongside, written as zero by the recipe's
  ``zero_at_export=["refinement.head"]``) and personalization trains it.
* ``"demo-gated"`` — ``"demo"`` whose residual is gated to where the warp magnifies the source
  (refinement ``residual_gate=True``: the mouth opening, opening eyes, uncovered background and
  neck; exactly zero elsewhere).
* ``"tiny"`` / ``"tiny-direct"`` / ``"tiny-blend"`` / ``"tiny-gated"`` — 64², a few channels, for tests (with / without
  the prior; blend output).

Images are ``B×3×H×W`` in [-1, 1]; grids ``B×H×W×2`` (grid_sample, align_corners=False).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from metaportrait.models.hub import HubModel, ModelConfig
from metaportrait.models.refinement_network import RefinementConfig, RefinementNetwork
from metaportrait.models.warping_network import WarpingConfig, WarpingNetwork

Stage = Literal["warp", "full"]
_STAGES = ("warp", "full")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig(ModelConfig):
    """Configuration of :class:`MetaPortraitGenerator`: the two sub-networks' configs + z_id size.

    ``identity_dim`` must equal ``refinement.identity_dim`` and both sub-networks must share
    ``image_size`` and ``landmark_channels``.
    """

    warping: WarpingConfig = dataclasses.field(default_factory=WarpingConfig)
    refinement: RefinementConfig = dataclasses.field(default_factory=RefinementConfig)
    identity_dim: int = 128

    def validate(self) -> None:
        if not isinstance(self.warping, WarpingConfig):
            raise ValueError(f"GeneratorConfig.warping must be a WarpingConfig, got {self.warping!r}")
        if not isinstance(self.refinement, RefinementConfig):
            raise ValueError(f"GeneratorConfig.refinement must be a RefinementConfig, got {self.refinement!r}")
        self.check_positive_ints("identity_dim")
        if self.refinement.identity_dim != self.identity_dim:
            raise ValueError(
                f"GeneratorConfig.identity_dim ({self.identity_dim}) != refinement.identity_dim "
                f"({self.refinement.identity_dim})"
            )
        if self.warping.image_size != self.refinement.image_size:
            raise ValueError(
                f"GeneratorConfig: warping.image_size ({self.warping.image_size}) != "
                f"refinement.image_size ({self.refinement.image_size})"
            )
        if self.warping.landmark_channels != self.refinement.landmark_channels:
            raise ValueError(
                f"GeneratorConfig: warping.landmark_channels ({self.warping.landmark_channels}) != "
                f"refinement.landmark_channels ({self.refinement.landmark_channels})"
            )

    @property
    def image_size(self) -> int:
        return self.warping.image_size

    @property
    def use_prior(self) -> bool:
        return self.warping.use_prior


@dataclasses.dataclass
class GeneratorOutput:
    """Output of :class:`MetaPortraitGenerator`.

    Attributes:
        image: generated frame ``B×3×H×W`` in [-1, 1] (the warped source when stage == "warp").
        warped: warped source Ĩ_s ``B×3×H×W`` (supervised by L_w).
        grid: ``B×H×W×2`` sampling grid.
        flow: ``B×2×h×w`` residual flow at ``flow_size``.
        occlusion: ``B×1×H×W`` visibility in [0, 1].
        motion_code: ``B×motion_dim`` motion code z_w.
        masks: fusion masks of the refinement network (empty for stage == "warp").
        residual: ``B×3×H×W`` what the refinement network draws beyond the warped source (zero for
            stage == "warp"; see :class:`~metaportrait.models.refinement_network.RefinementOutput`).
        gate: ``B×1×H×W`` the residual's gate (refinement ``residual_gate=True`` and stage "full"; else None).
    """

    image: torch.Tensor
    warped: torch.Tensor
    grid: torch.Tensor
    flow: torch.Tensor
    occlusion: torch.Tensor
    motion_code: torch.Tensor
    masks: list[torch.Tensor] = dataclasses.field(default_factory=list)
    residual: torch.Tensor | None = None
    gate: torch.Tensor | None = None


class MetaPortraitGenerator(HubModel, tags=["generator"]):
    """MetaPortrait's base model: :class:`WarpingNetwork` followed by :class:`RefinementNetwork`.

    ``forward(source, source_landmarks, driving_landmarks, identity, prior_grid=None, stage="full")``.
    """

    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        cfg: GeneratorConfig = self.config  # type: ignore[assignment]
        self.warping = WarpingNetwork(cfg.warping)
        self.refinement = RefinementNetwork(cfg.refinement)

    @torch.no_grad()
    def is_geometry_only(self) -> bool:
        """True when the networks provably add nothing to their geometric prior: the warping network
        uses the mesh-warp prior and its flow head is exactly zero (so the grid *is* the prior), and
        the refinement network's residual head is exactly zero or absent (blend/residual output). The
        pipeline then skips the forward pass; its output is the same bit for bit."""
        cfg: GeneratorConfig = self.config  # type: ignore[assignment]
        if not cfg.warping.use_prior or cfg.refinement.output_mode not in ("residual", "blend"):
            return False
        head = self.warping.flow_head
        if bool(head.weight.any()) or bool(head.bias.any()):
            return False
        res = self.refinement.head
        return res is None or not (bool(res.weight.any()) or (res.bias is not None and bool(res.bias.any())))

    def forward(
        self,
        source: torch.Tensor,
        source_landmarks: torch.Tensor,
        driving_landmarks: torch.Tensor,
        identity: torch.Tensor | None,
        prior_grid: torch.Tensor | None = None,
        stage: Stage = "full",
    ) -> GeneratorOutput:
        """Generate the source person with the driving frame's pose and expression.

        Args:
            source: I_s ``B×3×H×W`` in [-1, 1].
            source_landmarks: L_s ``B×3×H×W`` in [-1, 1].
            driving_landmarks: L_d ``B×3×H×W`` in [-1, 1].
            identity: z_id ``B×identity_dim`` (may be None only when stage == "warp").
            prior_grid: ``B×H×W×2`` mesh-warp grid, required iff ``config.warping.use_prior``.
            stage: "warp" (warping network only) or "full".
        """
        if stage not in _STAGES:
            raise ValueError(f"stage must be one of {_STAGES}, got {stage!r}")
        warp = self.warping(source, source_landmarks, driving_landmarks, prior_grid)
        if stage == "warp":
            image, masks, gate = warp.warped, [], None
            residual = torch.zeros_like(warp.warped, dtype=torch.float32)
        elif stage == "full":
            if identity is None:
                raise ValueError("MetaPortraitGenerator: identity is required when stage == 'full'")
            ref = self.refinement(source, warp, identity, driving_landmarks)
            image, masks, residual, gate = ref.image, ref.masks, ref.residual, ref.gate
        else:
            raise ValueError(f"stage must be one of {_STAGES}, got {stage!r}")
        return GeneratorOutput(
            image=image,
            warped=warp.warped,
            grid=warp.grid,
            flow=warp.flow,
            occlusion=warp.occlusion,
            motion_code=warp.motion_code,
            masks=masks,
            residual=residual,
            gate=gate,
        )


PRESETS: dict[str, GeneratorConfig] = {
    "paper": GeneratorConfig(
        warping=WarpingConfig(
            image_size=256,
            base_channels=64,
            max_channels=512,
            motion_dim=512,
            encoder_depth=6,
            encoder_size=256,
            hourglass_depth=5,
            hourglass_channels=64,
            flow_size=64,
            use_prior=False,
            padding_mode="reflection",
        ),
        refinement=RefinementConfig(
            image_size=256,
            identity_dim=128,
            base_channels=64,
            max_channels=512,
            num_down=5,
            num_bottleneck_blocks=8,
            fusion_hidden=128,
            fusion_min_level=0,
            output_mode="direct",
        ),
        identity_dim=128,
    ),
    "demo": GeneratorConfig(
        warping=WarpingConfig(
            image_size=256,
            base_channels=16,
            max_channels=128,
            motion_dim=128,
            encoder_depth=4,
            encoder_size=64,
            hourglass_depth=4,
            hourglass_channels=16,
            flow_size=64,
            use_prior=True,
            padding_mode="reflection",
        ),
        refinement=RefinementConfig(
            image_size=256,
            identity_dim=128,
            base_channels=8,
            max_channels=64,
            num_down=3,
            num_bottleneck_blocks=1,
            fusion_hidden=16,
            fusion_min_level=2,
            output_mode="residual",
        ),
        identity_dim=128,
    ),
    "tiny": GeneratorConfig(
        warping=WarpingConfig(
            image_size=64,
            base_channels=8,
            max_channels=32,
            motion_dim=16,
            encoder_depth=3,
            encoder_size=32,
            hourglass_depth=2,
            hourglass_channels=8,
            flow_size=32,
            use_prior=True,
            padding_mode="reflection",
        ),
        refinement=RefinementConfig(
            image_size=64,
            identity_dim=128,
            base_channels=8,
            max_channels=32,
            num_down=2,
            num_bottleneck_blocks=1,
            fusion_hidden=8,
            fusion_min_level=1,
            output_mode="residual",
        ),
        identity_dim=128,
    ),
    "tiny-direct": GeneratorConfig(
        warping=WarpingConfig(
            image_size=64,
            base_channels=8,
            max_channels=32,
            motion_dim=16,
            encoder_depth=3,
            encoder_size=64,
            hourglass_depth=2,
            hourglass_channels=8,
            flow_size=32,
            use_prior=False,
            padding_mode="border",
        ),
        refinement=RefinementConfig(
            image_size=64,
            identity_dim=128,
            base_channels=8,
            max_channels=32,
            num_down=2,
            num_bottleneck_blocks=1,
            fusion_hidden=8,
            fusion_min_level=0,
            output_mode="direct",
        ),
        identity_dim=128,
    ),
}


def _with_blend(cfg: GeneratorConfig, **changes) -> GeneratorConfig:
    """``cfg`` whose refinement output is the ``blend`` head (σ 1 and 2 px); ``changes`` set further fields."""
    return cfg.replace(refinement=cfg.refinement.replace(output_mode="blend", blur_sigmas=(1.0, 2.0), **changes))


PRESETS["demo-blend"] = _with_blend(PRESETS["demo"])
PRESETS["tiny-blend"] = _with_blend(PRESETS["tiny"], blend_residual=False)
PRESETS["demo-gated"] = PRESETS["demo"].replace(refinement=PRESETS["demo"].refinement.replace(residual_gate=True))
PRESETS["tiny-gated"] = PRESETS["tiny"].replace(refinement=PRESETS["tiny"].refinement.replace(residual_gate=True))


def generator_config(name: str) -> GeneratorConfig:
    """The :class:`GeneratorConfig` of a preset (see :data:`PRESETS`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown generator preset {name!r}; available: {sorted(PRESETS)}") from None


__all__ = ["GeneratorConfig", "GeneratorOutput", "MetaPortraitGenerator", "PRESETS", "generator_config"]
