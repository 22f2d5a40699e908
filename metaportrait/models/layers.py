"""Shared layers of the MetaPortrait networks (MetaPortrait §3.1, eqs. 1-2; docs/METHOD.md §5-6).

* :class:`AdaIN` — instance norm + per-channel affine predicted from a code (motion code z_w in
  the warping hourglass F_w, identity code z_id in the refinement decoder; paper eq. 1).
* :class:`FiLM` / :class:`SPADE` — spatially varying affine predicted from a condition map
  (the warped source features of the refinement network; paper eq. 2, SPADE-style as in the
  official code, which also conditions on the landmark image and the occlusion map).
* :class:`FusionNorm` — the fusion of paper eqs. 1-2: ``h_id = AdaIN(h_in, z_id)``,
  ``h_motion = γ(f)·h_id + β(f)``, ``M = sigmoid(Conv(h_in))`` (reads the un-normalised input, as
  the official code does), ``h_out = M·h_motion + (1 − M)·h_id``.
* :class:`FusionBlock` — a residual block whose two normalisations are :class:`FusionNorm` (the
  decoder cascade of the ID-preserving refinement network).
* :class:`ResBlock`, :class:`DownBlock`, :class:`UpBlock` — plain building blocks.
* :func:`make_identity_grid` — the identity sampling grid of ``grid_sample`` (align_corners=False).
* :func:`gaussian_blur` — separable Gaussian blur with reflection padding (the blur stack of the
  refinement network's ``blend`` output head).

Tensors are ``B×C×H×W``; images are RGB in [-1, 1]; grids are ``B×H×W×2`` (x, y) in grid_sample's
normalised coordinates with ``align_corners=False``.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NormKind = Literal["instance", "batch", "none"]


def _check_map(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a B×C×H×W tensor, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got shape {tuple(x.shape)}")


def _check_code(name: str, code: torch.Tensor, batch: int, dim: int) -> None:
    if code.ndim != 2 or code.shape[0] != batch or code.shape[1] != dim:
        raise ValueError(f"{name}: expected a code of shape ({batch}, {dim}), got {tuple(code.shape)}")


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """An affine normalisation layer: ``instance`` (affine), ``batch`` or ``none`` (identity)."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    elif kind == "batch":
        return nn.BatchNorm2d(channels)
    elif kind == "none":
        return nn.Identity()
    else:
        raise ValueError(f"unknown norm kind {kind!r}; expected 'instance', 'batch' or 'none'")


def make_identity_grid(
    b: int, h: int, w: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The identity sampling grid ``B×H×W×2`` (x, y) of ``grid_sample(..., align_corners=False)``.

    Pixel centres: ``x_j = (2j + 1)/W − 1``, ``y_i = (2i + 1)/H − 1``; sampling an image with it
    returns the image unchanged.
    """
    if b < 1 or h < 1 or w < 1:
        raise ValueError(f"make_identity_grid: sizes must be positive, got b={b}, h={h}, w={w}")
    dtype = dtype if dtype is not None else torch.float32
    xs = (torch.arange(w, device=device, dtype=torch.float32) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=device, dtype=torch.float32) * 2 + 1) / h - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((gx, gy), dim=-1).to(dtype)
    return grid.unsqueeze(0).expand(b, h, w, 2)


def resize_grid(grid: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resample a ``B×H×W×2`` grid to another resolution (area for shrinking, bilinear otherwise).

    Grid values are resolution independent (normalised coordinates), so only the sampling
    positions change.
    """
    if grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"resize_grid: expected a B×H×W×2 grid, got shape {tuple(grid.shape)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(grid.shape[1:3]) == size:
        return grid
    g = grid.permute(0, 3, 1, 2)
    if size[0] <= grid.shape[1] and size[1] <= grid.shape[2]:
        g = F.interpolate(g, size=size, mode="area")
    else:
        g = F.interpolate(g, size=size, mode="bilinear", align_corners=False)
    return g.permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """``n×n`` float64 matrix ``B`` with ``(B @ x)`` = the 1-D Gaussian blur of a length-``n`` column
    ``x`` (σ in pixels, radius ⌈3σ⌉, reflection padding folded into the band)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (taps / sigma) ** 2)
    k = k / k.sum()
    rows = torch.arange(n).unsqueeze(1).expand(n, 2 * radius + 1)
    cols = rows + taps.long().unsqueeze(0)
    cols = torch.where(cols < 0, -cols, cols)  # reflect (no edge repeat), as F.pad(mode="reflect")
    cols = torch.where(cols > n - 1, 2 * (n - 1) - cols, cols)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_((rows.reshape(-1), cols.reshape(-1)), k.repeat(n), accumulate=True)
    return m


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``B×C×H×W`` map, σ in pixels, radius ⌈3σ⌉, reflection padding.

    Computed as ``B_H @ x @ B_Wᵀ`` with banded blur matrices (one batched matmul per axis: ~6× faster
    on a CPU than depthwise convolutions at 256²); same result as OpenCV's ``GaussianBlur`` with
    ``BORDER_REFLECT_101``. ``sigma <= 0`` returns ``x`` unchanged.
    """
    if x.ndim != 4:
        raise ValueError(f"gaussian_blur expects B×C×H×W, got shape {tuple(x.shape)}")
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3.0 * sigma)))
    if radius >= min(x.shape[-2:]):
        raise ValueError(f"gaussian_blur: σ={sigma} (radius {radius}) is too large for a {tuple(x.shape[-2:])} map")
    h, w = x.shape[-2:]
    bh = _blur_matrix(int(h), float(sigma)).to(device=x.device, dtype=x.dtype)
    bw = bh if w == h else _blur_matrix(int(w), float(sigma)).to(device=x.device, dtype=x.dtype)
    return bh @ x @ bw.T


def resize_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``B×C×H×W`` map (area when shrinking, bilinear when enlarging); no-op if same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AdaIN(nn.Module):
    """Adaptive instance normalisation: ``IN(x)·(1 + γ(z)) + β(z)`` with ``[γ, β] = Linear(z)``.

    ``x``: ``B×C×H×W``; ``code``: ``B×code_dim``. The ``1 +`` keeps the layer a plain instance
    norm at initialisation (γ, β start near 0).
    """

    def __init__(self, num_features: int, code_dim: int) -> None:
        super().__init__()
        if num_features < 1 or code_dim < 1:
            raise ValueError(f"AdaIN: num_features and code_dim must be positive, got {num_features}, {code_dim}")
        self.num_features = num_features
        self.code_dim = code_dim
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.affine = nn.Linear(code_dim, 2 * num_features)
        nn.init.normal_(self.affine.weight, std=0.02)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        _check_map("AdaIN input", x, self.num_features)
        _check_code("AdaIN code", code, x.shape[0], self.code_dim)
        gamma, beta = self.affine(code).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class FiLM(nn.Module):
    """Spatial feature-wise modulation ``h·(1 + γ(f)) + β(f)`` from a condition map ``f``.

    ``f`` (``B×cond_channels×H'×W'``) is resized to ``h``'s resolution, then a shared 3×3 conv +
    ReLU and two 3×3 convs give γ and β (SPADE's parameterisation; γ, β start at 0 so the layer
    starts as the identity).
    """

    def __init__(self, num_features: int, cond_channels: int, hidden_channels: int = 128) -> None:
        super().__init__()
        if min(num_features, cond_channels, hidden_channels) < 1:
            raise ValueError(
                f"FiLM: channel counts must be positive, got {num_features}, {cond_channels}, {hidden_channels}"
            )
        self.num_features = num_features
        self.cond_channels = cond_channels
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma_beta = nn.Conv2d(hidden_channels, 2 * num_features, 3, padding=1)
        nn.init.zeros_(self.gamma_beta.bias)
        nn.init.normal_(self.gamma_beta.weight, std=0.01)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        _check_map("FiLM input", h, self.num_features)
        _check_map("FiLM condition", cond, self.cond_channels)
        if cond.shape[0] != h.shape[0]:
            raise ValueError(f"FiLM: batch mismatch, input {tuple(h.shape)} vs condition {tuple(cond.shape)}")
        cond = resize_map(cond, tuple(h.shape[-2:]))
        gamma, beta = self.gamma_beta(self.shared(cond)).chunk(2, dim=1)
        return h * (1 + gamma) + beta


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019): ``FiLM(IN(x), cond)``."""

    def __init__(self, num_features: int, cond_channels: int, hidden_channels: int = 128) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.film = FiLM(num_features, cond_channels, hidden_channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        _check_map("SPADE input", x, self.film.num_features)
        return self.film(self.norm(x), cond)


class FusionNorm(nn.Module):
    """Identity- and motion-aware fusion of paper eqs. 1-2 (one normalisation of a fusion block).

    ``forward(h_in, z_id, cond) -> (h_out, M)``:

    * ``h_id = AdaIN(h_in, z_id)`` (identity-aware),
    * ``h_motion = γ(cond)·h_id + β(cond)`` (motion-aware, :class:`FiLM` of the warped features),
    * ``M = sigmoid(Conv3×3(h_in))`` (``B×1×H×W``, reads the un-normalised input),
    * ``h_out = M·h_motion + (1 − M)·h_id``.
    """

    def __init__(self, num_features: int, identity_dim: int, cond_channels: int, hidden_channels: int = 128) -> None:
        super().__init__()
        self.num_features = num_features
        self.adain = AdaIN(num_features, identity_dim)
        self.film = FiLM(num_features, cond_channels, hidden_channels)
        self.mask = nn.Conv2d(num_features, 1, 3, padding=1)

    def forward(self, h_in: torch.Tensor, z_id: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_map("FusionNorm input", h_in, self.num_features)
        h_id = self.adain(h_in, z_id)
        h_motion = self.film(h_id, cond)
        m = torch.sigmoid(self.mask(h_in))
        return m * h_motion + (1 - m) * h_id, m


class FusionBlock(nn.Module):
    """Residual fusion block of the refinement decoder (paper §3.1, eqs. 1-2).

    ``x_s = shortcut(x)``; ``dx = Conv(LReLU(FusionNorm_0(x)))``; ``dx = Conv(LReLU(FusionNorm_1(dx)))``;
    ``out = x_s + dx`` (the shortcut is a learned 1×1 conv when channel counts differ, fused
    like SPADE-ResBlk). ``forward(x, z_id, cond) -> (out, [M_0, M_1])``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, identity_dim: int, cond_channels: int, hidden_channels: int = 128
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels) < 1:
            raise ValueError(f"FusionBlock: channel counts must be positive, got {in_channels}, {out_channels}")
        mid = min(in_channels, out_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm_0 = FusionNorm(in_channels, identity_dim, cond_channels, hidden_channels)
        self.conv_0 = nn.Conv2d(in_channels, mid, 3, padding=1)
        self.norm_1 = FusionNorm(mid, identity_dim, cond_channels, hidden_channels)
        self.conv_1 = nn.Conv2d(mid, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else nn.Identity()
        )

    def forward(
        self, x: torch.Tensor, z_id: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        _check_map("FusionBlock input", x, self.in_channels)
        h, m0 = self.norm_0(x, z_id, cond)
        h = self.conv_0(F.leaky_relu(h, 0.2))
        h, m1 = self.norm_1(h, z_id, cond)
        h = self.conv_1(F.leaky_relu(h, 0.2))
        return self.shortcut(x) + h, [m0, m1]


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + Conv(act(norm(Conv(act(norm(x))))))`` at constant width."""

    def __init__(self, channels: int, norm: NormKind = "instance") -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"ResBlock: channels must be positive, got {channels}")
        self.channels = channels
        self.body = nn.Sequential(
            make_norm(norm, channels),
            nn.LeakyReLU(0.2, inplace=False),
            nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none"),
            make_norm(norm, channels),
            nn.LeakyReLU(0.2, inplace=False),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map("ResBlock input", x, self.channels)
        return x + self.body(x)


class DownBlock(nn.Module):
    """``Conv3×3 stride 2 → norm → LeakyReLU`` (halves H and W; they must be even).

    A strided conv rather than FOMM's conv-then-pool: it sees every input pixel at a quarter of
    the cost, which matters at 256² on a CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormKind = "instance") -> None:
        super().__init__()
        self.in_channels = in_channels
        # no conv bias in front of a normalisation (it would be cancelled by the mean subtraction)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=norm == "none")
        self.norm = make_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map("DownBlock input", x, self.in_channels)
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"DownBlock: spatial size must be even, got {tuple(x.shape[-2:])}")
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class UpBlock(nn.Module):
    """``Upsample×2 (nearest) → Conv3×3 → norm → LeakyReLU`` (doubles H and W)."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormKind = "instance") -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none")
        self.norm = make_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map("UpBlock input", x, self.in_channels)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class AdaINConvBlock(nn.Module):
    """``Conv3×3 → AdaIN(code) → LeakyReLU`` — the unit of the warping hourglass F_w (paper §3.1)."""

    def __init__(self, in_channels: int, out_channels: int, code_dim: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)  # AdaIN cancels a bias
        self.adain = AdaIN(out_channels, code_dim)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        _check_map("AdaINConvBlock input", x, self.in_channels)
        return F.leaky_relu(self.adain(self.conv(x), code), 0.2)
