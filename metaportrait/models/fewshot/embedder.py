"""Embedder E(x, y; φ) of Zakharov et al. 2019 ("Few-Shot Adversarial Learning of Realistic Neural
Talking Head Models"), §3.2 eq. 1 and supp. A.

E maps a frame x and its landmark image y (concatenated, 6 channels) to a vector ê; the video
embedding is the mean over K frames, ê_i = 1/K Σ_k E(x_i(s_k), y_i(s_k)) (eq. 1). Architecture:
residual downsampling blocks (no normalisation), SAGAN self-attention at 32×32 for 256² inputs
(H/8 in general), spectral normalisation on every layer, global sum pooling followed by ReLU.

Images ``x`` and landmark images ``y`` are float RGB ``B×3×H×W`` in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from metaportrait.models.fewshot.layers import ResBlockDown, SelfAttention
from metaportrait.models.hub import FEWSHOT_PAPER_URL, HubModel, ModelConfig

__all__ = ["EmbedderConfig", "Embedder", "Preset", "check_downsampling_layout"]

Preset = Literal["paper", "demo", "tiny"]


def check_downsampling_layout(name: str, image_size: int, channels: tuple[int, ...], attention_resolution: int) -> None:
    """Validate a stack of stride-2 blocks over ``image_size`` with self-attention after one of them."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"{name}: image_size must be a power of two >= 8, got {image_size}")
    if not channels or any(c <= 0 for c in channels):
        raise ValueError(f"{name}: channels must be a non-empty tuple of positive ints, got {channels}")
    if image_size >> len(channels) < 1:
        raise ValueError(f"{name}: {len(channels)} downsampling blocks are too many for image_size {image_size}")
    resolutions = [image_size >> (i + 1) for i in range(len(channels))]
    if attention_resolution not in resolutions:
        raise ValueError(
            f"{name}: attention_resolution {attention_resolution} is not a block output resolution {resolutions}"
        )


@dataclass(frozen=True)
class EmbedderConfig(ModelConfig):
    """Embedder hyper-parameters. ``embed_dim`` is ``channels[-1]`` (512 in the paper).

    ``attention_resolution``: the self-attention layer follows the block whose output has this
    size (32 at 256², i.e. ``image_size // 8``).
    """

    image_size: int = 256
    channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    attention_resolution: int = 32

    def validate(self) -> None:
        check_downsampling_layout("EmbedderConfig", self.image_size, self.channels, self.attention_resolution)

    @property
    def embed_dim(self) -> int:
        return self.channels[-1]

    @classmethod
    def preset(cls, name: Preset) -> EmbedderConfig:
        """``paper`` (256², 64-128-256-512-512-512, 512-d), ``demo`` (128², CPU-trainable), ``tiny`` (64², tests)."""
        if name == "paper":
            return cls(image_size=256, channels=(64, 128, 256, 512, 512, 512), attention_resolution=32)
        elif name == "demo":
            return cls(image_size=128, channels=(32, 64, 128, 256, 256), attention_resolution=16)
        elif name == "tiny":
            return cls(image_size=64, channels=(8, 16, 32, 32), attention_resolution=8)
        else:
            raise ValueError(f"unknown preset {name!r}; expected 'paper', 'demo' or 'tiny'")


class Embedder(HubModel, paper_url=FEWSHOT_PAPER_URL, tags=["few-shot", "talking-head", "zakharov2019"]):
    """E(x, y) -> ê ∈ R^D (Zakharov et al. 2019, eq. 1)."""

    config_class = EmbedderConfig

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__(config)
        config = self.config
        layers: list[nn.Module] = []
        cin = 6
        for i, cout in enumerate(config.channels):
            layers.append(ResBlockDown(cin, cout, norm="none", first=i == 0))
            if config.image_size >> (i + 1) == config.attention_resolution:
                layers.append(SelfAttention(cout))
            cin = cout
        self.blocks = nn.Sequential(*layers)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s) or y.shape != x.shape:
            raise ValueError(
                f"Embedder expects x and y of shape B×3×{s}×{s}, got {tuple(x.shape)} and {tuple(y.shape)}"
            )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-frame embeddings: ``x``, ``y`` ``B×3×H×W`` in [-1, 1] -> ``B×D`` (non-negative)."""
        self._check(x, y)
        h = self.blocks(torch.cat([x, y], dim=1))
        return torch.relu(h.sum(dim=(2, 3)))

    def embed_frames(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Video embeddings ê: ``x``, ``y`` ``B×K×3×H×W`` -> ``B×D``, the mean over the K frames."""
        if x.ndim != 5 or y.shape != x.shape:
            raise ValueError(f"embed_frames expects x and y of shape B×K×3×H×W, got {tuple(x.shape)} and {tuple(y.shape)}")
        b, k = x.shape[:2]
        e = self.forward(x.flatten(0, 1), y.flatten(0, 1))
        return e.view(b, k, -1).mean(dim=1)
