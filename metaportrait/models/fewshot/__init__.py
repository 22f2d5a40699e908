"""Few-shot adversarial talking heads (Zakharov et al. 2019, arXiv:1905.08233): embedder E,
generator G with AdaIN parameters ψ = P·ê, projection discriminator D (docs/METHOD.md §10).

Training (meta-learning and few-shot fine-tuning) lives in :mod:`metaportrait.training.fewshot`.
"""

from metaportrait.models.fewshot.discriminator import (
    DiscriminatorOutput,
    ProjectionDiscriminator,
    ProjectionDiscriminatorConfig,
)
from metaportrait.models.fewshot.embedder import Embedder, EmbedderConfig
from metaportrait.models.fewshot.generator import FewShotGenerator, FewShotGeneratorConfig

__all__ = [
    "Embedder",
    "EmbedderConfig",
    "FewShotGenerator",
    "FewShotGeneratorConfig",
    "ProjectionDiscriminator",
    "ProjectionDiscriminatorConfig",
    "DiscriminatorOutput",
]
