"""Building blocks of the few-shot talking-head networks (Zakharov et al. 2019, §3.2 and supp. A).

* :func:`sn` — spectral normalisation (Miyato et al. 2018) applied to every convolution and
  linear layer of the embedder, generator and discriminator ("spectral normalization everywhere").
* :class:`ResBlockDown` — residual downsampling block (BigGAN discriminator block), with optional
  instance normalisation (the generator's encoder uses it, the embedder and discriminator do not).
* :class:`ResBlock` — residual block at constant resolution (the discriminator's extra block).
* :func:`adaptive_instance_norm`, :class:`AdaINResBlock`, :class:`AdaINResBlockUp` — the
  generator's bottleneck and upsampling blocks whose normalisation parameters are slices of the
  vector ψ = P·e (paper eq. 2: ψ̂_i = P ê_i).
* :class:`SelfAttention` — SAGAN self-attention (Zhang et al. 2019), used at 32² (down) and
  64² (up) at 256², i.e. at H/8 and H/4 for other resolutions.

Tensors are float ``B×C×H×W``; every module here is pure tensors in, tensors out.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = [
    "sn",
    "has_spectral_norm",
    "SelfAttention",
    "ResBlockDown",
    "ResBlock",
    "adaptive_instance_norm",
    "AdaINResBlock",
    "AdaINResBlockUp",
]


def sn(module: nn.Module) -> nn.Module:
    """Spectral-normalise ``module.weight`` (parametrisation API: ``_u``/``_v`` live in the state dict)."""
    return spectral_norm(module)


def has_spectral_norm(module: nn.Module) -> bool:
    """True when ``module.weight`` is spectrally normalised."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is None or "weight" not in parametrizations:
        return False
    return any(type(p).__name__ == "_SpectralNorm" for p in parametrizations["weight"])


def _conv(cin: int, cout: int, kernel: int) -> nn.Module:
    return sn(nn.Conv2d(cin, cout, kernel, padding=kernel // 2))


class SelfAttention(nn.Module):
    """SAGAN self-attention: ``x + γ·o(softmax(fᵀg)·h)`` with γ initialised to 0.

    Input and output ``B×C×H×W``; the attention map is ``B×HW×HW``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 8, 1)
        value = max(channels // 2, 1)
        self.query = sn(nn.Conv2d(channels, inner, 1))
        self.key = sn(nn.Conv2d(channels, inner, 1))
        self.value = sn(nn.Conv2d(channels, value, 1))
        self.out = sn(nn.Conv2d(value, channels, 1))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)  # B×c'×N
        k = self.key(x).flatten(2)  # B×c'×N
        v = self.value(x).flatten(2)  # B×c''×N
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # B×N×N
        o = torch.bmm(v, attn.transpose(1, 2)).view(b, -1, h, w)
        return x + self.gamma * self.out(o)


class ResBlockDown(nn.Module):
    """Residual downsampling block ``B×cin×H×W -> B×cout×H/2×W/2``.

    Main path: [norm] -> ReLU -> conv3×3 -> [norm] -> ReLU -> conv3×3 -> avg-pool 2;
    skip: conv1×1 -> avg-pool 2. ``first=True`` drops the leading norm/ReLU (the block sees raw
    images). ``norm`` is ``"instance"`` (affine instance norm; generator encoder) or ``"none"``.
    """

    def __init__(self, cin: int, cout: int, *, norm: Literal["none", "instance"] = "none", first: bool = False) -> None:
        super().__init__()
        if norm == "instance":
            self.norm1: nn.Module = nn.Identity() if first else nn.InstanceNorm2d(cin, affine=True)
            self.norm2: nn.Module = nn.InstanceNorm2d(cout, affine=True)
        elif norm == "none":
            self.norm1 = nn.Identity()
            self.norm2 = nn.Identity()
        else:
            raise ValueError(f"norm must be 'none' or 'instance', got {norm!r}")
        self.first = first
        self.conv1 = _conv(cin, cout, 3)
        self.conv2 = _conv(cout, cout, 3)
        self.skip = _conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if not self.first:
            h = F.relu(h)
        h = self.conv1(h)
        h = self.conv2(F.relu(self.norm2(h)))
        return F.avg_pool2d(h, 2) + F.avg_pool2d(self.skip(x), 2)


class ResBlock(nn.Module):
    """Pre-activation residual block at constant resolution (no normalisation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 3)
        self.conv2 = _conv(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def adaptive_instance_norm(x: torch.Tensor, params: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN (Huang & Belongie 2017): ``(1 + γ)·IN(x) + β`` with ``params = [γ | β]`` of shape ``B×2C``.

    γ is stored as an offset from 1, so ψ = 0 is the identity modulation of an instance norm.
    """
    b, c = x.shape[:2]
    if params.shape != (b, 2 * c):
        raise ValueError(f"AdaIN expects parameters of shape {(b, 2 * c)}, got {tuple(params.shape)}")
    gamma, beta = params.to(x.dtype).split(c, dim=1)
    normed = F.instance_norm(x, eps=eps)
    return normed * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]


class AdaINResBlock(nn.Module):
    """Generator bottleneck block: AdaIN -> ReLU -> conv3×3 -> AdaIN -> ReLU -> conv3×3, identity skip.

    Consumes ``num_adain_params = 4·C`` entries of ψ.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = _conv(channels, channels, 3)
        self.conv2 = _conv(channels, channels, 3)

    @property
    def num_adain_params(self) -> int:
        return 4 * self.channels

    def forward(self, x: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        p1, p2 = psi.split(2 * self.channels, dim=1)
        h = self.conv1(F.relu(adaptive_instance_norm(x, p1)))
        h = self.conv2(F.relu(adaptive_instance_norm(h, p2)))
        return x + h


class AdaINResBlockUp(nn.Module):
    """Generator upsampling block ``B×cin×H×W -> B×cout×2H×2W``.

    Main path: AdaIN -> ReLU -> nearest ×2 -> conv3×3 -> AdaIN -> ReLU -> conv3×3;
    skip: nearest ×2 -> conv1×1. Consumes ``num_adain_params = 2·cin + 2·cout`` entries of ψ.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cin = cin
        self.cout = cout
        self.conv1 = _conv(cin, cout, 3)
        self.conv2 = _conv(cout, cout, 3)
        self.skip = _conv(cin, cout, 1)

    @property
    def num_adain_params(self) -> int:
        return 2 * self.cin + 2 * self.cout

    def forward(self, x: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        p1, p2 = psi.split([2 * self.cin, 2 * self.cout], dim=1)
        h = F.relu(adaptive_instance_norm(x, p1))
        h = self.conv1(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.conv2(F.relu(adaptive_instance_norm(h, p2)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))
