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

from metaportrait.models.crop_unet import CropUNet, CropUNetConfig
from metaportrait.models.hub import HubModel

LIP_CHANNELS = 3  # driving inner fill, driving outer fill, source inner fill


@dataclasses.dataclass(frozen=True)
class MouthInteriorConfig(CropUNetConfig):
    """Configuration of :class:`MouthInteriorNetwork` (the U-Net fields: :class:`CropUNetConfig`).

    Attributes:
        mouth_width: distance between the mouth corners in crop pixels (the crops' scale).
    """

    crop_size: int = 80
    mouth_width: int = 40

    def validate(self) -> None:
        super().validate()
        self.check_positive_ints("mouth_width")
        if not 4 <= self.mouth_width < self.crop_size:
            raise ValueError(f"MouthInteriorConfig.mouth_width ({self.mouth_width}) must be in [4, crop_size)")


@dataclasses.dataclass
class MouthInteriorOutput:
    """``image``: the predicted mouth crop ``B×3×S×S`` in [-1, 1] (use its inner-lip part)."""

    image: torch.Tensor


class MouthInteriorNetwork(HubModel, CropUNet, tags=["mouth-interior"]):
    """``forward(warped, lips, source) -> MouthInteriorOutput`` (see the module docstring)."""

    config_class = MouthInteriorConfig

    def __init__(self, config: MouthInteriorConfig) -> None:
        super().__init__(config)
        self.build_crop_unet(6 + LIP_CHANNELS, self.config)  # type: ignore[arg-type]

    def forward(self, warped: torch.Tensor, lips: torch.Tensor, source: torch.Tensor) -> MouthInteriorOutput:
        cfg: MouthInteriorConfig = self.config  # type: ignore[assignment]
        self.check_crop_inputs(cfg.levels, (("warped", warped, 3), ("lips", lips, LIP_CHANNELS), ("source", source, 3)))
        change = self.crop_unet_change(torch.cat([warped, lips.to(warped.dtype), source], dim=1))
        # predicted as a change of the warp
        return MouthInteriorOutput(image=torch.clamp(warped + change, -1.0, 1.0))


def composite(warped: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``warped`` outside ``mask`` (``B×1×H×W`` in [0, 1]), ``image`` inside, blended linearly."""
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != warped.shape[-2:]:
        raise ValueError(f"mask: expected shape (B, 1, {warped.shape[2]}, {warped.shape[3]}), got {tuple(mask.shape)}")
    return warped + mask * (image - warped)


__all__ = ["LIP_CHANNELS", "MouthInteriorConfig", "MouthInteriorNetwork", "MouthInteriorOutput", "composite"]
