"""Generator G(y, ê; ψ, P) of Zakharov et al. 2019, §3.2 (eq. 2) and §3.3 (fine-tuning), supp. A.

An image-to-image network on the landmark image y:

* encoder: residual downsampling blocks with (affine) instance normalisation, self-attention at
  32×32 for 256² inputs (H/8);
* bottleneck: residual blocks with AdaIN;
* decoder: residual upsampling blocks with AdaIN, self-attention at 64×64 (H/4);
* output: AdaIN -> ReLU -> conv3×3 -> tanh, an RGB image in [-1, 1].

All AdaIN parameters form one vector ψ̂ = P·ê (eq. 2), with **one** learned projection matrix
``P`` of shape ``|ψ|×D`` (stored as a plain parameter matrix; every convolution is spectrally
normalised). Fine-tuning (§3.3) replaces P·ê by a person-specific vector ψ' initialised to
P·ê_NEW: pass ``adain_params`` to :meth:`FewShotGenerator.forward`, or build a personalised copy
with :meth:`FewShotGenerator.personalize` that stores ψ' as the parameter ``adain_personal``.

Landmark images ``y`` and outputs are float RGB ``B×3×H×W`` in [-1, 1]; ê is ``B×D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.models.fewshot.embedder import Preset
from metaportrait.models.fewshot.layers import (
    AdaINResBlock,
    AdaINResBlockUp,
    ResBlockDown,
    SelfAttention,
    adaptive_instance_norm,
    sn,
)
from metaportrait.models.hub import FEWSHOT_PAPER_URL, HubModel, ModelConfig

__all__ = ["FewShotGeneratorConfig", "FewShotGenerator"]


@dataclass(frozen=True)
class FewShotGeneratorConfig(ModelConfig):
    """Generator hyper-parameters.

    ``down_channels``: encoder blocks (each halves the resolution); ``bottleneck_blocks`` AdaIN
    residual blocks at ``down_channels[-1]`` channels; ``up_channels``: decoder blocks (each doubles
    the resolution, as many as encoder blocks). ``attention_down_resolution`` / ``attention_up_resolution``:
    the self-attention layers follow the encoder / decoder block with that output size.
    ``personalized``: the model carries a person-specific ψ' (``adain_personal``) used when
    ``forward`` gets neither ``e`` nor ``adain_params``.
    """

    image_size: int = 256
    embed_dim: int = 512
    down_channels: tuple[int, ...] = (64, 128, 256, 512)
    bottleneck_blocks: int = 5
    up_channels: tuple[int, ...] = (256, 128, 64, 64)
    attention_down_resolution: int = 32
    attention_up_resolution: int = 64
    personalized: bool = False

    def validate(self) -> None:
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise ValueError(f"FewShotGeneratorConfig: image_size must be a power of two >= 8, got {s}")
        self.check_positive_ints("embed_dim")
        for name in ("down_channels", "up_channels"):
            ch = getattr(self, name)
            if not ch or any(c <= 0 for c in ch):
                raise ValueError(f"FewShotGeneratorConfig: {name} must be positive ints, got {ch}")
        if len(self.up_channels) != len(self.down_channels):
            raise ValueError(
                "FewShotGeneratorConfig: up_channels and down_channels need the same length, got "
                f"{self.up_channels} and {self.down_channels}"
            )
        bottom = s >> len(self.down_channels)
        if bottom < 2:
            raise ValueError(f"FewShotGeneratorConfig: {len(self.down_channels)} down blocks leave {bottom}px at {s}²")
        self.check_non_negative_ints("bottleneck_blocks")
        down_res = [s >> (i + 1) for i in range(len(self.down_channels))]
        up_res = [bottom << (i + 1) for i in range(len(self.up_channels))]
        if self.attention_down_resolution not in down_res:
            raise ValueError(
                f"FewShotGeneratorConfig: attention_down_resolution {self.attention_down_resolution} not in {down_res}"
            )
        if self.attention_up_resolution not in up_res:
            raise ValueError(
                f"FewShotGeneratorConfig: attention_up_resolution {self.attention_up_resolution} not in {up_res}"
            )

    @classmethod
    def preset(cls, name: Preset) -> FewShotGeneratorConfig:
        """``paper`` (256², 512-d ê), ``demo`` (128², 256-d), ``tiny`` (64², 32-d)."""
        if name == "paper":
            return cls(
                image_size=256, embed_dim=512, down_channels=(64, 128, 256, 512), bottleneck_blocks=5,
                up_channels=(256, 128, 64, 64), attention_down_resolution=32, attention_up_resolution=64,
            )
        elif name == "demo":
            return cls(
                image_size=128, embed_dim=256, down_channels=(32, 64, 128, 256), bottleneck_blocks=3,
                up_channels=(128, 64, 32, 32), attention_down_resolution=16, attention_up_resolution=32,
            )
        elif name == "tiny":
            return cls(
                image_size=64, embed_dim=32, down_channels=(8, 16, 32), bottleneck_blocks=1,
                up_channels=(16, 8, 8), attention_down_resolution=8, attention_up_resolution=16,
            )
        else:
            raise ValueError(f"unknown preset {name!r}; expected 'paper', 'demo' or 'tiny'")


class FewShotGenerator(HubModel, paper_url=FEWSHOT_PAPER_URL, tags=["few-shot", "talking-head", "zakharov2019"]):
    """G(y, ê) -> x̂ (Zakharov et al. 2019, eq. 2); the AdaIN parameters are ψ = P·ê."""

    config_class = FewShotGeneratorConfig

    def __init__(self, config: FewShotGeneratorConfig) -> None:
        super().__init__(config)
        config = self.config
        s = config.image_size
        down: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(config.down_channels):
            down.append(ResBlockDown(cin, cout, norm="instance", first=i == 0))
            if s >> (i + 1) == config.attention_down_resolution:
                down.append(SelfAttention(cout))
            cin = cout
        self.down = nn.Sequential(*down)

        self.bottleneck = nn.ModuleList(AdaINResBlock(cin) for _ in range(config.bottleneck_blocks))
        bottom = s >> len(config.down_channels)
        self.up = nn.ModuleList()
        self.up_attention = nn.ModuleDict()
        for i, cout in enumerate(config.up_channels):
            self.up.append(AdaINResBlockUp(cin, cout))
            if bottom << (i + 1) == config.attention_up_resolution:
                self.up_attention[str(i)] = SelfAttention(cout)
            cin = cout
        self.out_channels = cin
        self.to_rgb = sn(nn.Conv2d(cin, 3, 3, padding=1))

        sizes = [b.num_adain_params for b in self.bottleneck]
        sizes += [b.num_adain_params for b in self.up]
        sizes.append(2 * cin)  # the output AdaIN
        self.adain_sizes: tuple[int, ...] = tuple(sizes)
        self.num_adain_params = sum(sizes)
        # ψ = P·e, one projection matrix for all AdaIN layers. With e of typical RMS r the
        # initial ψ has RMS ≈ 0.1·r, i.e. close to plain instance normalisation.
        self.P = nn.Parameter(torch.randn(self.num_adain_params, config.embed_dim) * (0.1 / math.sqrt(config.embed_dim)))
        if config.personalized:
            self.adain_personal = nn.Parameter(torch.zeros(self.num_adain_params))

    def project(self, e: torch.Tensor) -> torch.Tensor:
        """ψ = P·ê: ``B×D`` -> ``B×|ψ|`` (row b is ``P @ e[b]``)."""
        if e.ndim != 2 or e.shape[1] != self.config.embed_dim:
            raise ValueError(f"e must be B×{self.config.embed_dim}, got {tuple(e.shape)}")
        return F.linear(e, self.P)

    def forward(
        self, y: torch.Tensor, e: torch.Tensor | None = None, adain_params: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Synthesise frames from landmark images.

        Args:
            y: landmark images ``B×3×H×W`` in [-1, 1].
            e: video embeddings ``B×D`` (meta-learning / feed-forward use; ψ = P·e).
            adain_params: ψ given directly, ``B×|ψ|`` or ``|ψ|`` (fine-tuned ψ').
            Neither: a personalised model uses its stored ψ' (``adain_personal``).

        Returns:
            ``B×3×H×W`` images in [-1, 1].
        """
        s = self.config.image_size
        if y.ndim != 4 or y.shape[1:] != (3, s, s):
            raise ValueError(f"y must be B×3×{s}×{s}, got {tuple(y.shape)}")
        b = y.shape[0]
        if e is not None and adain_params is not None:
            raise ValueError("pass either e or adain_params, not both")
        if e is not None:
            if e.shape[0] != b:
                raise ValueError(f"e has batch {e.shape[0]} but y has batch {b}")
            psi = self.project(e)
        elif adain_params is not None:
            psi = adain_params
        elif self.config.personalized:
            psi = self.adain_personal
        else:
            raise ValueError("FewShotGenerator needs e or adain_params (this model is not personalised)")
        if psi.ndim == 1:
            psi = psi.unsqueeze(0).expand(b, -1)
        if psi.shape != (b, self.num_adain_params):
            raise ValueError(f"adain_params must be B×{self.num_adain_params}, got {tuple(psi.shape)}")

        chunks = psi.split(self.adain_sizes, dim=1)
        h = self.down(y)
        n = len(self.bottleneck)
        for block, p in zip(self.bottleneck, chunks[:n]):
            h = block(h, p)
        for i, (block, p) in enumerate(zip(self.up, chunks[n : n + len(self.up)])):
            h = block(h, p)
            if str(i) in self.up_attention:
                h = self.up_attention[str(i)](h)
        h = F.relu(adaptive_instance_norm(h, chunks[-1]))
        return torch.tanh(self.to_rgb(h))

    def personalize(self, e: torch.Tensor) -> FewShotGenerator:
        """A personalised copy G'(y; ψ, ψ') with ψ' = P·ê (§3.3); this model is left unchanged.

        ``e``: one embedding, ``D`` or ``1×D``. The copy keeps all weights (and P), is on the same
        device, in the same train/eval mode, and stores ψ' as the trainable ``adain_personal``.
        """
        e = e.reshape(1, -1) if e.ndim == 1 else e
        if e.shape != (1, self.config.embed_dim):
            raise ValueError(f"personalize expects one embedding (D or 1×D, D={self.config.embed_dim}), got {tuple(e.shape)}")
        copy = FewShotGenerator(self.config.replace(personalized=True)).to(self.P.device, self.P.dtype)
        state = {k: v for k, v in self.state_dict().items() if k != "adain_personal"}
        missing, unexpected = copy.load_state_dict(state, strict=False)
        if unexpected or missing != ["adain_personal"]:
            raise RuntimeError(f"personalize: state mismatch (missing {missing}, unexpected {unexpected})")
        with torch.no_grad():
            copy.adain_personal.copy_(self.project(e.to(self.P.device, self.P.dtype))[0])
        copy.train(self.training)
        return copy
