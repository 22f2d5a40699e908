"""Multi-scale patch discriminator for L_adv of MetaPortrait (paper §3.1; docs/METHOD.md §7).

pix2pixHD-style (Wang et al. 2018), as the official code: ``num_scales`` PatchGAN discriminators,
the k-th reading the input average-pooled ``k`` times (3×3, stride 2). Each is
``Conv4×4 s2 → LReLU``, ``num_layers − 1`` × ``Conv4×4 s2 → norm → LReLU`` (widths doubling up to
``max_channels``), ``Conv4×4 s1 → norm → LReLU``, ``Conv4×4 s1 → 1`` patch logits. Spectral norm is
optional (``torch.nn.utils.parametrizations.spectral_norm`` on every conv). The input is the
image (``B×3×H×W`` in [-1, 1]) optionally concatenated with a landmark image condition.

The output keeps every scale's logits and intermediate activations (for the LSGAN loss and the
feature-matching loss, weight 10 in the official code).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from metaportrait.models.hub import HubModel, ModelConfig

DiscNorm = Literal["instance", "none"]
_NORMS = ("instance", "none")


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig(ModelConfig):
    """Configuration of :class:`MultiScalePatchDiscriminator`.

    Attributes:
        image_channels: channels of the judged image (3).
        condition_channels: channels of the optional condition (3 for a landmark image, 0 = none).
        base_channels: width of the first conv.
        max_channels: channel cap.
        num_layers: stride-2 convs per scale (pix2pixHD: 3).
        num_scales: number of discriminators at halving resolutions (pix2pixHD: 2-3).
        spectral_norm: spectral normalisation of every conv.
        norm: normalisation of the inner convs ("instance" or "none").
    """

    image_channels: int = 3
    condition_channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    num_layers: int = 3
    num_scales: int = 2
    spectral_norm: bool = True
    norm: DiscNorm = "instance"

    def validate(self) -> None:
        self.check_positive_ints("image_channels", "base_channels", "max_channels", "num_layers", "num_scales")
        self.check_non_negative_ints("condition_channels")
        if not isinstance(self.spectral_norm, bool):
            raise ValueError(f"DiscriminatorConfig.spectral_norm must be a bool, got {self.spectral_norm!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"DiscriminatorConfig.norm must be one of {_NORMS}, got {self.norm!r}")
        if self.max_channels < self.base_channels:
            raise ValueError(
                f"DiscriminatorConfig.max_channels ({self.max_channels}) must be >= base_channels ({self.base_channels})"
            )

    def min_input_size(self) -> int:
        """Smallest input side for which every scale still yields at least one patch logit."""
        # num_layers stride-2 convs, two stride-1 4×4 convs (each -1 with padding 2 -> +1), pools.
        return 2 ** (self.num_layers + self.num_scales - 1)


@dataclasses.dataclass
class DiscriminatorOutput:
    """Output of :class:`MultiScalePatchDiscriminator`.

    Attributes:
        logits: per scale (finest first) the ``B×1×h×w`` patch logits.
        features: per scale the list of intermediate activations (for feature matching).
    """

    logits: list[torch.Tensor]
    features: list[list[torch.Tensor]]


class PatchDiscriminator(nn.Module):
    """One pix2pixHD ``NLayerDiscriminator``; returns (logits, intermediate activations)."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        sn = _spectral_norm if config.spectral_norm else (lambda m: m)

        def norm(c: int) -> nn.Module:
            if config.norm == "instance":
                return nn.InstanceNorm2d(c, affine=True)
            elif config.norm == "none":
                return nn.Identity()
            else:
                raise ValueError(f"unknown norm {config.norm!r}")

        c_in = config.image_channels + config.condition_channels
        c = config.base_channels
        blocks: list[nn.Module] = [nn.Sequential(sn(nn.Conv2d(c_in, c, 4, stride=2, padding=2)), nn.LeakyReLU(0.2))]
        for _ in range(1, config.num_layers):
            c_next = min(config.max_channels, c * 2)
            blocks.append(
                nn.Sequential(sn(nn.Conv2d(c, c_next, 4, stride=2, padding=2)), norm(c_next), nn.LeakyReLU(0.2))
            )
            c = c_next
        c_next = min(config.max_channels, c * 2)
        blocks.append(nn.Sequential(sn(nn.Conv2d(c, c_next, 4, stride=1, padding=2)), norm(c_next), nn.LeakyReLU(0.2)))
        blocks.append(nn.Sequential(sn(nn.Conv2d(c_next, 1, 4, stride=1, padding=2))))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats[-1], feats[:-1]


class MultiScalePatchDiscriminator(HubModel, tags=["discriminator"]):
    """pix2pixHD multi-scale patch discriminator (optionally conditioned on a landmark image).

    ``forward(image, condition=None) -> DiscriminatorOutput``; ``image`` ``B×3×H×W`` in [-1, 1],
    ``condition`` ``B×condition_channels×H×W`` (required iff ``condition_channels > 0``).
    """

    config_class = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__(config)
        cfg: DiscriminatorConfig = self.config  # type: ignore[assignment]
        self.discriminators = nn.ModuleList(PatchDiscriminator(cfg) for _ in range(cfg.num_scales))

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None) -> DiscriminatorOutput:
        cfg: DiscriminatorConfig = self.config  # type: ignore[assignment]
        if image.ndim != 4 or image.shape[1] != cfg.image_channels:
            raise ValueError(f"image: expected shape (B, {cfg.image_channels}, H, W), got {tuple(image.shape)}")
        if min(image.shape[-2:]) < cfg.min_input_size():
            raise ValueError(
                f"image: side {tuple(image.shape[-2:])} is too small for {cfg.num_scales} scales of "
                f"{cfg.num_layers} layers (need >= {cfg.min_input_size()})"
            )
        if cfg.condition_channels > 0:
            if condition is None:
                raise ValueError(f"condition: this discriminator needs a {cfg.condition_channels}-channel condition")
            if condition.ndim != 4 or condition.shape[0] != image.shape[0] or condition.shape[1] != cfg.condition_channels or condition.shape[-2:] != image.shape[-2:]:
                raise ValueError(
                    f"condition: expected shape ({image.shape[0]}, {cfg.condition_channels}, "
                    f"{image.shape[2]}, {image.shape[3]}), got {tuple(condition.shape)}"
                )
            x = torch.cat([image, condition.to(image.dtype)], dim=1)
        elif condition is not None:
            raise ValueError("condition: given, but this discriminator has condition_channels == 0")
        else:
            x = image
        logits, features = [], []
        for k, disc in enumerate(self.discriminators):
            if k > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            lg, fs = disc(x)
            logits.append(lg)
            features.append(fs)
        return DiscriminatorOutput(logits=logits, features=features)


DISCRIMINATOR_PRESETS: dict[str, DiscriminatorConfig] = {
    "paper": DiscriminatorConfig(base_channels=64, max_channels=512, num_layers=4, num_scales=3, spectral_norm=True),
    "demo": DiscriminatorConfig(base_channels=32, max_channels=256, num_layers=3, num_scales=2, spectral_norm=True),
    "tiny": DiscriminatorConfig(base_channels=8, max_channels=32, num_layers=2, num_scales=2, spectral_norm=True),
}


def discriminator_config(name: str) -> DiscriminatorConfig:
    """The :class:`DiscriminatorConfig` of a preset ("paper", "demo", "tiny")."""
    try:
        return DISCRIMINATOR_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown discriminator preset {name!r}; available: {sorted(DISCRIMINATOR_PRESETS)}") from None


__all__ = [
    "DISCRIMINATOR_PRESETS",
    "DiscriminatorConfig",
    "DiscriminatorOutput",
    "MultiScalePatchDiscriminator",
    "PatchDiscriminator",
    "discriminator_config",
]
