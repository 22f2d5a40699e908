"""The contract every network of the package keeps, checked on every ``HubModel`` subclass:

* ``save_pretrained`` -> ``from_pretrained`` gives the same weights (bit for bit) and, where the
  forward takes plain image tensors, the same output on a fixed input;
* loading is strict: a weights file with a missing or an extra key is refused with ``WeightsError``;
* the config survives ``to_dict`` -> JSON -> ``from_dict``.

A new ``HubModel`` subclass without an entry in :data:`TINY` fails :func:`test_every_hub_model_is_covered`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

import metaportrait.models
from metaportrait.errors import WeightsError
from metaportrait.models.audio_to_motion import AudioToMotionConfig
from metaportrait.models.discriminator import discriminator_config
from metaportrait.models.fewshot import EmbedderConfig, FewShotGeneratorConfig, ProjectionDiscriminatorConfig
from metaportrait.models.eye_interior import EyeInteriorConfig
from metaportrait.models.generator import generator_config
from metaportrait.models.gfpgan_clean import GFPGANv1CleanConfig
from metaportrait.models.hub import HubModel, ModelConfig
from metaportrait.models.identity_encoder import IdentityEncoderConfig
from metaportrait.models.mouth_interior import MouthInteriorConfig
from metaportrait.models.temporal_sr import PRESETS as SR_PRESETS


def _all_hub_models() -> set[type[HubModel]]:
    for info in pkgutil.walk_packages(metaportrait.models.__path__, "metaportrait.models."):
        importlib.import_module(info.name)
    found, todo = set(), list(HubModel.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("metaportrait.") and cls not in found:
            found.add(cls)
            todo.extend(cls.__subclasses__())
    return found


def _images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


# class name -> (smallest config, a forward call on a fixed input or None when the inputs are not
# plain image tensors; then the weights are compared exactly)
Forward = Callable[[HubModel, ModelConfig], object]
TINY: dict[str, tuple[Callable[[], ModelConfig], Forward | None]] = {
    "MetaPortraitGenerator": (lambda: generator_config("tiny"), None),
    "WarpingNetwork": (lambda: generator_config("tiny").warping, None),
    "RefinementNetwork": (lambda: generator_config("tiny").refinement, None),
    "MultiScalePatchDiscriminator": (
        lambda: discriminator_config("tiny"),
        lambda m, c: m(_images(64), _images(64, seed=1)[:, : c.condition_channels]),
    ),
    "IdentityEncoder": (lambda: IdentityEncoderConfig(arch="sface"), lambda m, c: m(_images(112))),
    "TemporalSuperResolution": (
        lambda: SR_PRESETS["tiny"],
        lambda m, c: m(_images(c.in_size, batch=3).view(1, 3, 3, c.in_size, c.in_size), randomize_noise=False),
    ),
    "GFPGANv1Clean": (
        lambda: GFPGANv1CleanConfig(out_size=32, num_style_feat=32, num_mlp=1, channel_multiplier=1, narrow=0.125),
        lambda m, c: m(_images(c.out_size)),
    ),
    "Embedder": (lambda: EmbedderConfig.preset("tiny"), lambda m, c: m(_images(c.image_size), _images(c.image_size, seed=1))),
    "FewShotGenerator": (lambda: FewShotGeneratorConfig.preset("tiny"), None),
    "MouthInteriorNetwork": (
        lambda: MouthInteriorConfig(crop_size=32, mouth_width=16, base_channels=8, max_channels=16, levels=2),
        lambda m, c: m(_images(c.crop_size), (_images(c.crop_size, seed=1) + 1) / 2, _images(c.crop_size, seed=2)),
    ),
    "EyeInteriorNetwork": (
        lambda: EyeInteriorConfig(crop_size=16, eye_width=8, base_channels=8, max_channels=16, levels=2),
        lambda m, c: m(_images(c.crop_size), (_images(c.crop_size, seed=1) + 1) / 2, _images(c.crop_size, seed=2)),
    ),
    "ProjectionDiscriminator": (lambda: ProjectionDiscriminatorConfig.preset("tiny", num_videos=3), None),
    "AudioToMotion": (
        lambda: AudioToMotionConfig(n_mels=16, context_frames=4, hidden_channels=8, num_coefficients=3),
        lambda m, c: m(torch.rand(2, c.n_mels, c.window, generator=torch.Generator().manual_seed(0)) * 2 - 1),
    ),
}
MODELS = {cls.__name__: cls for cls in _all_hub_models()}


def _tensors(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in _tensors(getattr(out, f.name))]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _build(name: str) -> HubModel:
    torch.manual_seed(0)
    model = MODELS[name](TINY[name][0]())
    with torch.no_grad():  # move every parameter off its initial value, so loading has to restore them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def test_every_hub_model_is_covered():
    assert len(MODELS) == 13, sorted(MODELS)
    assert set(MODELS) == set(TINY), f"HubModel subclasses without a contract entry: {set(MODELS) ^ set(TINY)}"


@pytest.mark.parametrize("name", sorted(TINY))
def test_save_then_load_gives_the_same_model(name, tmp_path):
    model = _build(name)
    model.save_pretrained(tmp_path / name)
    loaded = MODELS[name].from_pretrained(tmp_path / name).eval()
    assert loaded.config == model.config
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    forward = TINY[name][1]
    if forward is not None:
        with torch.no_grad():
            torch.manual_seed(1)
            a = _tensors(forward(model, model.config))
            torch.manual_seed(1)
            b = _tensors(forward(loaded, loaded.config))
        assert a and len(a) == len(b)
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("name", sorted(TINY))
def test_strict_load_refuses_a_missing_and_an_extra_key(name, tmp_path):
    folder = tmp_path / name
    _build(name).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    first = sorted(weights)[0]

    save_file({k: v for k, v in weights.items() if k != first}, folder / "model.safetensors")
    with pytest.raises(WeightsError):
        MODELS[name].from_pretrained(folder)

    save_file({**weights, "not_a_parameter.weight": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(WeightsError):
        MODELS[name].from_pretrained(folder)

    save_file(weights, folder / "model.safetensors")  # the untouched file still loads
    MODELS[name].from_pretrained(folder)


@pytest.mark.parametrize("name", sorted(TINY))
def test_config_round_trip(name):
    config = TINY[name][0]()
    assert isinstance(config, MODELS[name].config_class)
    data = config.to_dict()
    assert type(config).from_dict(data) == config
    assert type(config).from_dict(json.loads(json.dumps(data))) == config
    with pytest.raises(ValueError, match="unknown config keys"):
        type(config).from_dict({**data, "no_such_field": 1})
