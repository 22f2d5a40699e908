"""ID-preserving refinement network of MetaPortrait (paper §3.1, eqs. 1-2; docs/METHOD.md §6).

* A source feature encoder gives features ``f_k`` at scales ``1/2**k`` (k = 0..num_down).
* Each ``f_k`` is warped by the warping network's grid (resampled to that scale) and weighted by
  the occlusion map: ``f̃_k = grid_sample(f_k, grid_k) · O_k``.
* The decoder starts from ``f̃_num_down`` and is a cascade of :class:`~metaportrait.models.layers.FusionBlock`
  conditioned on the identity code ``z_id`` (AdaIN, eq. 1) and, SPADE-style, on
  ``[f̃_k, warped source, driving landmark image, occlusion]`` at its scale (eq. 2), with the
  attention mask ``M = sigmoid(Conv(h_in))`` choosing between the two.
* Output head: ``output_mode="direct"`` gives ``tanh(Conv(h))`` as in the paper;
  ``output_mode="residual"`` gives ``clamp(Ĩ_s + 2·tanh(Conv(h)), −1, 1)`` with the last conv
  zero-initialised, so at step 0 the output is exactly the warped source Ĩ_s (training starts at
  the warp's quality instead of from noise); ``output_mode="blend"`` first mixes Ĩ_s with
  Gaussian blurs of itself (σ in ``blur_sigmas``, pixels at 256², scaled with ``image_size``) by
  per-pixel softmax weights ``π = softmax(Conv(h))`` and then (``blend_residual``) adds the same bounded residual:
  ``clamp(Σ_k π_k·G_σk(Ĩ_s) + 2·tanh(Conv(h)), −1, 1)`` (σ_0 = 0 is Ĩ_s itself). Both heads start
  at zero, so at step 0 the output is the mean of Ĩ_s and its blurs. Why: where the warp's edges
  are uncertain (hair, the face outline, the mouth), the image that minimises the expected L1 /
  maximises SSIM is a local average over the possible positions; how much to blur where depends
  mostly on the geometry (landmarks, warp, occlusion) rather than on who the person is, so it
  generalises from a few training people where a free residual over-fits them (measured:
  ``weights/README.md``).

**Refinement only where geometry fails** (``residual_gate=True``): the residual is multiplied by
``R ⊙ σ(Conv(h))``. ``R`` (:func:`stretch_regions`) is computed from the warp grid alone: the pixels
where the warp *magnifies* the source (the area ratio ``det ∂grid/∂x`` below ``gate_stretch[1]``,
fully from ``gate_stretch[0]``; folds included), dilated by ``gate_dilate`` pixels — an opening mouth
(the closed lips' sliver stretched over the cavity), an opening eye, the background and neck
uncovered beside a turning head. Outside ``R`` the residual is exactly zero, so the network cannot
blur or over-fit skin and hair that the warp carries; inside, the learned gate ``σ(Conv(h))``
(``RefinementOutput.gate``) is pushed towards zero by a sparsity term of the training objective
(``ObjectiveConfig.gate_sparsity``), so it draws only where drawing lowers the loss.

``z_id`` is L2-normalised inside (face-recognition embeddings are compared by cosine; SFace 128-d,
ArcFace 512-d). Images are ``B×3×H×W`` in [-1, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.models.hub import HubModel, ModelConfig
from metaportrait.models.layers import DownBlock, FusionBlock, gaussian_blur, resize_grid, resize_map
from metaportrait.models.warping_network import WarpingOutput, check_grid, check_image

OutputMode = Literal["residual", "direct", "blend"]
_OUTPUT_MODES = ("residual", "direct", "blend")


@dataclasses.dataclass(frozen=True)
class RefinementConfig(ModelConfig):
    """Configuration of :class:`RefinementNetwork`.

    Attributes:
        image_size: side of the square images (pixels).
        identity_dim: size of the identity embedding z_id (128 = SFace, 512 = ArcFace).
        landmark_channels: channels of the driving landmark image.
        base_channels: encoder/decoder width at full resolution (doubles per scale up to max_channels).
        max_channels: channel cap.
        num_down: number of stride-2 encoder levels; the decoder starts at ``image_size / 2**num_down``.
        num_bottleneck_blocks: fusion blocks at the coarsest scale.
        fusion_hidden: hidden channels of the FiLM/SPADE branch of each fusion normalisation.
        fusion_min_level: decoder levels ``k >= fusion_min_level`` (scale ``1/2**k``) are fusion
            blocks; finer levels are a plain 3×3 conv over ``[h, f̃_k, Ĩ_s, L_d, O]`` (much cheaper
            at 128²-256² on a CPU). 0 = fusion blocks everywhere (the paper).
        output_mode: ``"direct"`` (tanh image, the paper), ``"residual"`` (warped + bounded delta)
            or ``"blend"`` (per-pixel mixture of the warped image and its blurs + bounded delta).
        blur_sigmas: Gaussian σ (pixels at 256²) of the blurred copies mixed by ``"blend"``.
        blend_residual: whether ``"blend"`` adds the bounded residual ``2·tanh(Conv(h))``; without it
            the output is only the per-pixel mixture (no free pixel values: nothing per-person to
            over-fit).
    """

    image_size: int = 256
    identity_dim: int = 128
    landmark_channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    num_down: int = 4
    num_bottleneck_blocks: int = 2
    fusion_hidden: int = 128
    fusion_min_level: int = 0
    output_mode: OutputMode = "direct"
    blur_sigmas: tuple[float, ...] = (1.0, 2.0)
    blend_residual: bool = True
    residual_gate: bool = False
    gate_stretch: tuple[float, float] = (0.25, 0.5)
    gate_dilate: int = 4

    def validate(self) -> None:
        self.check_positive_ints("image_size", "identity_dim", "landmark_channels", "base_channels", "max_channels",
                                 "fusion_hidden")
        self.check_non_negative_ints("num_down", "num_bottleneck_blocks", "fusion_min_level")
        if self.output_mode not in _OUTPUT_MODES:
            raise ValueError(f"RefinementConfig.output_mode must be one of {_OUTPUT_MODES}, got {self.output_mode!r}")
        if not self.blur_sigmas or any(
            not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 8 for v in self.blur_sigmas
        ):
            raise ValueError(f"RefinementConfig.blur_sigmas must be a non-empty tuple of σ in (0, 8], got {self.blur_sigmas!r}")
        if not isinstance(self.blend_residual, bool):
            raise ValueError(f"RefinementConfig.blend_residual must be a bool, got {self.blend_residual!r}")
        if not isinstance(self.residual_gate, bool):
            raise ValueError(f"RefinementConfig.residual_gate must be a bool, got {self.residual_gate!r}")
        lo_hi = tuple(self.gate_stretch) if isinstance(self.gate_stretch, (tuple, list)) else ()
        if len(lo_hi) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lo_hi) \
                or not 0 <= lo_hi[0] < lo_hi[1] <= 1:
            raise ValueError(f"RefinementConfig.gate_stretch must be (lo, hi) with 0 <= lo < hi <= 1, got {self.gate_stretch!r}")
        if not isinstance(self.gate_dilate, int) or isinstance(self.gate_dilate, bool) or not 0 <= self.gate_dilate <= 32:
            raise ValueError(f"RefinementConfig.gate_dilate must be an int in [0, 32], got {self.gate_dilate!r}")
        if self.residual_gate and (self.output_mode == "direct" or (self.output_mode == "blend" and not self.blend_residual)):
            raise ValueError("RefinementConfig.residual_gate needs a residual head (output_mode 'residual', or "
                             "'blend' with blend_residual)")
        if self.fusion_min_level > self.num_down:
            raise ValueError(
                f"RefinementConfig.fusion_min_level ({self.fusion_min_level}) must be <= num_down ({self.num_down})"
            )
        if self.max_channels < self.base_channels:
            raise ValueError(
                f"RefinementConfig.max_channels ({self.max_channels}) must be >= base_channels ({self.base_channels})"
            )
        if self.image_size % 2**self.num_down or self.image_size // 2**self.num_down < 2:
            raise ValueError(
                f"RefinementConfig: image_size ({self.image_size}) must be divisible by 2**num_down "
                f"(num_down={self.num_down}) with at least 2×2 at the bottom"
            )

    def width(self, level: int) -> int:
        """Channels at scale ``1/2**level``."""
        return min(self.max_channels, self.base_channels * 2**level)

    def cond_channels(self, level: int) -> int:
        """Channels of the fusion condition at a level: warped features, warped image, L_d, occlusion."""
        return self.width(level) + 3 + self.landmark_channels + 1


@dataclasses.dataclass
class RefinementOutput:
    """Output of :class:`RefinementNetwork`.

    Attributes:
        image: refined image Ĩ_y, ``B×3×H×W`` in [-1, 1].
        masks: the fusion masks M of every fusion normalisation, coarse to fine, each ``B×1×h×w``.
        blend_weights: ``B×(1+K)×H×W`` softmax weights of Ĩ_s and its K blurs (``output_mode="blend"``;
            None otherwise).
        residual: ``B×3×H×W`` what the network draws beyond the warped source: ``image − Ĩ_s`` for
            ``"residual"``/``"direct"``, the bounded residual ``2·tanh(Conv(h))`` alone for
            ``"blend"`` (its blur mixture is not content; zero without a residual head). The
            full-resolution renderer adds it, upsampled, where it has content.
        gate: ``B×1×H×W`` ``R ⊙ σ(Conv(h))``, the gate the residual was multiplied by
            (``residual_gate=True``; None otherwise). Zero wherever the warp does not magnify.
    """

    image: torch.Tensor
    masks: list[torch.Tensor]
    blend_weights: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    gate: torch.Tensor | None = None


def stretch_regions(grid: torch.Tensor, lo: float = 0.25, hi: float = 0.5, dilate: int = 4) -> torch.Tensor:
    """``B×1×H×W`` in [0, 1]: where the sampling ``grid`` (``B×H×W×2``, grid_sample units) magnifies
    the source — 1 where the source area under an output pixel is ``<= lo`` of the pixel's own (folds:
    negative), 0 from ``hi`` on, linear between — without specks under 3 pixels across (a 3×3
    morphological opening) and grown by ``dilate`` pixels (max filter).

    The area ratio is the Jacobian determinant of the grid by finite differences (1 for the identity
    grid at any size; border rows repeat their neighbour's)."""
    if grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"stretch_regions: expected a B×H×W×2 grid, got shape {tuple(grid.shape)}")
    g = grid.float()
    h, w = g.shape[1:3]
    gx = torch.cat([g[:, :, 1:] - g[:, :, :-1], g[:, :, -1:] - g[:, :, -2:-1]], dim=2) * (w / 2.0)
    gy = torch.cat([g[:, 1:] - g[:, :-1], g[:, -1:] - g[:, -2:-1]], dim=1) * (h / 2.0)
    det = gx[..., 0] * gy[..., 1] - gy[..., 0] * gx[..., 1]  # B×H×W
    region = torch.clamp((hi - det) / (hi - lo), 0.0, 1.0).unsqueeze(1)
    # opening (3×3 min then max filter) drops specks under 3 px — the warp's tiny slivers along the
    # face outline, where nothing is uncovered — then the dilation grows what is left
    region = -F.max_pool2d(-region, 3, stride=1, padding=1)
    return F.max_pool2d(region, 2 * dilate + 3, stride=1, padding=dilate + 1)


class RefinementNetwork(HubModel, tags=["refinement-network"]):
    """MetaPortrait's ID-preserving refinement network (paper §3.1, eqs. 1-2).

    ``forward(source, warp, identity, driving_landmarks) -> RefinementOutput``.
    """

    config_class = RefinementConfig

    def __init__(self, config: RefinementConfig) -> None:
        super().__init__(config)
        cfg: RefinementConfig = self.config  # type: ignore[assignment]
        n = cfg.num_down
        self.stem = nn.Sequential(nn.Conv2d(3, cfg.width(0), 3, padding=1), nn.LeakyReLU(0.2))
        self.encoder = nn.ModuleList(DownBlock(cfg.width(k), cfg.width(k + 1)) for k in range(n))
        self.bottleneck = nn.ModuleList(
            FusionBlock(cfg.width(n), cfg.width(n), cfg.identity_dim, cfg.cond_channels(n), cfg.fusion_hidden)
            for _ in range(cfg.num_bottleneck_blocks)
        )
        # decoder[j] produces level k = n - 1 - j from level k + 1
        decoder: list[nn.Module] = []
        for k in reversed(range(n)):
            if k >= cfg.fusion_min_level:
                decoder.append(
                    FusionBlock(cfg.width(k + 1), cfg.width(k), cfg.identity_dim, cfg.cond_channels(k), cfg.fusion_hidden)
                )
            else:
                decoder.append(nn.Conv2d(cfg.width(k + 1) + cfg.cond_channels(k), cfg.width(k), 3, padding=1))
        self.decoder = nn.ModuleList(decoder)
        self.head = (
            nn.Conv2d(cfg.width(0), 3, 3, padding=1)
            if cfg.output_mode != "blend" or cfg.blend_residual
            else None
        )
        if cfg.residual_gate:
            self.gate_head = nn.Conv2d(cfg.width(0), 1, 3, padding=1)
            nn.init.zeros_(self.gate_head.weight)
            nn.init.zeros_(self.gate_head.bias)  # σ(0) = ½ inside the regions at step 0
        if cfg.output_mode in ("residual", "blend"):
            if self.head is not None:
                nn.init.zeros_(self.head.weight)
                nn.init.zeros_(self.head.bias)
            if cfg.output_mode == "blend":
                self.blend_head = nn.Conv2d(cfg.width(0), 1 + len(cfg.blur_sigmas), 3, padding=1)
                nn.init.zeros_(self.blend_head.weight)
                nn.init.zeros_(self.blend_head.bias)
        elif cfg.output_mode == "direct":
            pass  # default init: the paper's tanh output trained from scratch
        else:
            raise ValueError(f"unknown output_mode {cfg.output_mode!r}")

    def forward(
        self,
        source: torch.Tensor,
        warp: WarpingOutput,
        identity: torch.Tensor,
        driving_landmarks: torch.Tensor,
    ) -> RefinementOutput:
        """Refine the warped source into the output frame.

        Args:
            source: source image I_s, ``B×3×H×W`` in [-1, 1].
            warp: the warping network's output for this source/driving pair.
            identity: identity embedding z_id of the source, ``B×identity_dim``.
            driving_landmarks: driving landmark image L_d, ``B×L×H×W`` in [-1, 1].
        """
        cfg: RefinementConfig = self.config  # type: ignore[assignment]
        size = cfg.image_size
        check_image("source", source, 3, size)
        b = source.shape[0]
        check_image("driving_landmarks", driving_landmarks, cfg.landmark_channels, size, b)
        check_grid("warp.grid", warp.grid, b, size)
        check_image("warp.occlusion", warp.occlusion, 1, size, b)
        check_image("warp.warped", warp.warped, 3, size, b)
        if identity.ndim != 2 or tuple(identity.shape) != (b, cfg.identity_dim):
            raise ValueError(f"identity: expected shape ({b}, {cfg.identity_dim}), got {tuple(identity.shape)}")
        z_id = F.normalize(identity, dim=1)

        feats = [self.stem(source)]
        for block in self.encoder:
            feats.append(block(feats[-1]))

        # Features are warped in float32 (grids address pixels; bf16 is too coarse for that).
        conds = []
        for f in feats:
            hw = tuple(f.shape[-2:])
            grid_k = resize_grid(warp.grid.float(), hw)
            occ_k = resize_map(warp.occlusion.float(), hw)
            warped_f = F.grid_sample(f.float(), grid_k, mode="bilinear", padding_mode="zeros", align_corners=False) * occ_k
            conds.append(
                torch.cat(
                    [
                        warped_f,
                        resize_map(warp.warped.float(), hw),
                        resize_map(driving_landmarks.float(), hw),
                        occ_k,
                    ],
                    dim=1,
                ).to(f.dtype)
            )

        n = cfg.num_down
        masks: list[torch.Tensor] = []
        h = conds[n][:, : cfg.width(n)]
        for block in self.bottleneck:
            h, m = block(h, z_id, conds[n])
            masks += m
        for j, block in enumerate(self.decoder):
            k = n - 1 - j
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            if isinstance(block, FusionBlock):
                h, m = block(h, z_id, conds[k])
                masks += m
            else:
                h = F.leaky_relu(block(torch.cat([h, conds[k]], dim=1)), 0.2)
        h = F.leaky_relu(h, 0.2)
        raw = self.head(h) if self.head is not None else None
        gate = None
        delta = 2 * torch.tanh(raw.float()) if raw is not None else None
        if cfg.residual_gate:
            lo, hi = cfg.gate_stretch
            region = stretch_regions(warp.grid, lo, hi, round(cfg.gate_dilate * size / 256))
            gate = region * torch.sigmoid(self.gate_head(h).float())
            delta = delta * gate
        weights = None
        if cfg.output_mode == "residual":
            image = torch.clamp(warp.warped + delta.to(warp.warped.dtype), -1.0, 1.0)
        elif cfg.output_mode == "blend":
            weights = torch.softmax(self.blend_head(h).float(), dim=1)  # B×(1+K)×H×W
            warped = warp.warped.float()
            base = warped * weights[:, :1]
            for k, sigma in enumerate(cfg.blur_sigmas, start=1):
                base = base + gaussian_blur(warped, sigma * size / 256.0) * weights[:, k : k + 1]
            if delta is not None:
                base = base + delta
            image = torch.clamp(base, -1.0, 1.0).to(warp.warped.dtype)
        elif cfg.output_mode == "direct":
            image = torch.tanh(raw)
        else:
            raise ValueError(f"unknown output_mode {cfg.output_mode!r}")
        if cfg.output_mode == "blend":
            residual = delta if delta is not None else torch.zeros_like(warp.warped, dtype=torch.float32)
        else:
            residual = image.float() - warp.warped.float()
        return RefinementOutput(image=image, masks=masks, blend_weights=weights, residual=residual, gate=gate)


__all__ = ["RefinementConfig", "RefinementNetwork", "RefinementOutput", "stretch_regions"]
