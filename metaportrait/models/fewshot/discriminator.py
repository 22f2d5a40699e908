"""Projection discriminator D(x, y, i; θ, W, w_0, b) of Zakharov et al. 2019, §3.2 (eq. 6) and §3.3.

V(x, y; θ) is a residual downsampling network over concat(x, y) (the embedder's architecture plus
one extra residual block at the lowest resolution), with global sum pooling followed by ReLU,
giving v ∈ R^D. The realism score is the projection (Miyato & Koyama 2018)

    r = V(x, y)ᵀ (W_i + w_0) + b,

where W (``num_videos×D``; row i is the paper's column W_i) has one embedding per training video.
For fine-tuning on a new person (§3.3) the video-specific vector is replaced by
w' = w_0 + ê_NEW: pass ``w_override``, or build a personalised copy with
:meth:`ProjectionDiscriminator.personalize` that stores w' as the parameter ``w_personal``.
The intermediate block outputs are returned for the feature-matching loss.

Images ``x`` and landmark images ``y`` are float RGB ``B×3×H×W`` in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from metaportrait.models.fewshot.embedder import Preset, check_downsampling_layout
from metaportrait.models.fewshot.layers import ResBlock, ResBlockDown, SelfAttention
from metaportrait.models.hub import FEWSHOT_PAPER_URL, HubModel, ModelConfig

__all__ = ["ProjectionDiscriminatorConfig", "ProjectionDiscriminator", "DiscriminatorOutput"]


@dataclass(frozen=True)
class ProjectionDiscriminatorConfig(ModelConfig):
    """Discriminator hyper-parameters; ``embed_dim`` (D) is ``channels[-1]`` and must match the embedder's.

    ``num_videos``: rows of W, one per training video. ``personalized``: the model carries
    w' (``w_personal``) used when ``forward`` gets neither ``video_index`` nor ``w_override``.
    """

    image_size: int = 256
    channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    attention_resolution: int = 32
    extra_block: bool = True
    num_videos: int = 1
    personalized: bool = False

    def validate(self) -> None:
        check_downsampling_layout("ProjectionDiscriminatorConfig", self.image_size, self.channels, self.attention_resolution)
        self.check_positive_ints("num_videos")

    @property
    def embed_dim(self) -> int:
        return self.channels[-1]

    @classmethod
    def preset(cls, name: Preset, num_videos: int = 1) -> ProjectionDiscriminatorConfig:
        """Same layouts as :meth:`EmbedderConfig.preset` plus the extra block and ``num_videos`` rows of W."""
        if name == "paper":
            return cls(image_size=256, channels=(64, 128, 256, 512, 512, 512), attention_resolution=32, num_videos=num_videos)
        elif name == "demo":
            return cls(image_size=128, channels=(32, 64, 128, 256, 256), attention_resolution=16, num_videos=num_videos)
        elif name == "tiny":
            return cls(image_size=64, channels=(8, 16, 32, 32), attention_resolution=8, num_videos=num_videos)
        else:
            raise ValueError(f"unknown preset {name!r}; expected 'paper', 'demo' or 'tiny'")


@dataclass
class DiscriminatorOutput:
    """``score``: B realism scores r; ``v``: B×D pooled V(x, y); ``features``: block outputs (feature matching)."""

    score: torch.Tensor
    v: torch.Tensor
    features: tuple[torch.Tensor, ...]


class ProjectionDiscriminator(HubModel, paper_url=FEWSHOT_PAPER_URL, tags=["few-shot", "talking-head", "zakharov2019"]):
    """D(x, y, i) = V(x, y)ᵀ(W_i + w_0) + b (Zakharov et al. 2019, eq. 6)."""

    config_class = ProjectionDiscriminatorConfig

    def __init__(self, config: ProjectionDiscriminatorConfig) -> None:
        super().__init__(config)
        config = self.config
        self.blocks = nn.ModuleList()
        cin = 6
        for i, cout in enumerate(config.channels):
            self.blocks.append(ResBlockDown(cin, cout, norm="none", first=i == 0))
            if config.image_size >> (i + 1) == config.attention_resolution:
                self.blocks.append(SelfAttention(cout))
            cin = cout
        if config.extra_block:
            self.blocks.append(ResBlock(cin))
        d = config.embed_dim
        std = 1.0 / math.sqrt(d)
        self.W = nn.Parameter(torch.randn(config.num_videos, d) * std)
        self.w0 = nn.Parameter(torch.randn(d) * std)
        self.b = nn.Parameter(torch.zeros(()))
        if config.personalized:
            self.w_personal = nn.Parameter(torch.zeros(d))

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def features(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """V(x, y): returns (v ``B×D``, block outputs)."""
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s) or y.shape != x.shape:
            raise ValueError(
                f"ProjectionDiscriminator expects x and y of shape B×3×{s}×{s}, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        h = torch.cat([x, y], dim=1)
        feats = []
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        v = torch.relu(h.sum(dim=(2, 3)))
        return v, tuple(feats)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        video_index: torch.Tensor | None = None,
        w_override: torch.Tensor | None = None,
    ) -> DiscriminatorOutput:
        """Score frames.

        Args:
            x: images ``B×3×H×W`` in [-1, 1]; y: their landmark images, same shape.
            video_index: ``B`` long tensor of training-video indices i (score uses W_i + w_0).
            w_override: the full projection vector (``D`` or ``B×D``), e.g. w' = w_0 + ê_NEW.
            Neither: a personalised model uses its stored w' (``w_personal``).
        """
        if video_index is not None and w_override is not None:
            raise ValueError("pass either video_index or w_override, not both")
        v, feats = self.features(x, y)
        b = x.shape[0]
        if video_index is not None:
            if video_index.shape != (b,):
                raise ValueError(f"video_index must have shape ({b},), got {tuple(video_index.shape)}")
            w = self.W[video_index] + self.w0
        elif w_override is not None:
            w = w_override
        elif self.config.personalized:
            w = self.w_personal
        else:
            raise ValueError("ProjectionDiscriminator needs video_index or w_override (this model is not personalised)")
        if w.ndim == 1:
            w = w.unsqueeze(0).expand(b, -1)
        if w.shape != (b, self.embed_dim):
            raise ValueError(f"projection vector must be B×{self.embed_dim}, got {tuple(w.shape)}")
        score = (v * w.to(v.dtype)).sum(dim=1) + self.b
        return DiscriminatorOutput(score=score, v=v, features=feats)

    def personalize(self, e: torch.Tensor) -> ProjectionDiscriminator:
        """A personalised copy D'(x, y; θ, w', b) with w' = w_0 + ê (§3.3); this model is left unchanged."""
        e = e.reshape(-1)
        if e.shape != (self.embed_dim,):
            raise ValueError(f"personalize expects one embedding of size {self.embed_dim}, got {tuple(e.shape)}")
        copy = ProjectionDiscriminator(self.config.replace(personalized=True)).to(self.w0.device, self.w0.dtype)
        state = {k: v for k, v in self.state_dict().items() if k != "w_personal"}
        missing, unexpected = copy.load_state_dict(state, strict=False)
        if unexpected or missing != ["w_personal"]:
            raise RuntimeError(f"personalize: state mismatch (missing {missing}, unexpected {unexpected})")
        with torch.no_grad():
            copy.w_personal.copy_(self.w0 + e.to(self.w0.device, self.w0.dtype))
        copy.train(self.training)
        return copy
