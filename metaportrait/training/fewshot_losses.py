"""Few-shot content loss L_CNT (VGG19 + VGGFace stand-in + optional multi-scale L1) and the
embedding-match loss L_MCH. Re-exported by :mod:`metaportrait.training.fewshot`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.training.fewshot_config import FewShotLossWeights
from metaportrait.training.losses import PerceptualLoss


# -- losses --------------------------------------------------------------------------------------
def multiscale_l1(x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125)) -> torch.Tensor:
    """Mean over an area-downsampled pyramid of ``mean|x - y|`` (``B×3×H×W`` in [-1, 1])."""
    if x.shape != y.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
    total = x.new_zeros((), dtype=torch.float32)
    for s in scales:
        if s == 1.0:
            xs, ys = x, y
        else:
            size = (max(1, round(x.shape[-2] * s)), max(1, round(x.shape[-1] * s)))
            xs, ys = F.interpolate(x, size=size, mode="area"), F.interpolate(y, size=size, mode="area")
        total = total + (xs.float() - ys.float()).abs().mean()
    return total / len(scales)


def embedding_match_loss(e_hat: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
    """L_MCH = mean |ê_i - W_i| (paper eq. 5, averaged over the batch and the D dimensions)."""
    if e_hat.shape != w_rows.shape:
        raise ValueError(f"ê {tuple(e_hat.shape)} and W_i {tuple(w_rows.shape)} must have the same shape")
    return (e_hat.float() - w_rows.float()).abs().mean()


@dataclass
class ContentLossTerms:
    """Weighted total and the unweighted parts (``None`` when a part has weight 0)."""

    total: torch.Tensor
    vgg19: torch.Tensor | None
    vggface: torch.Tensor | None
    pixel: torch.Tensor | None


class ContentLoss(nn.Module):
    """L_CNT = λ_VGG19·L_VGG19 + λ_VGGFace·L_VGGFace + λ_pix·multi-scale L1 (see the module docstring).

    The perceptual networks are frozen :class:`PerceptualLoss` instances: ``network="auto"``
    (VGG19, or SFace when VGG19 cannot be loaded) for L_VGG19 and ``network="sface"`` for L_VGGFace;
    when both end up on SFace the network is evaluated once with the two weights added.
    """

    def __init__(self, weights: FewShotLossWeights, identity_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.vgg19: PerceptualLoss | None = None
        self.vggface: PerceptualLoss | None = None
        if weights.vgg19 > 0:
            self.vgg19 = PerceptualLoss(network="auto", identity_encoder=identity_encoder)
        if weights.vggface > 0:
            if self.vgg19 is not None and self.vgg19.network == "sface":
                self.vggface = self.vgg19
            else:
                self.vggface = PerceptualLoss(network="sface", identity_encoder=identity_encoder)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> ContentLossTerms:
        w = self.weights
        total = fake.new_zeros((), dtype=torch.float32)
        vgg19 = vggface = pixel = None
        if self.vgg19 is not None:
            vgg19 = self.vgg19(fake, real).float()
            total = total + w.vgg19 * vgg19
        if self.vggface is not None:
            vggface = vgg19 if self.vggface is self.vgg19 else self.vggface(fake, real).float()
            total = total + w.vggface * vggface
        if w.pixel > 0:
            pixel = multiscale_l1(fake, real)
            total = total + w.pixel * pixel
        return ContentLossTerms(total=total, vgg19=vgg19, vggface=vggface, pixel=pixel)
