"""Temporal-consistent super-resolution (MetaPortrait §3.3, eq. 10; docs/METHOD.md §9).

A U-Net of 3D convolutions runs over a window of ``T`` consecutive 256×256 frames; its decoder
features give SFT scale/shift maps (as GFPGANv1Clean does) that modulate a StyleGAN2 generator,
which renders every frame at 512×512. The U-Net mirrors GFPGANv1Clean layer for layer with the
same parameter names, each 2D convolution becoming a 3D one, so a 2D GFPGAN v1.3/v1.4 checkpoint
*inflates* into this network (:mod:`metaportrait.convert.gfpgan`): on a static clip the inflated
network reproduces the 2D one exactly. The StyleGAN2 decoder is 2D and runs per frame.

Design choices (documented because the paper leaves them open):

* **Output**: every input frame, ``B×T×3×512×512`` (not only the centre frame); streaming
  inference over long videos uses overlapping windows (:func:`metaportrait.superres.upscale_frames`).
* **Time padding**: reflection (``x[1], x[0], x[1], ...``); a one-frame clip pads by replication.
  Space: zero padding, as in GFPGAN. No temporal down-sampling: time length is preserved.
* ``temporal_convs``: ``"all"`` makes every 3×3 conv of the U-Net (ResBlock convs, ``final_conv``,
  SFT condition convs) a ``kt×3×3`` conv; ``"first_per_block"`` only ``conv1`` of each ResBlock and
  ``final_conv`` (smaller temporal receptive field, cheaper). 1×1 convs stay ``1×1×1``.
  :attr:`TemporalSuperResolution.temporal_radius` is the resulting receptive-field radius in frames.
* ``unet_input``: ``"upsample"`` resizes the 256² input bilinearly to 512² and runs the U-Net there
  (GFPGAN's own use on low-resolution faces; required for inflation); ``"native"`` runs the U-Net at
  256² (4× cheaper) and SFT-modulates the decoder levels up to 256², the 512² level runs unmodulated.
* StyleGAN2 noise: the stored noise buffers by default (``randomize_noise=False``), identical for all
  frames, so the noise injection cannot flicker.

Tensors: ``frames`` ``B×T×3×H×W`` float RGB in ``[-1, 1]``; output in about ``[-1, 1]`` (unclamped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from metaportrait.models.gfpgan_clean import StyleGAN2GeneratorCSFT, check_channels, stylegan_channels
from metaportrait.models.hub import HubModel, ModelConfig

__all__ = [
    "PRESETS",
    "ResBlock3d",
    "TemporalConv3d",
    "TemporalSRConfig",
    "TemporalSROutput",
    "TemporalSuperResolution",
]

_SIZES = (16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class TemporalSRConfig(ModelConfig):
    """Hyper-parameters of :class:`TemporalSuperResolution`. Defaults = the ``"paper"`` preset.

    in_size / out_size: input and output frame side (powers of two, ``out_size >= in_size``).
    unet_input: ``"upsample"`` (GFPGAN-compatible, U-Net at ``out_size``) or ``"native"`` (at ``in_size``).
    temporal_kernel_size: odd temporal extent ``kt`` of the 3D kernels (1 = per-frame network).
    temporal_convs: which 3×3 convs get the temporal extent (``"all"`` or ``"first_per_block"``).
    window: number of frames per clip in training and the default inference window.
    num_style_feat, channel_multiplier, num_mlp, input_is_latent, different_w, narrow, sft_half:
        GFPGANv1Clean's arguments (v1.3/v1.4: 512, 2, 8, True, True, 1.0, True).
    """

    in_size: int = 256
    out_size: int = 512
    unet_input: Literal["upsample", "native"] = "upsample"
    temporal_kernel_size: int = 3
    temporal_convs: Literal["all", "first_per_block"] = "all"
    window: int = 7
    num_style_feat: int = 512
    channel_multiplier: int = 2
    num_mlp: int = 8
    input_is_latent: bool = True
    different_w: bool = True
    narrow: float = 1.0
    sft_half: bool = True
    output: Literal["direct", "bicubic_residual"] = "direct"

    def validate(self) -> None:
        if self.in_size not in _SIZES or self.out_size not in _SIZES:
            raise ValueError(f"in_size and out_size must be in {_SIZES}, got {self.in_size}, {self.out_size}")
        if self.out_size < self.in_size:
            raise ValueError(f"out_size ({self.out_size}) must be >= in_size ({self.in_size})")
        if self.output not in ("direct", "bicubic_residual"):
            raise ValueError(f"output must be 'direct' or 'bicubic_residual', got {self.output!r}")
        if self.unet_input not in ("upsample", "native"):
            raise ValueError(f"unet_input must be 'upsample' or 'native', got {self.unet_input!r}")
        if self.temporal_convs not in ("all", "first_per_block"):
            raise ValueError(f"temporal_convs must be 'all' or 'first_per_block', got {self.temporal_convs!r}")
        if self.temporal_kernel_size < 1 or self.temporal_kernel_size % 2 == 0:
            raise ValueError(f"temporal_kernel_size must be odd and >= 1, got {self.temporal_kernel_size}")
        self.check_positive_ints("window")
        self.check_positive_ints("num_style_feat", "channel_multiplier")
        self.check_non_negative_ints("num_mlp")
        if not self.narrow > 0:
            raise ValueError(f"narrow must be > 0, got {self.narrow}")
        check_channels(self.channel_multiplier, self.narrow, self.out_size)
        check_channels(self.channel_multiplier, self.narrow * 0.5, self.out_size)
        if self.sft_half and any(c % 2 for r, c in stylegan_channels(self.channel_multiplier, self.narrow).items() if 8 <= r <= self.out_size):
            raise ValueError("sft_half needs an even number of decoder channels at every resolution")

    @property
    def unet_size(self) -> int:
        """Side at which the U-Net runs."""
        if self.unet_input == "upsample":
            return self.out_size
        elif self.unet_input == "native":
            return self.in_size
        else:
            raise ValueError(f"unknown unet_input {self.unet_input!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> "TemporalSRConfig":
        """``"paper"`` (GFPGAN v1.3 size, inflatable), ``"demo"`` (fast CPU), ``"tiny"`` (tests, 32→64)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides)


PRESETS: dict[str, TemporalSRConfig] = {
    # GFPGAN v1.3/v1.4 geometry with 3×3×3 kernels everywhere: inflatable from the official weights.
    "paper": TemporalSRConfig(),
    # CPU demo: U-Net at 256², narrow channels, temporal kernels only in the first conv of each block.
    "demo": TemporalSRConfig(
        unet_input="native",
        temporal_convs="first_per_block",
        window=5,
        num_style_feat=128,
        channel_multiplier=1,
        num_mlp=2,
        narrow=0.125,
        output="bicubic_residual",
    ),
    # Tests: 32² -> 64², inflatable from a tiny GFPGANv1Clean(out_size=64, narrow=1/16, ...).
    "tiny": TemporalSRConfig(
        in_size=32,
        out_size=64,
        window=5,
        num_style_feat=32,
        channel_multiplier=1,
        num_mlp=2,
        narrow=1 / 16,
    ),
}


def _reflect_index(t: int, pad: int, device: torch.device) -> torch.Tensor:
    """Frame indices of a length-``t`` clip padded by ``pad`` on both sides (reflection; replication if ``t <= pad``)."""
    idx = torch.arange(-pad, t + pad, device=device)
    if t > pad:
        idx = idx.abs()
        idx = torch.where(idx > t - 1, 2 * (t - 1) - idx, idx)
    else:
        idx = idx.clamp(0, t - 1)
    return idx


class TemporalConv3d(nn.Conv3d):
    """``kt×k×k`` conv over a clip: reflection padding in time, zero padding in space.

    The parameters are those of an ``nn.Conv3d`` (weight ``Cout×Cin×kt×k×k``) with GFPGAN's names,
    but activations use the *frames-as-batch* layout ``(B·T)×C×H×W`` throughout the network, and
    :meth:`forward` takes the clip length ``t``. On CUDA it runs ``conv3d``; elsewhere it stacks the
    ``kt`` reflected neighbour frames on channels and runs one ``conv2d`` (the same sum of products;
    PyTorch's CPU ``conv3d`` falls back to a slow kernel for narrow layers).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, temporal_kernel_size: int, bias: bool = True) -> None:
        super().__init__(
            in_channels,
            out_channels,
            (temporal_kernel_size, kernel_size, kernel_size),
            padding=(0, kernel_size // 2, kernel_size // 2),
            bias=bias,
        )
        self.temporal_pad = temporal_kernel_size // 2
        self.impl: Literal["auto", "conv2d", "conv3d"] = "auto"

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:  # type: ignore[override]
        """``x``: ``(B·T)×Cin×H×W`` (frames of each clip consecutive), ``t`` = T -> ``(B·T)×Cout×H×W``."""
        bt, c, h, w = x.shape
        if bt % t:
            raise ValueError(f"batch of frames {bt} is not a multiple of the clip length {t}")
        kt = self.kernel_size[0]
        pad2d = self.padding[1:]
        if kt == 1:
            return F.conv2d(x, self.weight[:, :, 0], self.bias, padding=pad2d)
        b = bt // t
        idx = _reflect_index(t, self.temporal_pad, x.device)
        impl = self.impl
        if impl == "auto":
            impl = "conv3d" if x.is_cuda else "conv2d"
        if impl == "conv3d":
            x5 = x.view(b, t, c, h, w).index_select(1, idx).transpose(1, 2)
            out = F.conv3d(x5, self.weight, self.bias, padding=(0, *pad2d))
            return out.transpose(1, 2).reshape(bt, -1, h, w)
        elif impl == "conv2d":
            windows = idx.unfold(0, kt, 1).reshape(-1)  # t·kt frame indices
            stacked = x.view(b, t, c, h, w).index_select(1, windows).view(bt, kt * c, h, w)
            weight = self.weight.transpose(1, 2).reshape(self.out_channels, kt * c, *self.kernel_size[1:])
            return F.conv2d(stacked, weight, self.bias, padding=pad2d)
        else:
            raise ValueError(f"unknown impl {impl!r}")


def _resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize of ``N×C×H×W``."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


class ResBlock3d(nn.Module):
    """GFPGAN's ResBlock with 3D convs (``conv1``, ``conv2`` ``kt×3×3``; ``skip`` ``1×1×1``)."""

    def __init__(self, in_channels: int, out_channels: int, mode: Literal["down", "up"], kt1: int, kt2: int) -> None:
        super().__init__()
        self.conv1 = TemporalConv3d(in_channels, in_channels, 3, kt1)
        self.conv2 = TemporalConv3d(in_channels, out_channels, 3, kt2)
        self.skip = TemporalConv3d(in_channels, out_channels, 1, 1, bias=False)
        if mode == "down":
            self.scale_factor = 0.5
        elif mode == "up":
            self.scale_factor = 2.0
        else:
            raise ValueError(f"mode must be 'down' or 'up', got {mode!r}")

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """``x``: ``(B·T)×C×H×W``."""
        out = F.leaky_relu(self.conv1(x, t), negative_slope=0.2)
        out = _resize(out, self.scale_factor)
        out = F.leaky_relu(self.conv2(out, t), negative_slope=0.2)
        return out + self.skip(_resize(x, self.scale_factor), t)


class _SFTBranch(nn.Module):
    """conv - LeakyReLU - conv producing one SFT map (keys ``0.weight``, ``2.weight`` as GFPGAN's Sequential)."""

    def __init__(self, ch: int, out_ch: int, kt: int) -> None:
        super().__init__()
        self.add_module("0", TemporalConv3d(ch, ch, 3, kt))
        self.add_module("1", nn.LeakyReLU(0.2, True))
        self.add_module("2", TemporalConv3d(ch, out_ch, 3, kt))

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        conv_a, act, conv_b = self._modules.values()
        return conv_b(act(conv_a(x, t)), t)  # type: ignore[misc]


@dataclass
class TemporalSROutput:
    """``frames``: ``B×T×3×out_size×out_size``, float RGB in about ``[-1, 1]`` (not clamped)."""

    frames: torch.Tensor


class TemporalSuperResolution(HubModel, tags=["super-resolution", "video", "temporal-consistency"]):
    """3D-conv U-Net + SFT-modulated StyleGAN2: ``B×T×3×256²`` -> ``B×T×3×512²`` (MetaPortrait §3.3)."""

    config_class = TemporalSRConfig

    def __init__(self, config: TemporalSRConfig) -> None:
        super().__init__(config)
        cfg: TemporalSRConfig = self.config  # type: ignore[assignment]
        kt = cfg.temporal_kernel_size
        if cfg.temporal_convs == "all":
            kt1, kt2, kt_cond = kt, kt, kt
        elif cfg.temporal_convs == "first_per_block":
            kt1, kt2, kt_cond = kt, 1, 1
        else:
            raise ValueError(f"unknown temporal_convs {cfg.temporal_convs!r}")
        channels = stylegan_channels(cfg.channel_multiplier, cfg.narrow * 0.5)
        size = cfg.unet_size
        self.log_size = int(math.log2(size))
        n_levels = self.log_size - 2

        self.conv_body_first = TemporalConv3d(3, channels[size], 1, 1)
        in_ch = channels[size]
        self.conv_body_down = nn.ModuleList()
        for i in range(self.log_size, 2, -1):
            self.conv_body_down.append(ResBlock3d(in_ch, channels[2 ** (i - 1)], "down", kt1, kt2))
            in_ch = channels[2 ** (i - 1)]
        self.final_conv = TemporalConv3d(in_ch, channels[4], 3, kt)
        in_ch = channels[4]
        self.conv_body_up = nn.ModuleList()
        for i in range(3, self.log_size + 1):
            self.conv_body_up.append(ResBlock3d(in_ch, channels[2**i], "up", kt1, kt2))
            in_ch = channels[2**i]

        out_log = int(math.log2(cfg.out_size))
        n_w = (out_log * 2 - 2) if cfg.different_w else 1
        self.final_linear = nn.Linear(channels[4] * 16, n_w * cfg.num_style_feat)
        self.stylegan_decoder = StyleGAN2GeneratorCSFT(
            cfg.out_size, cfg.num_style_feat, cfg.num_mlp, cfg.channel_multiplier, cfg.narrow, cfg.sft_half
        )
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for i in range(3, self.log_size + 1):
            ch = channels[2**i]
            dec_ch = self.stylegan_decoder.channels[2**i]
            sft_ch = dec_ch // 2 if cfg.sft_half else dec_ch
            for lst in (self.condition_scale, self.condition_shift):
                lst.append(_SFTBranch(ch, sft_ch, kt_cond))
        # longest chain of temporal convs: down blocks, final_conv, up blocks, condition convs
        per_block = (1 if kt1 > 1 else 0) + (1 if kt2 > 1 else 0)
        n_temporal = 2 * n_levels * per_block + (1 if kt > 1 else 0) + (2 if kt_cond > 1 else 0)
        self.temporal_radius = n_temporal * (kt // 2)

        if cfg.output == "bicubic_residual":
            # out = bicubic(input) + g·StyleGAN(…): training starts at the bicubic baseline and only has
            # to learn the missing detail (what CPU-hour training can afford). The start is made by
            # zeroing every to-RGB layer (weights and biases), NOT by g = 0: with g = 0 and a random
            # decoder, dL/dg = <StyleGAN(…), dL/dout> averages to ~0 and the decoder gets no gradient
            # at all, a saddle that 400 training steps did not leave (g reached 4e-4). Zeroed to-RGB
            # layers still receive the gradient (features × style) on the first step.
            self.residual_gain = nn.Parameter(torch.ones(()))
            for to_rgb in [self.stylegan_decoder.to_rgb1, *self.stylegan_decoder.to_rgbs]:
                nn.init.zeros_(to_rgb.modulated_conv.weight)
                nn.init.zeros_(to_rgb.bias)

    def freeze_decoder(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the StyleGAN2 decoder's parameters (GFPGAN's ``fix_decoder``)."""
        for p in self.stylegan_decoder.parameters():
            p.requires_grad_(not frozen)

    def forward(self, frames: torch.Tensor, randomize_noise: bool = False) -> TemporalSROutput:
        """``frames``: ``B×T×3×in_size×in_size`` in ``[-1, 1]`` -> :class:`TemporalSROutput` (every frame)."""
        cfg: TemporalSRConfig = self.config  # type: ignore[assignment]
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[-2:] != (cfg.in_size, cfg.in_size):
            raise ValueError(f"expected frames B×T×3×{cfg.in_size}×{cfg.in_size}, got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, 3, cfg.in_size, cfg.in_size)  # frames-as-batch layout
        if cfg.unet_size != cfg.in_size:
            x = _resize(x, cfg.unet_size / cfg.in_size)

        feat = F.leaky_relu(self.conv_body_first(x, t), negative_slope=0.2)
        skips: list[torch.Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat, t)
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat, t), negative_slope=0.2)
        style = self.final_linear(feat.reshape(b * t, -1))
        if cfg.different_w:
            style = style.view(b * t, -1, cfg.num_style_feat)

        conditions: list[torch.Tensor] = []
        for i, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[i], t)
            conditions.append(self.condition_scale[i](feat, t))
            conditions.append(self.condition_shift[i](feat, t))
        image = self.stylegan_decoder(
            style, conditions, input_is_latent=cfg.input_is_latent, randomize_noise=randomize_noise
        )
        if cfg.output == "bicubic_residual":
            base = F.interpolate(frames.reshape(b * t, 3, cfg.in_size, cfg.in_size), size=(cfg.out_size, cfg.out_size),
                                 mode="bicubic", align_corners=False)
            image = (base + self.residual_gain * image).clamp(-1, 1)
        elif cfg.output != "direct":
            raise ValueError(f"unknown output mode {cfg.output!r}")
        return TemporalSROutput(frames=image.view(b, t, 3, cfg.out_size, cfg.out_size))
