"""Mouth-interior network: what no warp of the source can draw when the mouth opens.

MetaPortrait's ID-preserving refinement network (Zhang et al., CVPR 2023, §3.1) exists to add the
content a warp cannot carry; the clearest case is the inside of a mouth that opens on a source
whose mouth is closed (teeth, tongue, the dark cavity and its shading). This network does that one
job, at the mouth's own resolution, on a crop aligned by the mouth corners
(:mod:`metaportrait.mouth` builds the crops): a small U-Net (Ronneberger et al. 2015) reads

* ``warped``: the mesh-warped output's mouth crop (``B×3×S×S``, [-1, 1]) — the smear to replace;
* ``lips``: a rasterised lip image (``B×3×S×S``, [0, 1]): the driving inner-lip polygon, the
  driving outer-lip polygon and the source's own inner-lip polygon (in the source crop);
* ``source``: the source's own mouth crop (``B×3×S×S``), aligned by its own corners, so teeth that
  the source shows can be copied;

and predicts the mouth image ``B×3×S×S`` in [-1, 1]. Only its inner-lip part is used:
:func:`composite` pastes it over the warp with a feathered inner-lip mask, so everything outside
the mask stays the warp exactly. Trained with L1 + perceptual + a patch-adversarial term
(``metaportrait.training.train_mouth``) so it draws teeth, not an average smear.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.models.hub import HubModel, ModelConfig

LIP_CHANNELS = 3  # driving inner fill, driving outer fill, source inner fill


@dataclasses.dataclass(frozen=True)
class MouthInteriorConfig(ModelConfig):
    """Configuration of :class:`MouthInteriorNetwork`.

    Attributes:
        crop_size: side of the mouth crop the network was trained on (a multiple of 2**levels).
        mouth_width: distance between the mouth corners in crop pixels (the crops' scale).
        base_channels: width of the first level; doubled per level up to ``max_channels``.
        max_channels: channel cap.
        levels: number of stride-2 downsamplings.
        bottleneck_blocks: residual blocks at the coarsest level.
    """

    crop_size: int = 80
    mouth_width: int = 40
    base_channels: int = 16
    max_channels: int = 128
    levels: int = 3
    bottleneck_blocks: int = 2

    def validate(self) -> None:
        self.check_positive_ints("crop_size", "mouth_width", "base_channels", "max_channels", "levels")
        self.check_non_negative_ints("bottleneck_blocks")
        if self.crop_size % (2 ** self.levels):
            raise ValueError(f"MouthInteriorConfig.crop_size ({self.crop_size}) must be a multiple of 2**levels ({2 ** self.levels})")
        if not 4 <= self.mouth_width < self.crop_size:
            raise ValueError(f"MouthInteriorConfig.mouth_width ({self.mouth_width}) must be in [4, crop_size)")
        if self.max_channels < self.base_channels:
            raise ValueError(f"MouthInteriorConfig.max_channels ({self.max_channels}) must be >= base_channels ({self.base_channels})")


@dataclasses.dataclass
class MouthInteriorOutput:
    """``image``: the predicted mouth crop ``B×3×S×S`` in [-1, 1] (use its inner-lip part)."""

    image: torch.Tensor


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.LeakyReLU(0.2))


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(c, c), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MouthInteriorNetwork(HubModel, tags=["mouth-interior"]):
    """``forward(warped, lips, source) -> MouthInteriorOutput`` (see the module docstring)."""

    config_class = MouthInteriorConfig

    def __init__(self, config: MouthInteriorConfig) -> None:
        super().__init__(config)
        cfg: MouthInteriorConfig = self.config  # type: ignore[assignment]
        widths = [min(cfg.max_channels, cfg.base_channels * 2 ** k) for k in range(cfg.levels + 1)]
        self.stem = nn.Sequential(_conv(6 + LIP_CHANNELS, widths[0]), _conv(widths[0], widths[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_conv(widths[k], widths[k + 1], stride=2), _conv(widths[k + 1], widths[k + 1]))
            for k in range(cfg.levels)
        )
        self.bottleneck = nn.Sequential(*[_ResBlock(widths[-1]) for _ in range(cfg.bottleneck_blocks)])
        self.up = nn.ModuleList(
            nn.Sequential(_conv(widths[k + 1] + widths[k], widths[k]), _conv(widths[k], widths[k]))
            for k in reversed(range(cfg.levels))
        )
        self.head = nn.Conv2d(widths[0], 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # an untrained network gives the warp back
        nn.init.zeros_(self.head.bias)

    def forward(self, warped: torch.Tensor, lips: torch.Tensor, source: torch.Tensor) -> MouthInteriorOutput:
        cfg: MouthInteriorConfig = self.config  # type: ignore[assignment]
        for name, t, c in (("warped", warped, 3), ("lips", lips, LIP_CHANNELS), ("source", source, 3)):
            if t.ndim != 4 or t.shape[1] != c:
                raise ValueError(f"{name}: expected shape (B, {c}, H, W), got {tuple(t.shape)}")
            if t.shape[0] != warped.shape[0] or t.shape[-2:] != warped.shape[-2:]:
                raise ValueError(f"{name}: shape {tuple(t.shape)} does not match warped {tuple(warped.shape)}")
        step = 2 ** cfg.levels
        if warped.shape[-1] % step or warped.shape[-2] % step:
            raise ValueError(f"warped: side {tuple(warped.shape[-2:])} must be a multiple of {step}")
        x = self.stem(torch.cat([warped, lips.to(warped.dtype), source], dim=1))
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        # predicted as a change of the warp
        return MouthInteriorOutput(image=torch.clamp(warped + self.head(x), -1.0, 1.0))


def composite(warped: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``warped`` outside ``mask`` (``B×1×H×W`` in [0, 1]), ``image`` inside, blended linearly."""
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != warped.shape[-2:]:
        raise ValueError(f"mask: expected shape (B, 1, {warped.shape[2]}, {warped.shape[3]}), got {tuple(mask.shape)}")
    return warped + mask * (image - warped)


__all__ = ["LIP_CHANNELS", "MouthInteriorConfig", "MouthInteriorNetwork", "MouthInteriorOutput", "composite"]
