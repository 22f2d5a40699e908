"""GFPGANv1Clean: the 2D face-restoration prior that MetaPortrait §3.3 inflates into 3D.

GFP-GAN (Wang et al., CVPR 2021), "clean" variant (no compiled CUDA ops): a U-Net whose decoder
features give spatial feature transform (SFT) scale/shift maps that modulate a pretrained
StyleGAN2 generator. MetaPortrait's temporal super-resolution (paper §3.3, eq. 10) starts
from these weights (GFPGAN v1.3/v1.4), so this module reproduces the official
``gfpgan/archs/gfpganv1_clean_arch.py`` and ``stylegan2_clean_arch.py`` **with the same
state-dict key names**: an official ``params_ema`` loads into :class:`GFPGANv1Clean` strictly.
``basicsr==1.4.2`` does not ship the clean StyleGAN2 blocks (they live in the ``gfpgan`` package,
which pulls in unrelated dependencies), hence this self-contained copy.

:class:`ModulatedConv2d` is the official fused form (one modulated, demodulated kernel per sample,
grouped convolution); :class:`StyleConv` folds its ``sqrt(2)`` gain into that kernel (same function,
fewer passes over the activations, which is what costs time at 512² on a CPU).

The StyleGAN2 blocks (:class:`ModulatedConv2d`, :class:`StyleConv`, :class:`ToRGB`,
:class:`ConstantInput`, :class:`StyleGAN2GeneratorCSFT`) are shared with
:mod:`metaportrait.models.temporal_sr`.

Images are float RGB ``B×3×H×W`` in ``[-1, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from metaportrait.models.hub import HubModel, ModelConfig

__all__ = [
    "ConstantInput",
    "GFPGANOutput",
    "GFPGANv1Clean",
    "GFPGANv1CleanConfig",
    "ModulatedConv2d",
    "NormStyleCode",
    "StyleConv",
    "StyleGAN2GeneratorCSFT",
    "ToRGB",
    "check_channels",
    "stylegan_channels",
]


def stylegan_channels(channel_multiplier: int, narrow: float) -> dict[int, int]:
    """Channels per resolution of StyleGAN2 (and, with ``narrow * 0.5``, of GFPGAN's U-Net)."""
    base = {4: 512, 8: 512, 16: 512, 32: 512}
    scaled = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    out = {r: int(c * narrow) for r, c in base.items()}
    out.update({r: int(c * channel_multiplier * narrow) for r, c in scaled.items()})
    return out


def check_channels(channel_multiplier: int, narrow: float, max_size: int) -> None:
    """Raise ``ValueError`` if a layer up to ``max_size`` would get zero channels."""
    out = stylegan_channels(channel_multiplier, narrow)
    bad = {r: c for r, c in out.items() if c < 1 and r <= max_size}
    if bad:
        raise ValueError(f"channel_multiplier={channel_multiplier}, narrow={narrow} give empty layers {bad}")


def _kaiming_init(module: nn.Module, *, scale: float, bias_fill: float, a: float, nonlinearity: str) -> None:
    """basicsr's ``default_init_weights`` for Linear layers (kaiming normal, fan_in, scaled)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=a, mode="fan_in", nonlinearity=nonlinearity)
            m.weight.data.mul_(scale)
            if m.bias is not None:
                m.bias.data.fill_(bias_fill)


class NormStyleCode(nn.Module):
    """Pixel-norm of style codes ``B×C``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (no bias); weight ``1×Cout×Cin×k×k`` as in the official code."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        sample_mode: Literal["upsample"] | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if sample_mode not in (None, "upsample"):
            raise ValueError(f"sample_mode must be None or 'upsample', got {sample_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.sample_mode = sample_mode
        self.eps = eps
        self.modulation = nn.Linear(num_style_feat, in_channels, bias=True)
        _kaiming_init(self.modulation, scale=1.0, bias_fill=1.0, a=0.0, nonlinearity="linear")
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel_size, kernel_size) / math.sqrt(in_channels * kernel_size**2)
        )
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """``x``: ``B×Cin×H×W``; ``style``: ``B×num_style_feat`` -> ``B×Cout×H'×W'`` (times ``gain``)."""
        b, c, h, w = x.shape
        s = self.modulation(style).view(b, 1, c, 1, 1)
        weight = self.weight * s  # B×Cout×Cin×k×k
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
            weight = weight * (demod * gain).view(b, self.out_channels, 1, 1, 1)
        elif gain != 1.0:
            weight = weight * gain
        weight = weight.view(b * self.out_channels, c, self.kernel_size, self.kernel_size)
        if self.sample_mode == "upsample":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.padding, groups=b)
        return out.view(b, self.out_channels, h, w)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"demodulate={self.demodulate}, sample_mode={self.sample_mode}"
        )


class StyleConv(nn.Module):
    """Modulated conv + noise injection + bias + leaky ReLU (official key names)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        sample_mode: Literal["upsample"] | None = None,
    ) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, num_style_feat, demodulate=demodulate, sample_mode=sample_mode
        )
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.activate = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        # official: leaky_relu(modconv(x) * sqrt(2) + weight * noise + bias); the sqrt(2) is folded
        # into the modulated kernel, noise and bias are added in one pass
        out = self.modulated_conv(x, style, gain=2**0.5)
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        out = out + (self.weight * noise + self.bias)
        return self.activate(out)


class ToRGB(nn.Module):
    """1×1 modulated conv to RGB, added to the (upsampled) running skip image."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
            out = out + skip
        return out


class ConstantInput(nn.Module):
    """Learned ``1×C×4×4`` constant, repeated over the batch."""

    def __init__(self, num_channel: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, num_channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.repeat(batch, 1, 1, 1)


class StyleGAN2GeneratorCSFT(nn.Module):
    """StyleGAN2 generator (clean) whose features are SFT-modulated by ``conditions``.

    Key names match ``StyleGAN2GeneratorCSFT`` of the official GFPGAN code. ``conditions`` is the
    list ``[scale_8, shift_8, scale_16, shift_16, ...]``; it may stop before ``out_size`` (the
    remaining levels run unmodulated). With ``sft_half`` the SFT acts on the second half of the
    channels only, the first half passes through (GFPGAN v1.3/v1.4).
    """

    def __init__(
        self,
        out_size: int,
        num_style_feat: int = 512,
        num_mlp: int = 8,
        channel_multiplier: int = 2,
        narrow: float = 1.0,
        sft_half: bool = False,
    ) -> None:
        super().__init__()
        self.num_style_feat = num_style_feat
        self.sft_half = sft_half
        layers: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            layers.extend([nn.Linear(num_style_feat, num_style_feat, bias=True), nn.LeakyReLU(0.2, inplace=True)])
        self.style_mlp = nn.Sequential(*layers)
        _kaiming_init(self.style_mlp, scale=1.0, bias_fill=0.0, a=0.2, nonlinearity="leaky_relu")

        channels = stylegan_channels(channel_multiplier, narrow)
        self.channels = channels
        self.constant_input = ConstantInput(channels[4], size=4)
        self.style_conv1 = StyleConv(channels[4], channels[4], 3, num_style_feat)
        self.to_rgb1 = ToRGB(channels[4], num_style_feat, upsample=False)

        self.log_size = int(math.log2(out_size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2

        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            resolution = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise{layer_idx}", torch.randn(1, 1, resolution, resolution))
        in_channels = channels[4]
        for i in range(3, self.log_size + 1):
            out_channels = channels[2**i]
            self.style_convs.append(StyleConv(in_channels, out_channels, 3, num_style_feat, sample_mode="upsample"))
            self.style_convs.append(StyleConv(out_channels, out_channels, 3, num_style_feat))
            self.to_rgbs.append(ToRGB(out_channels, num_style_feat, upsample=True))
            in_channels = out_channels

    def forward(
        self,
        style: torch.Tensor,
        conditions: Sequence[torch.Tensor],
        *,
        input_is_latent: bool,
        randomize_noise: bool = False,
    ) -> torch.Tensor:
        """``style``: ``B×num_style_feat`` or ``B×num_latent×num_style_feat`` -> image ``B×3×S×S``.

        ``randomize_noise=False`` uses the stored noise buffers (deterministic, identical for every
        frame: what temporal consistency and the inflation check need).
        """
        if not input_is_latent:  # as the official code does, also for a B×N×C style
            style = self.style_mlp(style)
        if randomize_noise:
            noise: list[torch.Tensor | None] = [None] * self.num_layers
        else:
            noise = [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]
        latent = style if style.ndim == 3 else style.unsqueeze(1).repeat(1, self.num_latent, 1)

        out = self.constant_input(latent.shape[0])
        out = self.style_conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(
            self.style_convs[::2], self.style_convs[1::2], noise[1::2], noise[2::2], self.to_rgbs
        ):
            out = conv1(out, latent[:, i], noise=noise1)
            if i < len(conditions):
                if self.sft_half:
                    out_same, out_sft = torch.split(out, out.size(1) // 2, dim=1)
                    out_sft = out_sft * conditions[i - 1] + conditions[i]
                    out = torch.cat([out_same, out_sft], dim=1)
                else:
                    out = out * conditions[i - 1] + conditions[i]
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip


class ResBlock(nn.Module):
    """GFPGAN's residual block with bilinear up/downsampling (2D)."""

    def __init__(self, in_channels: int, out_channels: int, mode: Literal["down", "up"]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        if mode == "down":
            self.scale_factor = 0.5
        elif mode == "up":
            self.scale_factor = 2.0
        else:
            raise ValueError(f"mode must be 'down' or 'up', got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.conv1(x), negative_slope=0.2)
        out = F.interpolate(out, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        out = F.leaky_relu(self.conv2(out), negative_slope=0.2)
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        return out + self.skip(x)


@dataclass(frozen=True)
class GFPGANv1CleanConfig(ModelConfig):
    """Hyper-parameters of GFPGANv1Clean; the defaults are GFPGAN v1.3/v1.4's.

    out_size: input and output side (a power of two, 16..1024). ``unet_narrow = narrow / 2``.
    """

    out_size: int = 512
    num_style_feat: int = 512
    channel_multiplier: int = 2
    num_mlp: int = 8
    input_is_latent: bool = True
    different_w: bool = True
    narrow: float = 1.0
    sft_half: bool = True

    def validate(self) -> None:
        if self.out_size not in (16, 32, 64, 128, 256, 512, 1024):
            raise ValueError(f"out_size must be a power of two in 16..1024, got {self.out_size}")
        self.check_positive_ints("num_style_feat", "channel_multiplier")
        self.check_non_negative_ints("num_mlp")
        if not self.narrow > 0:
            raise ValueError(f"narrow must be > 0, got {self.narrow}")
        check_channels(self.channel_multiplier, self.narrow * 0.5, self.out_size)


@dataclass
class GFPGANOutput:
    """``image``: ``B×3×S×S`` in about ``[-1, 1]``; ``rgbs``: the U-Net's auxiliary RGB pyramid."""

    image: torch.Tensor
    rgbs: list[torch.Tensor]


class GFPGANv1Clean(HubModel, tags=["face-restoration", "gfpgan"]):
    """2D GFPGANv1Clean (U-Net + SFT-modulated StyleGAN2), official state-dict key names."""

    config_class = GFPGANv1CleanConfig

    def __init__(self, config: GFPGANv1CleanConfig) -> None:
        super().__init__(config)
        cfg: GFPGANv1CleanConfig = self.config  # type: ignore[assignment]
        channels = stylegan_channels(cfg.channel_multiplier, cfg.narrow * 0.5)
        self.log_size = int(math.log2(cfg.out_size))
        self.conv_body_first = nn.Conv2d(3, channels[cfg.out_size], 1)
        in_ch = channels[cfg.out_size]
        self.conv_body_down = nn.ModuleList()
        for i in range(self.log_size, 2, -1):
            self.conv_body_down.append(ResBlock(in_ch, channels[2 ** (i - 1)], mode="down"))
            in_ch = channels[2 ** (i - 1)]
        self.final_conv = nn.Conv2d(in_ch, channels[4], 3, 1, 1)
        in_ch = channels[4]
        self.conv_body_up = nn.ModuleList()
        for i in range(3, self.log_size + 1):
            self.conv_body_up.append(ResBlock(in_ch, channels[2**i], mode="up"))
            in_ch = channels[2**i]
        self.toRGB = nn.ModuleList([nn.Conv2d(channels[2**i], 3, 1) for i in range(3, self.log_size + 1)])
        n_w = (self.log_size * 2 - 2) if cfg.different_w else 1
        self.final_linear = nn.Linear(channels[4] * 16, n_w * cfg.num_style_feat)
        self.stylegan_decoder = StyleGAN2GeneratorCSFT(
            cfg.out_size, cfg.num_style_feat, cfg.num_mlp, cfg.channel_multiplier, cfg.narrow, cfg.sft_half
        )
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for i in range(3, self.log_size + 1):
            ch = channels[2**i]
            sft_ch = ch if cfg.sft_half else ch * 2
            for lst in (self.condition_scale, self.condition_shift):
                lst.append(nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(ch, sft_ch, 3, 1, 1)))

    def forward(self, x: torch.Tensor, randomize_noise: bool = False, return_rgb: bool = False) -> GFPGANOutput:
        """``x``: ``B×3×S×S`` in ``[-1, 1]`` (S = ``out_size``) -> :class:`GFPGANOutput`."""
        cfg: GFPGANv1CleanConfig = self.config  # type: ignore[assignment]
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (cfg.out_size, cfg.out_size):
            raise ValueError(f"expected B×3×{cfg.out_size}×{cfg.out_size}, got {tuple(x.shape)}")
        conditions: list[torch.Tensor] = []
        skips: list[torch.Tensor] = []
        rgbs: list[torch.Tensor] = []
        feat = F.leaky_relu(self.conv_body_first(x), negative_slope=0.2)
        for block in self.conv_body_down:
            feat = block(feat)
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat), negative_slope=0.2)
        style = self.final_linear(feat.reshape(feat.size(0), -1))
        if cfg.different_w:
            style = style.view(style.size(0), -1, cfg.num_style_feat)
        for i, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[i])
            conditions.append(self.condition_scale[i](feat))
            conditions.append(self.condition_shift[i](feat))
            if return_rgb:
                rgbs.append(self.toRGB[i](feat))
        image = self.stylegan_decoder(
            style, conditions, input_is_latent=cfg.input_is_latent, randomize_noise=randomize_noise
        )
        return GFPGANOutput(image=image, rgbs=rgbs)
