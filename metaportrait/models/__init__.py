"""MetaPortrait networks (one paper component per file); every network is a ``HubModel``."""

from metaportrait.models.discriminator import (
    DISCRIMINATOR_PRESETS,
    DiscriminatorConfig,
    DiscriminatorOutput,
    MultiScalePatchDiscriminator,
    discriminator_config,
)
from metaportrait.models.eye_interior import EyeInteriorConfig, EyeInteriorNetwork, EyeInteriorOutput
from metaportrait.models.generator import (
    PRESETS,
    GeneratorConfig,
    GeneratorOutput,
    MetaPortraitGenerator,
    generator_config,
)
from metaportrait.models.hub import HubModel, ModelConfig
from metaportrait.models.layers import (
    SPADE,
    AdaIN,
    DownBlock,
    FiLM,
    FusionBlock,
    FusionNorm,
    ResBlock,
    UpBlock,
    gaussian_blur,
    make_identity_grid,
)
from metaportrait.models.mouth_interior import MouthInteriorConfig, MouthInteriorNetwork, MouthInteriorOutput
from metaportrait.models.refinement_network import RefinementConfig, RefinementNetwork, RefinementOutput
from metaportrait.models.warping_network import WarpingConfig, WarpingNetwork, WarpingOutput
