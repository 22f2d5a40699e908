"""metaportrait.config: the integer checks and key renames every config class shares."""

from __future__ import annotations

import dataclasses

import pytest

from metaportrait.config import ConfigChecks, rename_keys
from metaportrait.models.warping_network import WarpingConfig
from metaportrait.training.reptile import ReptileConfig


@dataclasses.dataclass(frozen=True)
class _Config(ConfigChecks):
    steps: int = 1
    workers: int = 0


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_positive_int_refuses(value):
    with pytest.raises(ValueError, match=r"_Config\.steps must be a positive int, got"):
        _Config(steps=value).check_positive_ints("steps")


@pytest.mark.parametrize("value", [-1, 1.5, False])
def test_non_negative_int_refuses(value):
    with pytest.raises(ValueError, match=r"_Config\.workers must be a non-negative int"):
        _Config(workers=value).check_non_negative_ints("steps", "workers")


def test_accepts_ints_in_range():
    _Config(steps=7, workers=0).check_positive_ints("steps")
    _Config(steps=7, workers=0).check_non_negative_ints("steps", "workers")


def test_model_and_training_configs_use_the_shared_check():
    with pytest.raises(ValueError, match=r"WarpingConfig\.flow_size must be a positive int, got 0"):
        WarpingConfig(flow_size=0)
    with pytest.raises(ValueError, match=r"ReptileConfig\.inner_steps must be a positive int, got 0"):
        ReptileConfig(inner_steps=0)


def test_rename_keys_maps_old_names_and_refuses_both():
    assert rename_keys({"lr": 1, "x": 2}, {"lr": "learning_rate"}) == {"learning_rate": 1, "x": 2}
    assert rename_keys({"learning_rate": 1}, {"lr": "learning_rate"}) == {"learning_rate": 1}
    with pytest.raises(ValueError, match="old name"):
        rename_keys({"lr": 1, "learning_rate": 2}, {"lr": "learning_rate"})
