"""Warping network ``w = F_w(x_in, z_w)`` of MetaPortrait (paper §3.1; docs/METHOD.md §5).

* ``x_in = concat(I_s, L_s, L_d)`` — source image and source/driving landmark images (9 channels);
  with ``use_prior`` also the source warped by a classical mesh-warp prior grid and that prior
  as a 2-channel offset from the identity grid (14 channels).
* ``E_w``: stride-2 3×3 convs + a linear layer → motion code ``z_w`` (L2-normalised).
* ``F_w``: an hourglass over ``x_in`` (resized to ``flow_size``) whose normalisations are AdaIN
  modulated by ``z_w``.
* Heads at ``flow_size``: a 2-channel flow (offset in grid_sample units) added to the identity
  grid — or, with ``use_prior``, to the prior grid, so the network predicts a residual on top of
  the mesh warp — and a 1-channel occlusion map (sigmoid). Both are upsampled to the image size
  and the source is warped with ``grid_sample`` (``align_corners=False``).

Initialisation: the flow head's last conv is zero, so at step 0 the grid equals the prior
(or the identity); the occlusion bias starts at +4 (occlusion ≈ 0.98, "visible").

Images are ``B×3×H×W`` in [-1, 1]; grids ``B×H×W×2`` in grid_sample's normalised coordinates.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.models.hub import HubModel, ModelConfig
from metaportrait.models.layers import AdaINConvBlock, make_identity_grid, resize_map

PaddingMode = Literal["reflection", "border", "zeros"]
_PADDING_MODES = ("reflection", "border", "zeros")
OCCLUSION_INIT_BIAS = 4.0


def _is_pow2_multiple(size: int, depth: int) -> bool:
    return size % (2**depth) == 0


@dataclasses.dataclass(frozen=True)
class WarpingConfig(ModelConfig):
    """Configuration of :class:`WarpingNetwork`.

    Attributes:
        image_size: side of the square input/output images (pixels).
        landmark_channels: channels of each landmark image (3: RGB drawings).
        base_channels: width of E_w's first stride-2 conv (doubles per layer up to max_channels).
        max_channels: channel cap of E_w and of the hourglass.
        motion_dim: size of the motion code z_w (official 512), L2-normalised.
        encoder_depth: number of stride-2 convs of E_w.
        encoder_size: resolution at which E_w reads x_in (x_in is area-resized to it);
            ``encoder_size / 2**encoder_depth`` is the side of the map flattened into the linear layer.
        hourglass_depth: number of down (and up) levels of F_w.
        hourglass_channels: width of F_w at ``flow_size`` (doubles per level up to max_channels).
        flow_size: resolution of F_w and of the flow/occlusion heads (official 64).
        use_prior: whether a mesh-warp prior grid is an input; the flow is then a residual on it.
        padding_mode: grid_sample padding for the warp (official: reflection).
    """

    image_size: int = 256
    landmark_channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    motion_dim: int = 512
    encoder_depth: int = 6
    encoder_size: int = 256
    hourglass_depth: int = 4
    hourglass_channels: int = 64
    flow_size: int = 64
    use_prior: bool = False
    padding_mode: PaddingMode = "reflection"

    def validate(self) -> None:
        self.check_positive_ints(
            "image_size", "landmark_channels", "base_channels", "max_channels", "motion_dim", "encoder_depth",
            "encoder_size", "hourglass_depth", "hourglass_channels", "flow_size",
        )
        if not isinstance(self.use_prior, bool):
            raise ValueError(f"WarpingConfig.use_prior must be a bool, got {self.use_prior!r}")
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(f"WarpingConfig.padding_mode must be one of {_PADDING_MODES}, got {self.padding_mode!r}")
        if self.max_channels < self.base_channels or self.max_channels < self.hourglass_channels:
            raise ValueError(
                f"WarpingConfig.max_channels ({self.max_channels}) must be >= base_channels "
                f"({self.base_channels}) and hourglass_channels ({self.hourglass_channels})"
            )
        if self.flow_size > self.image_size or self.encoder_size > self.image_size:
            raise ValueError(
                f"WarpingConfig: flow_size ({self.flow_size}) and encoder_size ({self.encoder_size}) "
                f"must not exceed image_size ({self.image_size})"
            )
        if not _is_pow2_multiple(self.encoder_size, self.encoder_depth):
            raise ValueError(
                f"WarpingConfig: encoder_size ({self.encoder_size}) must be divisible by "
                f"2**encoder_depth (encoder_depth={self.encoder_depth})"
            )
        if not _is_pow2_multiple(self.flow_size, self.hourglass_depth) or self.flow_size // 2**self.hourglass_depth < 2:
            raise ValueError(
                f"WarpingConfig: flow_size ({self.flow_size}) must be divisible by 2**hourglass_depth "
                f"(hourglass_depth={self.hourglass_depth}) with at least 2×2 at the bottom"
            )

    @property
    def input_channels(self) -> int:
        """Channels of x_in: I_s, L_s, L_d (+ prior-warped source and prior offset with use_prior)."""
        return 3 + 2 * self.landmark_channels + (5 if self.use_prior else 0)


@dataclasses.dataclass
class WarpingOutput:
    """Output of :class:`WarpingNetwork`.

    Attributes:
        grid: ``B×H×W×2`` float32 sampling grid (prior or identity + upsampled flow).
        flow: ``B×2×h×w`` residual offset predicted at ``flow_size`` (grid_sample units).
        occlusion: ``B×1×H×W`` visibility in [0, 1] (1 = visible in the source).
        warped: ``B×3×H×W`` source warped by ``grid``, in [-1, 1].
        motion_code: ``B×motion_dim`` L2-normalised motion code z_w.
    """

    grid: torch.Tensor
    flow: torch.Tensor
    occlusion: torch.Tensor
    warped: torch.Tensor
    motion_code: torch.Tensor


def check_image(name: str, x: torch.Tensor, channels: int, size: int, batch: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is ``B×channels×size×size`` (and B == batch when given)."""
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"{name}: expected shape (B, {channels}, {size}, {size}), got {tuple(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name}: batch size {x.shape[0]} does not match the source's {batch}")


def check_grid(name: str, grid: torch.Tensor, batch: int, size: int) -> None:
    if grid.ndim != 4 or tuple(grid.shape) != (batch, size, size, 2):
        raise ValueError(f"{name}: expected shape ({batch}, {size}, {size}, 2), got {tuple(grid.shape)}")


class MotionEncoder(nn.Module):
    """E_w: stride-2 3×3 convs (LeakyReLU) → flatten → linear → L2-normalised motion code z_w."""

    def __init__(self, config: WarpingConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = config.input_channels
        for i in range(config.encoder_depth):
            c_out = min(config.max_channels, config.base_channels * 2**i)
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        side = config.encoder_size // 2**config.encoder_depth
        self.fc = nn.Linear(c_in * side * side, config.motion_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.convs(x).flatten(1)), dim=1)


class MotionHourglass(nn.Module):
    """F_w: a U-Net hourglass at ``flow_size`` with AdaIN(z_w) after every conv.

    Down levels: AvgPool2 → Conv → AdaIN → LReLU; up levels: Upsample×2 → concat skip → Conv →
    AdaIN → LReLU. Output: ``hourglass_channels`` features at ``flow_size``.
    """

    def __init__(self, config: WarpingConfig) -> None:
        super().__init__()
        d = config.hourglass_depth
        widths = [min(config.max_channels, config.hourglass_channels * 2**i) for i in range(d + 1)]
        self.widths = widths
        self.stem = AdaINConvBlock(config.input_channels, widths[0], config.motion_dim)
        self.down = nn.ModuleList(AdaINConvBlock(widths[i], widths[i + 1], config.motion_dim) for i in range(d))
        self.up = nn.ModuleList(
            AdaINConvBlock(widths[i + 1] + widths[i], widths[i], config.motion_dim) for i in range(d)
        )

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x, code)]
        for block in self.down:
            skips.append(block(F.avg_pool2d(skips[-1], 2), code))
        h = skips.pop()
        for i in reversed(range(len(self.up))):
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = self.up[i](torch.cat([h, skip], dim=1), code)
        return h


class WarpingNetwork(HubModel, tags=["warping-network"]):
    """MetaPortrait's warping network (paper §3.1): dense flow + occlusion from landmark images.

    ``forward(source, source_landmarks, driving_landmarks, prior_grid=None) -> WarpingOutput``;
    all images ``B×3×H×W`` in [-1, 1] with ``H = W = config.image_size``; ``prior_grid``
    ``B×H×W×2`` is required iff ``config.use_prior``.
    """

    config_class = WarpingConfig

    def __init__(self, config: WarpingConfig) -> None:
        super().__init__(config)
        cfg: WarpingConfig = self.config  # type: ignore[assignment]
        self.motion_encoder = MotionEncoder(cfg)
        self.hourglass = MotionHourglass(cfg)
        head_in = cfg.hourglass_channels + cfg.input_channels
        self.flow_head = nn.Conv2d(head_in, 2, 3, padding=1)
        self.occlusion_head = nn.Conv2d(head_in, 1, 3, padding=1)
        nn.init.zeros_(self.flow_head.weight)
        nn.init.zeros_(self.flow_head.bias)
        nn.init.normal_(self.occlusion_head.weight, std=1e-3)
        nn.init.constant_(self.occlusion_head.bias, OCCLUSION_INIT_BIAS)

    def forward(
        self,
        source: torch.Tensor,
        source_landmarks: torch.Tensor,
        driving_landmarks: torch.Tensor,
        prior_grid: torch.Tensor | None = None,
    ) -> WarpingOutput:
        """Warp ``source`` (``B×3×H×W``) toward the pose/expression of ``driving_landmarks``.

        Args:
            source: source image I_s, ``B×3×H×W`` in [-1, 1].
            source_landmarks: landmark image L_s of the source, ``B×L×H×W`` in [-1, 1].
            driving_landmarks: landmark image L_d of the driving frame, ``B×L×H×W`` in [-1, 1].
            prior_grid: ``B×H×W×2`` mesh-warp grid (required iff ``config.use_prior``).
        """
        cfg: WarpingConfig = self.config  # type: ignore[assignment]
        size = cfg.image_size
        check_image("source", source, 3, size)
        b = source.shape[0]
        check_image("source_landmarks", source_landmarks, cfg.landmark_channels, size, b)
        check_image("driving_landmarks", driving_landmarks, cfg.landmark_channels, size, b)
        # Grids stay float32 whatever the model/autocast dtype: bf16 cannot address 512² pixels.
        identity = make_identity_grid(b, size, size, device=source.device, dtype=torch.float32)
        src32 = source.float()
        parts = [source, source_landmarks.to(source.dtype), driving_landmarks.to(source.dtype)]
        if cfg.use_prior:
            if prior_grid is None:
                raise ValueError("WarpingNetwork: config.use_prior is True but no prior_grid was given")
            check_grid("prior_grid", prior_grid, b, size)
            base = prior_grid.float()
            prior_warped = F.grid_sample(src32, base, mode="bilinear", padding_mode=cfg.padding_mode, align_corners=False)
            parts += [prior_warped.to(source.dtype), (base - identity).permute(0, 3, 1, 2).to(source.dtype)]
        elif prior_grid is not None:
            raise ValueError("WarpingNetwork: a prior_grid was given but config.use_prior is False")
        else:
            base = identity
        x_in = torch.cat(parts, dim=1)

        z_w = self.motion_encoder(resize_map(x_in, (cfg.encoder_size, cfg.encoder_size)))
        x_small = resize_map(x_in, (cfg.flow_size, cfg.flow_size))
        feats = torch.cat([self.hourglass(x_small, z_w), x_small], dim=1)
        flow = self.flow_head(feats)
        occlusion = torch.sigmoid(self.occlusion_head(feats))

        flow_up = resize_map(flow, (size, size)).permute(0, 2, 3, 1)
        grid = base + flow_up.float()
        occlusion = resize_map(occlusion, (size, size))
        warped = F.grid_sample(src32, grid, mode="bilinear", padding_mode=cfg.padding_mode, align_corners=False)
        warped = warped.to(source.dtype)
        return WarpingOutput(grid=grid, flow=flow, occlusion=occlusion, warped=warped, motion_code=z_w)


__all__ = ["WarpingConfig", "WarpingNetwork", "WarpingOutput", "check_image", "check_grid"]
