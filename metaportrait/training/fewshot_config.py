"""Few-shot (Zakharov et al. 2019) run settings and model presets: :class:`FewShotTrainConfig`,
:class:`FewShotLossWeights`, :func:`build_models`. Re-exported by :mod:`metaportrait.training.fewshot`."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from metaportrait.config import ConfigChecks, rename_keys
from metaportrait.models.fewshot import (
    Embedder,
    EmbedderConfig,
    FewShotGenerator,
    FewShotGeneratorConfig,
    ProjectionDiscriminator,
    ProjectionDiscriminatorConfig,
)


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FewShotLossWeights:
    """Loss weights of Zakharov et al. 2019: content 1.5e-1 (VGG19) and 2.5e-2 (VGGFace; SFace here),
    adversarial 1, feature matching 10, embedding match 10. ``pixel`` (multi-scale L1) is 0 in the
    paper; the CPU demo and the tests use it instead of the perceptual networks."""

    vgg19: float = 0.15
    vggface: float = 0.025
    pixel: float = 0.0
    adversarial: float = 1.0
    feature_matching: float = 10.0
    embedding_match: float = 10.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"loss weight {f.name} must be a finite number >= 0, got {v!r}")
        if self.vgg19 == 0 and self.vggface == 0 and self.pixel == 0:
            raise ValueError("at least one content-loss weight (vgg19, vggface, pixel) must be > 0")


# Field names before the training configs shared the diffusers-script names ({old: new}).
RENAMED_KEYS = {"keep_checkpoints": "checkpoints_total_limit"}


@dataclass(frozen=True)
class FewShotTrainConfig(ConfigChecks):
    """Meta-learning run settings; load with :meth:`from_json` (``configs/fewshot_*.json``).

    ``preset`` picks the E/G/D presets (``paper`` 256², ``demo`` 128², ``tiny`` 64²); frames are
    resized to that resolution. ``frames_per_episode`` is K (8 in the paper). ``checkpoint_every``
    steps a checkpoint (safetensors + JSON) is written to ``output_dir/checkpoints/step_<8-digit step>`` (the last
    ``checkpoints_total_limit`` are kept); at the end E, G, D go to ``output_dir/{embedder,generator,
    discriminator}`` with ``save_pretrained``.
    """

    data_dir: str
    output_dir: str
    preset: Literal["paper", "demo", "tiny"] = "paper"
    frames_per_episode: int = 8
    batch_size: int = 8
    steps: int = 100_000
    lr_embedder_generator: float = 5e-5
    lr_discriminator: float = 2e-4
    adam_betas: tuple[float, float] = (0.0, 0.9)
    d_steps_per_g_step: int = 2
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 1000
    checkpoints_total_limit: int = 3
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    loss_weights: FewShotLossWeights = FewShotLossWeights()

    def __post_init__(self) -> None:
        if isinstance(self.loss_weights, dict):
            object.__setattr__(self, "loss_weights", FewShotLossWeights(**self.loss_weights))
        if isinstance(self.adam_betas, list):
            object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        self.validate()

    def validate(self) -> None:
        for lit in ("preset", "mixed_precision"):
            allowed = typing.get_args(typing.get_type_hints(FewShotTrainConfig)[lit])
            if getattr(self, lit) not in allowed:
                raise ValueError(f"{lit} must be one of {allowed}, got {getattr(self, lit)!r}")
        self.check_positive_ints("frames_per_episode", "batch_size", "steps", "d_steps_per_g_step", "checkpoint_every",
                                 "checkpoints_total_limit", "log_every")
        self.check_non_negative_ints("num_workers")
        for name in ("lr_embedder_generator", "lr_discriminator"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not isinstance(self.loss_weights, FewShotLossWeights):
            raise ValueError(f"loss_weights must be a FewShotLossWeights or dict, got {self.loss_weights!r}")

    @property
    def image_size(self) -> int:
        return EmbedderConfig.preset(self.preset).image_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FewShotTrainConfig:
        """``keep_checkpoints`` (the older name) is read as ``checkpoints_total_limit``."""
        data = rename_keys(data, RENAMED_KEYS, "FewShotTrainConfig")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"_comment"})
        if unknown:
            raise ValueError(f"FewShotTrainConfig: unknown keys {unknown}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> FewShotTrainConfig:
        """Read a JSON config (``configs/fewshot_paper.json``); a ``"_comment"`` key is ignored."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> FewShotTrainConfig:
        return dataclasses.replace(self, **changes)


# -- models --------------------------------------------------------------------------------------
def build_models(preset: Literal["paper", "demo", "tiny"], num_videos: int) -> tuple[Embedder, FewShotGenerator, ProjectionDiscriminator]:
    """E, G, D of one preset, with ``num_videos`` rows of W."""
    e = Embedder(EmbedderConfig.preset(preset))
    g = FewShotGenerator(FewShotGeneratorConfig.preset(preset))
    d = ProjectionDiscriminator(ProjectionDiscriminatorConfig.preset(preset, num_videos=num_videos))
    _check_compatible(e, g, d)
    return e, g, d


def _check_compatible(e: Embedder, g: FewShotGenerator, d: ProjectionDiscriminator) -> None:
    dims = (e.config.embed_dim, g.config.embed_dim, d.config.embed_dim)
    sizes = (e.config.image_size, g.config.image_size, d.config.image_size)
    if len(set(dims)) != 1 or len(set(sizes)) != 1:
        raise ValueError(f"embedder/generator/discriminator disagree: embed dims {dims}, image sizes {sizes}")
