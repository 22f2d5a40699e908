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


# -- training configs: one name per concept, older files still load --------------------------------
def test_old_base_recipe_loads_with_the_new_names(tmp_path):
    import json

    from metaportrait.training.train_base import BaseTrainConfig

    old = {"data_dir": "d", "output_dir": "o", "lr": 1e-3, "betas": [0.9, 0.99], "grad_clip": 0.5,
           "warmup_steps": 7, "keep_checkpoints": 4}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    cfg = BaseTrainConfig.from_file(path)
    assert (cfg.learning_rate, cfg.adam_betas, cfg.max_grad_norm, cfg.lr_warmup_steps, cfg.checkpoints_total_limit) == (
        1e-3, (0.9, 0.99), 0.5, 7, 4)
    path.write_text(json.dumps({**old, "learning_rate": 1e-3}))
    with pytest.raises(ValueError, match="old name"):
        BaseTrainConfig.from_file(path)


def test_old_meta_and_fewshot_configs_load_with_the_new_names(tmp_path):
    import json

    from metaportrait.training.fewshot import FewShotTrainConfig
    from metaportrait.training.meta_train import MetaTrainConfig

    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"data_dir": "d", "output_dir": "o", "init_from": "w", "keep_checkpoints": 5}))
    assert MetaTrainConfig.from_file(path).checkpoints_total_limit == 5
    path = tmp_path / "fewshot.json"
    path.write_text(json.dumps({"data_dir": "d", "output_dir": "o", "keep_checkpoints": 6}))
    assert FewShotTrainConfig.from_json(path).checkpoints_total_limit == 6


def test_training_configs_share_the_field_names():
    from metaportrait.training.fewshot import FewShotTrainConfig
    from metaportrait.training.meta_train import MetaTrainConfig
    from metaportrait.training.reptile import ReptileConfig
    from metaportrait.training.train_base import BaseTrainConfig
    from metaportrait.training.train_sr import SRTrainConfig

    names = {cls: {f.name for f in dataclasses.fields(cls)}
             for cls in (BaseTrainConfig, MetaTrainConfig, FewShotTrainConfig, ReptileConfig, SRTrainConfig)}
    old = {"lr", "betas", "grad_clip", "warmup_steps", "keep_checkpoints"}
    assert all(not (fields & old) for fields in names.values()), names
    for cls in (BaseTrainConfig, MetaTrainConfig, FewShotTrainConfig, SRTrainConfig):
        assert "checkpoints_total_limit" in names[cls]
    for cls in (BaseTrainConfig, ReptileConfig, SRTrainConfig):
        assert "max_grad_norm" in names[cls]
    for cls in (BaseTrainConfig, SRTrainConfig):
        assert {"learning_rate", "adam_betas", "lr_warmup_steps"} <= names[cls]
