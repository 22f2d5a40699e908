"""The small U-Net (Ronneberger et al. 2015) shared by the networks that draw one facial feature on
an aligned crop (MetaPortrait §3.1: the refinement network draws what the warp cannot): the mouth
interior (:mod:`metaportrait.models.mouth_interior`) and the eyelids
(:mod:`metaportrait.models.eye_interior`).

:class:`CropUNet` is a mixin for a :class:`~metaportrait.models.hub.HubModel`: ``build_crop_unet``
adds the layers (``stem``, ``down``, ``bottleneck``, ``up``, ``head``) to the module itself, so the
weight names are the network's own, and ``crop_unet_change`` runs them on the concatenated inputs.
The head starts at zero: an untrained network predicts no change of the warp.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.models.hub import ModelConfig


@dataclasses.dataclass(frozen=True)
class CropUNetConfig(ModelConfig):
    """Fields shared by the crop networks' configs.

    Attributes:
        crop_size: side of the crop the network was trained on (a multiple of 2**levels).
        base_channels: width of the first level; doubled per level up to ``max_channels``.
        max_channels: channel cap.
        levels: number of stride-2 downsamplings.
        bottleneck_blocks: residual blocks at the coarsest level.
    """

    crop_size: int = 80
    base_channels: int = 16
    max_channels: int = 128
    levels: int = 3
    bottleneck_blocks: int = 2

    def validate(self) -> None:
        name = type(self).__name__
        self.check_positive_ints("crop_size", "base_channels", "max_channels", "levels")
        self.check_non_negative_ints("bottleneck_blocks")
        if self.crop_size % (2 ** self.levels):
            raise ValueError(f"{name}.crop_size ({self.crop_size}) must be a multiple of 2**levels ({2 ** self.levels})")
        if self.max_channels < self.base_channels:
            raise ValueError(f"{name}.max_channels ({self.max_channels}) must be >= base_channels ({self.base_channels})")


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.LeakyReLU(0.2))


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(c, c), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CropUNet:
    """Mixin for an ``nn.Module``: the U-Net layers and their forward pass (module docstring)."""

    def build_crop_unet(self, in_channels: int, cfg: CropUNetConfig, out_channels: int = 3) -> None:
        widths = [min(cfg.max_channels, cfg.base_channels * 2 ** k) for k in range(cfg.levels + 1)]
        self.stem = nn.Sequential(_conv(in_channels, widths[0]), _conv(widths[0], widths[0]))
        self.down = nn.ModuleList(
            nn.Sequential(_conv(widths[k], widths[k + 1], stride=2), _conv(widths[k + 1], widths[k + 1]))
            for k in range(cfg.levels)
        )
        self.bottleneck = nn.Sequential(*[_ResBlock(widths[-1]) for _ in range(cfg.bottleneck_blocks)])
        self.up = nn.ModuleList(
            nn.Sequential(_conv(widths[k + 1] + widths[k], widths[k]), _conv(widths[k], widths[k]))
            for k in reversed(range(cfg.levels))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # an untrained network gives the warp back
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def check_crop_inputs(levels: int, inputs: tuple[tuple[str, torch.Tensor, int], ...]) -> None:
        """``inputs``: (name, tensor, channels); the first is the reference for batch and size."""
        ref = inputs[0][1]
        for name, t, c in inputs:
            if t.ndim != 4 or t.shape[1] != c:
                raise ValueError(f"{name}: expected shape (B, {c}, H, W), got {tuple(t.shape)}")
            if t.shape[0] != ref.shape[0] or t.shape[-2:] != ref.shape[-2:]:
                raise ValueError(f"{name}: shape {tuple(t.shape)} does not match {inputs[0][0]} {tuple(ref.shape)}")
        step = 2 ** levels
        if ref.shape[-1] % step or ref.shape[-2] % step:
            raise ValueError(f"{inputs[0][0]}: side {tuple(ref.shape[-2:])} must be a multiple of {step}")

    def crop_unet_change(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output for the concatenated inputs ``x`` (``B×C×S×S``)."""
        x = self.stem(x)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


__all__ = ["CropUNet", "CropUNetConfig"]
