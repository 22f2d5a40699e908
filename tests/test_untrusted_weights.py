"""Weights and configs from strangers: every bad folder is one WeightsError line, before any large
allocation (a local folder and a hand-built offline Hub cache, as `from_pretrained("org/repo")` sees)."""

from __future__ import annotations

import json
import pickle
import resource

import pytest
import torch

from metaportrait.errors import WeightsError
from metaportrait.models.generator import GeneratorConfig, MetaPortraitGenerator, generator_config


@pytest.fixture()
def good(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "good"
    MetaPortraitGenerator(generator_config("tiny")).save_pretrained(folder)
    return folder


def _config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize(
    "case, message",
    [
        ("huge_channels", "beyond any real model"),
        ("huge_image", "beyond any real model"),
        ("garbage", "Expecting"),
        ("empty", "Expecting value"),
        ("list", "not a JSON object of model settings"),
        ("wrong_type", "positive int"),
        ("unknown_key", "unknown config keys"),
        ("other_model", "size mismatch|do not belong together"),
        ("much_larger_model", "do not belong together"),
        ("pickle_weights", "not a readable safetensors file"),
    ],
)
def test_bad_folders_are_one_weights_error(good, case, message):
    cfg = _config(good)
    if case == "huge_channels":
        cfg["warping"]["max_channels"] = 8000
        cfg["warping"]["base_channels"] = 8000
    elif case == "huge_image":
        cfg["warping"]["image_size"] = 10**9
        cfg["refinement"]["image_size"] = 10**9
    elif case == "list":
        cfg = [cfg]
    elif case == "wrong_type":
        cfg["warping"]["motion_dim"] = "sixteen"
    elif case == "unknown_key":
        cfg["warping"]["evil"] = 1
    elif case == "much_larger_model":  # valid, within bounds, but 100× what the file holds: never allocated
        cfg["warping"].update(base_channels=512, max_channels=2048, hourglass_channels=512, motion_dim=2048)
    elif case == "other_model":
        cfg["refinement"]["base_channels"] = 16  # a valid config, but not these weights
        cfg["refinement"]["max_channels"] = 64
    if case == "garbage":
        (good / "config.json").write_text("{not json")
    elif case == "empty":
        (good / "config.json").write_text("")
    else:
        (good / "config.json").write_text(json.dumps(cfg))
    if case == "pickle_weights":
        (good / "model.safetensors").write_bytes(pickle.dumps({"w": torch.zeros(3)}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsError, match=message) as info:
        MetaPortraitGenerator.from_pretrained(good)
    assert "\n" not in str(info.value)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, grown_mib


def test_the_good_folder_still_loads_and_from_hub_cache(good, tmp_path, monkeypatch):
    model = MetaPortraitGenerator.from_pretrained(good)
    assert isinstance(model.config, GeneratorConfig)
    # the same files as a Hub repo id in an offline cache
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--someone--portrait"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    cfg = _config(good)
    cfg["warping"]["image_size"] = 10**9
    cfg["refinement"]["image_size"] = 10**9
    (snap / "config.json").write_text(json.dumps(cfg))
    (snap / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="beyond any real model"):
        MetaPortraitGenerator.from_pretrained("someone/portrait", cache_dir=str(cache))
