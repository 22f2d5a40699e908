"""Training smoke test (issue "Train the base model"): real frames, both stages, checkpoint,
exact resume, and a final folder that loads strictly into the pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from metaportrait.pipeline import MetaPortraitPipeline
from metaportrait.training.train_base import BaseTrainConfig, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _config(prepared: Path, tiny256: Path, out: Path, **kw) -> BaseTrainConfig:
    base = dict(
        data_dir=str(prepared), output_dir=str(out), preset=str(tiny256), warp_steps=2, full_steps=2, batch_size=2,
        mixed_precision="no", checkpoint_every=2, log_every=1, image_every=4, lr_warmup_steps=1, disc_preset="tiny",
        adversarial=True, perceptual_network="sface", perceptual_pyramid=(0.25,), pixel_l1=1.0,
        weights={"identity": 1.0}, seed=3,
    )
    base.update(kw)
    return BaseTrainConfig(**base)


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "losses.jsonl").read_text().splitlines())}


def test_both_stages_checkpoint_resume_and_load(prepared_data, tiny256_config, tmp_path):
    prepared, tiny256 = prepared_data, tiny256_config
    torch.manual_seed(0)
    run_a = tmp_path / "a"
    final = train(_config(prepared, tiny256, run_a))
    losses_a = _losses(run_a)
    assert sorted(losses_a) == [1, 2, 3, 4]
    assert all(np.isfinite(v) for v in losses_a.values())
    stages = [json.loads(line)["stage"] for line in (run_a / "losses.jsonl").read_text().splitlines()]
    assert stages == ["warp", "warp", "full", "full"]
    assert (run_a / "checkpoints" / "step_00000002" / "DONE").exists()
    assert list((run_a / "logs").rglob("events.out.tfevents*")), "TensorBoard scalars were written"

    # exact resume: a fresh run that starts from A's step-2 checkpoint reproduces steps 3 and 4
    run_b = tmp_path / "b"
    (run_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_a / "checkpoints" / "step_00000002", run_b / "checkpoints" / "step_00000002")
    torch.manual_seed(123)  # resume must not depend on the caller's RNG state
    train(_config(prepared, tiny256, run_b))
    losses_b = _losses(run_b)
    assert sorted(losses_b) == [3, 4]
    for step in (3, 4):
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-5, abs=1e-6), (step, losses_a, losses_b)

    # losses.jsonl is cut back to the resumed step: resuming A itself from step 2 repeats no step
    shutil.rmtree(run_a / "checkpoints" / "step_00000004")
    train(_config(prepared, tiny256, run_a))
    assert [json.loads(line)["step"] for line in (run_a / "losses.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    # a pickle planted in a checkpoint folder never runs: export (through the real CLI) and resume refuse it
    import dataclasses
    import pickle

    from metaportrait.cli import main as cli_main

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    planted = tmp_path / "planted" / "checkpoints" / "step_00000002"
    shutil.copytree(run_a / "checkpoints" / "step_00000002", planted)
    (planted / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))
    cfg_file = tmp_path / "cfg.json"
    cfg = dataclasses.asdict(_config(prepared, tiny256, tmp_path / "planted"))
    cfg_file.write_text(json.dumps(cfg))
    assert cli_main(["train-base", "--config", str(cfg_file), "--export", str(planted),
                     "--export-to", str(tmp_path / "exp")]) == 2
    from metaportrait.errors import UnsafeCheckpointError

    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        train(_config(prepared, tiny256, tmp_path / "planted"))
    assert not (tmp_path / "pwned").exists()

    # the final folder is a pipeline folder that loads strictly and animates a real face
    pipe = MetaPortraitPipeline.from_pretrained(final, device="cpu")
    src = pipe.prepare_source(EXAMPLES / "astronaut.jpg")
    out = pipe.generate(src, [src.landmarks])
    assert out.shape == (1, 256, 256, 3)
    training = json.loads((final / "training.json").read_text())
    assert training["steps"] == 4


@pytest.mark.parametrize("option", ["frozen_modules", "zero_at_export"])
def test_blend_recipe_ships_a_zero_residual_head(option, prepared_data, tmp_path):
    """The blend recipes: ``frozen_modules=["refinement.head"]`` keeps the residual head at exactly
    zero during training; ``zero_at_export`` trains it but writes it as zero, in the final folder and
    in ``export_checkpoint`` alike. Either way the blend weights train and the shipped output is a
    mixture of the warp and its blurs."""
    from metaportrait.models.generator import MetaPortraitGenerator, generator_config
    from metaportrait.training.train_base import export_checkpoint

    cfg = generator_config("tiny-blend")
    cfg = cfg.replace(warping=cfg.warping.replace(image_size=256),
                      refinement=cfg.refinement.replace(image_size=256, blend_residual=True))
    preset = tmp_path / "tiny_blend256.json"
    preset.write_text(json.dumps(cfg.to_dict()))
    config = BaseTrainConfig(
        data_dir=str(prepared_data), output_dir=str(tmp_path / "run"), preset=str(preset), warp_steps=0, full_steps=3,
        batch_size=2, learning_rate=1e-2, mixed_precision="no", checkpoint_every=3, log_every=1, image_every=0, lr_warmup_steps=0,
        adversarial=False, perceptual_network="sface", perceptual_pyramid=(0.25,), pixel_l1=1.0, pixel_ssim=1.0,
        weights={"identity": 0.0}, joint_warp_lr_scale=0.0, ema_decay=0.0, **{option: ["refinement.head"]},
    )
    final = train(config)
    exported = export_checkpoint(config, tmp_path / "run" / "checkpoints" / "step_00000003", tmp_path / "exported")
    for folder in (final, exported):
        model = MetaPortraitGenerator.from_pretrained(folder / "base")
        assert model.refinement.head.weight.abs().max() == 0 and model.refinement.head.bias.abs().max() == 0
        assert model.refinement.blend_head.weight.abs().max() > 0
    # the checkpoint's (EMA) head: trained under zero_at_export, untouched zeros under frozen_modules
    from safetensors.torch import load_file

    ema = load_file(str(tmp_path / "run" / "checkpoints" / "step_00000003" / "ema.safetensors"))
    names = [n for n, _ in model.named_parameters()]
    head = ema[f"shadow.{names.index('refinement.head.weight'):05d}"]
    assert (float(head.abs().max()) > 0) == (option == "zero_at_export")
    with pytest.raises(ValueError, match="refinement.hed"):
        train(BaseTrainConfig(data_dir=str(prepared_data), output_dir=str(tmp_path / "bad"), preset=str(preset),
                              warp_steps=0, full_steps=1, mixed_precision="no", adversarial=False,
                              **{option: ["refinement.hed"]}))


def test_gated_recipe_trains_on_the_head_prior(prepared_data, tmp_path):
    """The gated recipe (configs/base_demo_gated.json, tiny): training pairs carry the render path's
    full-head mesh warp, the gate is logged, the sparsity term is in the loss, and the gate heads
    train while the warping network stays at its prior."""
    from metaportrait.models.generator import MetaPortraitGenerator, generator_config
    from metaportrait.training.datasets import PairDataset

    face = PairDataset(prepared_data, "train", 256, augment=False, seed=0)[3]
    head = PairDataset(prepared_data, "train", 256, augment=False, seed=0, head_prior=True)[3]
    assert torch.equal(face.driving, head.driving)
    # the face mesh leaves hair and neck still; the head mesh moves them with the face
    assert float((head.prior_grid - face.prior_grid).abs().max()) > 1e-3
    cfg = generator_config("tiny-gated")
    cfg = cfg.replace(warping=cfg.warping.replace(image_size=256), refinement=cfg.refinement.replace(image_size=256))
    preset = tmp_path / "tiny_gated256.json"
    preset.write_text(json.dumps(cfg.to_dict()))
    config = BaseTrainConfig(
        data_dir=str(prepared_data), output_dir=str(tmp_path / "run"), preset=str(preset), warp_steps=0, full_steps=3,
        batch_size=2, learning_rate=1e-2, mixed_precision="no", checkpoint_every=3, log_every=1, image_every=0,
        lr_warmup_steps=0, adversarial=False, perceptual_network="sface", perceptual_pyramid=(0.25,), pixel_l1=1.0,
        pixel_ssim=1.0, weights={"identity": 0.0}, joint_warp_lr_scale=0.0, ema_decay=0.0, frozen_modules=["warping"],
        prior_mesh="head", gate_sparsity=0.2,
    )
    final = train(config)
    model = MetaPortraitGenerator.from_pretrained(final / "base")
    assert model.config.refinement.residual_gate
    assert float(model.refinement.gate_head.weight.abs().max()) > 0
    assert float(model.warping.flow_head.weight.abs().max()) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    # logged every step; 0 on a batch whose warp magnifies nothing (no region: the residual is off)
    assert len(logged) == 3 and all(0 <= rec["gate_mean"] < 1 for rec in logged)
    assert any(rec["gate_mean"] > 0 for rec in logged)
    with pytest.raises(ValueError, match="prior_mesh"):
        BaseTrainConfig(data_dir="x", output_dir="y", prior_mesh="hair")


def test_invalid_config_values():
    with pytest.raises(ValueError, match="mixed_precision"):
        BaseTrainConfig(data_dir="x", output_dir="y", mixed_precision="fp8")
    with pytest.raises(ValueError, match="warp_steps"):
        BaseTrainConfig(data_dir="x", output_dir="y", warp_steps=0, full_steps=0)


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("base_*.json")))
def test_shipped_base_configs_parse(name):
    cfg = BaseTrainConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / f"{name}.json")
    assert cfg.total_steps > 0


@pytest.mark.parametrize("name", ["meta_paper", "meta_demo", "meta_demo_gated"])
def test_shipped_meta_configs_parse(name):
    from metaportrait.training.meta_train import MetaTrainConfig
    from metaportrait.training.objective import ObjectiveConfig

    cfg = MetaTrainConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / f"{name}.json")
    ObjectiveConfig(**cfg.objective)
    if name == "meta_paper":  # Algorithm 1 with the paper's K, α, β, N
        assert (cfg.inner_steps, cfg.inner_lr, cfg.outer_lr, cfg.outer_steps) == (24, 2e-4, 2e-5, 14000)


def test_evaluate_known_answers(prepared_data, tiny256_config, tmp_path):
    """`metaportrait evaluate` on real prepared frames: an untrained prior model outputs the full-head
    mesh warp (same PSNR), the mesh warp is closer to the real frames than "no motion", and both reports parse."""
    from metaportrait.evaluation.reenactment import EvalSettings, evaluate
    from metaportrait.models.generator import GeneratorConfig, MetaPortraitGenerator
    from metaportrait.weights import write_model_index

    gen = MetaPortraitGenerator(GeneratorConfig.from_dict(json.loads(Path(tiny256_config).read_text())))
    gen.save_pretrained(tmp_path / "w" / "base")
    write_model_index(tmp_path / "w", generator="base")
    pipe = MetaPortraitPipeline.from_pretrained(tmp_path / "w", device="cpu")
    settings = EvalSettings(split="heldout_frames", max_clips=2, frames_per_clip=3, frame_stride=1)
    report = evaluate(pipe, prepared_data, settings, log=lambda _: None)
    self_rows = {s.method: s for s in report.scores if s.protocol.startswith("self")}
    cross_rows = {s.method: s for s in report.scores if s.protocol == "cross-identity"}
    assert set(self_rows) == set(cross_rows) == {"no motion", "mesh warp", "mesh warp + blur", "head mesh warp", "model"}
    assert all(s.frames > 0 for s in report.scores)
    # an untrained prior model outputs its geometry: the full-head mesh warp, sharp
    assert abs(self_rows["model"].psnr - self_rows["head mesh warp"].psnr) < 0.05
    assert self_rows["model"].detail > 0.9
    # the held-out frames directly follow the source (little motion): still, warping beats standing still
    assert self_rows["mesh warp"].psnr > self_rows["no motion"].psnr
    assert self_rows["mesh warp + blur"].psnr != self_rows["mesh warp"].psnr
    assert "| mesh warp + blur |" in report.to_markdown()
    assert {s["method"] for s in json.loads(report.to_json())["scores"]} == set(self_rows)


def test_gradient_accumulation_resumes_exactly(prepared_data, tiny256_config, tmp_path):
    """grad_accum = 2 (accelerator.accumulate): a run resumed from a checkpoint between optimiser
    steps reproduces the losses of the uninterrupted run."""
    run_a = tmp_path / "a"
    train(_config(prepared_data, tiny256_config, run_a, grad_accum=2, batch_size=1))
    losses_a = _losses(run_a)
    assert sorted(losses_a) == [1, 2, 3, 4] and all(np.isfinite(v) for v in losses_a.values())
    run_b = tmp_path / "b"
    (run_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_a / "checkpoints" / "step_00000002", run_b / "checkpoints" / "step_00000002")
    train(_config(prepared_data, tiny256_config, run_b, grad_accum=2, batch_size=1))
    losses_b = _losses(run_b)
    assert sorted(losses_b) == [3, 4]
    for step in (3, 4):
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-5, abs=1e-6), (step, losses_a, losses_b)
