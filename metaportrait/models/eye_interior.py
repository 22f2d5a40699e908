"""Eye-interior network: the closing eyelid that no warp of an open eye can draw.

When the driving eye closes (a blink, an edit to closed eyes), the mesh warp squeezes the source's
open-eye triangles (iris, white, lashes) into a thin line; a closed eye is a lid of skin that the
open eye does not show. As the mouth-interior network does for an opening mouth
(:mod:`metaportrait.models.mouth_interior`; MetaPortrait, Zhang et al., CVPR 2023, §3.1: the
refinement network draws the content a warp cannot), this network draws that one feature, on a
crop aligned by the eye corners (:mod:`metaportrait.eyes` builds the crops; the eye on the image's
right is mirrored, so one set of weights serves both eyes). Its U-Net (:mod:`.crop_unet`) reads

* ``warped``: the mesh-warped output's eye crop (``B×3×S×S``, [-1, 1]) — the squeezed eye;
* ``contour``: a rasterised eye image (``B×3×S×S``, [0, 1]): the driving eye opening (filled
  contour), the driving lid lines (the contour drawn as a line, so a closed eye still shows where
  the lids meet) and the source's own eye opening (in the source crop);
* ``source``: the source's own eye crop (``B×3×S×S``), aligned by its own corners (its lid skin,
  lashes and colours);

and predicts the eye image ``B×3×S×S`` in [-1, 1], as a change of the warp (zero at
initialisation: the warp). :mod:`metaportrait.eyes` pastes it over the warp under a feathered
mask of the eye region, so everything outside the mask stays the warp exactly.
"""

from __future__ import annotations

import dataclasses

import torch

from metaportrait.models.crop_unet import CropUNet, CropUNetConfig
from metaportrait.models.hub import HubModel

CONTOUR_CHANNELS = 3  # driving eye fill, driving lid lines, source eye fill


@dataclasses.dataclass(frozen=True)
class EyeInteriorConfig(CropUNetConfig):
    """Configuration of :class:`EyeInteriorNetwork` (the U-Net fields: :class:`CropUNetConfig`).

    Attributes:
        eye_width: distance between the eye corners in crop pixels (the crops' scale).
    """

    crop_size: int = 48
    eye_width: int = 24
    max_channels: int = 64

    def validate(self) -> None:
        super().validate()
        self.check_positive_ints("eye_width")
        if not 4 <= self.eye_width < self.crop_size:
            raise ValueError(f"EyeInteriorConfig.eye_width ({self.eye_width}) must be in [4, crop_size)")


@dataclasses.dataclass
class EyeInteriorOutput:
    """``image``: the predicted eye crop ``B×3×S×S`` in [-1, 1] (use it under the eye mask)."""

    image: torch.Tensor


class EyeInteriorNetwork(HubModel, CropUNet, tags=["eye-interior"]):
    """``forward(warped, contour, source) -> EyeInteriorOutput`` (see the module docstring)."""

    config_class = EyeInteriorConfig

    def __init__(self, config: EyeInteriorConfig) -> None:
        super().__init__(config)
        self.build_crop_unet(6 + CONTOUR_CHANNELS, self.config)  # type: ignore[arg-type]

    def forward(self, warped: torch.Tensor, contour: torch.Tensor, source: torch.Tensor) -> EyeInteriorOutput:
        cfg: EyeInteriorConfig = self.config  # type: ignore[assignment]
        self.check_crop_inputs(cfg.levels, (("warped", warped, 3), ("contour", contour, CONTOUR_CHANNELS),
                                            ("source", source, 3)))
        change = self.crop_unet_change(torch.cat([warped, contour.to(warped.dtype), source], dim=1))
        return EyeInteriorOutput(image=torch.clamp(warped + change, -1.0, 1.0))


__all__ = ["CONTOUR_CHANNELS", "EyeInteriorConfig", "EyeInteriorNetwork", "EyeInteriorOutput"]
