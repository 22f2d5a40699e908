"""Base-model training on Accelerate (MetaPortrait §3.1 and §4 "Implementation details").

Two stages (docs/METHOD.md §7): stage 1 trains the warping network alone (``stage="warp"``: the
generator's image is the warped source, losses L_w^VGG + eye/mouth); stage 2 trains warping +
refinement together (``stage="full"``: all terms, warp learning rate ×0.1 as the official code).
The objective is L = L_w^VGG + λ_r L_r^VGG + λ_id L_id + λ_eye L_eye + λ_mouth L_mouth + λ_adv L_adv.

Accelerate gives mixed precision (bf16/fp16), gradient accumulation, multi-GPU
(``accelerate launch -m metaportrait.cli train-base --config ...``) and checkpoints (safetensors + JSON, never pickles)
that resume exactly (batches are drawn from an RNG seeded by (seed, step, process), and RNG
states are part of the checkpoint). EMA of the generator (diffusers ``EMAModel``), LR schedule
(diffusers ``get_scheduler``), TensorBoard scalars and image grids (source | driving | warped |
output), a parameter summary, a NaN/inf guard, a wall-clock budget, and a final
``save_pretrained`` pipeline folder (+ optional ``push_to_hub``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from metaportrait.config import ConfigChecks, rename_keys
from metaportrait.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_ema,
    rotate_checkpoints,
    save_checkpoint,
    truncate_log,
)

logger = logging.getLogger("metaportrait.train_base")


# Field names before the training configs shared the diffusers-script names ({old: new}); config
# files that use them still load.
RENAMED_KEYS = {
    "lr": "learning_rate",
    "betas": "adam_betas",
    "grad_clip": "max_grad_norm",
    "warmup_steps": "lr_warmup_steps",
    "keep_checkpoints": "checkpoints_total_limit",
}


@dataclass(frozen=True)
class BaseTrainConfig(ConfigChecks):
    """A training recipe; ``configs/base_paper.json`` and ``configs/base_demo.json`` are two."""

    data_dir: str
    output_dir: str
    preset: str = "demo"  # a generator preset name, or the path of a GeneratorConfig .json
    init_from: str | None = None  # a generator folder to start from (fine-tuning / resuming a recipe)
    warp_steps: int = 200_000
    full_steps: int = 200_000
    batch_size: int = 48
    grad_accum: int = 1
    learning_rate: float = 2e-4
    adam_betas: tuple[float, float] = (0.5, 0.999)
    joint_warp_lr_scale: float = 0.1
    # generator sub-modules kept at their initial (or init_from) weights, e.g. ["warping"], or
    # ["refinement.head"] to train only the blend weights of a blend model (tried: it blurred more and
    # lost to zero_at_export below; weights/base_training.json)
    frozen_modules: tuple[str, ...] = ()
    # generator sub-modules whose weights are set to zero in the saved/exported weights, e.g.
    # ["refinement.head"]: the blend recipe trains the residual head alongside the blend weights (it
    # absorbs what blur cannot explain) but ships without it, because on people it never saw the
    # residual hurt while the blend weights generalised (weights/README.md); personalization and
    # meta-learning train the head again, for one person
    zero_at_export: tuple[str, ...] = ()
    disc_lr: float = 2e-4
    max_grad_norm: float = 1.0  # 0: no clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 500
    ema_decay: float = 0.999
    weights: dict = field(default_factory=dict)  # overrides of LossWeights fields
    pixel_l1: float = 0.0  # extra plain L1 on the output (not in the paper; helps PSNR/SSIM on small data)
    pixel_ssim: float = 0.0  # extra 1 - SSIM on the output (not in the paper)
    gate_sparsity: float = 0.0  # λ of mean(gate) for a gated residual (refinement residual_gate=True)
    adversarial: bool = True
    disc_preset: str = "demo"
    perceptual_network: str = "auto"
    perceptual_pyramid: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    # only clips cut from >= this many source pixels (0: all); below the crop size the frames are
    # upscaled, and a refinement trained on them learns to smooth what sharp faces must keep
    min_source_side: float = 0
    # prior grids of the training pairs: "face" (the face mesh alone, as the embedded weights were
    # trained) or "head" (the render path's full-head mesh warp with hair/ear/neck rings)
    prior_mesh: Literal["face", "head"] = "face"
    synthetic_stills: tuple[str, ...] = ()
    synthetic_fraction: float = 0.0
    checkpoint_every: int = 1000
    checkpoints_total_limit: int = 2
    log_every: int = 20
    image_every: int = 500
    seed: int = 0
    max_seconds: float | None = None
    push_to_hub: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):
            object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        if isinstance(self.perceptual_pyramid, list):
            object.__setattr__(self, "perceptual_pyramid", tuple(self.perceptual_pyramid))
        if isinstance(self.synthetic_stills, list):
            object.__setattr__(self, "synthetic_stills", tuple(self.synthetic_stills))
        for name in ("frozen_modules", "zero_at_export"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.prior_mesh not in ("face", "head"):
            raise ValueError(f"prior_mesh must be face|head, got {self.prior_mesh!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no|bf16|fp16, got {self.mixed_precision!r}")
        if self.warp_steps < 0 or self.full_steps < 0 or self.warp_steps + self.full_steps == 0:
            raise ValueError(f"need warp_steps + full_steps > 0, got {self.warp_steps} + {self.full_steps}")
        self.check_positive_ints("batch_size", "grad_accum")
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")

    @property
    def total_steps(self) -> int:
        return self.warp_steps + self.full_steps

    def stage_at(self, step: int) -> Literal["warp", "full"]:
        return "warp" if step < self.warp_steps else "full"

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> BaseTrainConfig:
        """Read a JSON recipe; keys of the older names (:data:`RENAMED_KEYS`) are read as the new ones."""
        data = rename_keys(json.loads(Path(path).read_text()), RENAMED_KEYS, str(path))
        data.update({k: v for k, v in overrides.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        return cls(**data)


@dataclass
class TrainState:
    """Counters saved with every checkpoint (``state.json``)."""

    step: int = 0
    skipped_nonfinite: int = 0
    seconds: float = 0.0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)


def parameter_summary(modules: dict[str, torch.nn.Module]) -> str:
    lines = ["| module | parameters | trainable |", "|---|---|---|"]
    for name, m in modules.items():
        total = sum(p.numel() for p in m.parameters())
        train = sum(p.numel() for p in m.parameters() if p.requires_grad)
        lines.append(f"| {name} | {total / 1e6:.3f}M | {train / 1e6:.3f}M |")
    return "\n".join(lines)


class BatchSource:
    """Draws step-indexed batches: identical on resume, disjoint across processes."""

    def __init__(self, datasets: Sequence[tuple[torch.utils.data.Dataset, float]], collate, batch_size: int, seed: int,
                 process_index: int = 0) -> None:
        self.datasets = [(d, w) for d, w in datasets if w > 0 and len(d) > 0]
        if not self.datasets:
            raise ValueError("no training data: every dataset is empty")
        weights = np.asarray([w for _, w in self.datasets], np.float64)
        self.probs = weights / weights.sum()
        self.collate, self.batch_size, self.seed, self.process_index = collate, batch_size, seed, process_index

    def batch(self, step: int, micro: int = 0):
        rng = np.random.default_rng([self.seed, step, micro, self.process_index])
        items = []
        for _ in range(self.batch_size):
            ds, _ = self.datasets[int(rng.choice(len(self.datasets), p=self.probs))]
            items.append(ds[int(rng.integers(len(ds)))])
        return self.collate(items)


def train(config: BaseTrainConfig) -> Path:
    """Run (or resume) a recipe; returns the final pipeline folder ``output_dir/final``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from metaportrait.identity import load_identity_encoder
    from metaportrait.models.discriminator import MultiScalePatchDiscriminator, discriminator_config
    from metaportrait.models.generator import MetaPortraitGenerator, generator_config
    from metaportrait.training.datasets import PairDataset, SyntheticMotionDataset, collate_pairs
    from metaportrait.training.losses import discriminator_loss
    from metaportrait.training.objective import GeneratorObjective, ObjectiveConfig
    from metaportrait.weights import write_model_index

    out = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    set_seed(config.seed)
    device = accelerator.device

    if config.init_from:
        generator = MetaPortraitGenerator.from_pretrained(config.init_from)
    elif config.preset.endswith(".json"):  # a GeneratorConfig written as JSON (custom sizes)
        from metaportrait.models.generator import GeneratorConfig

        generator = MetaPortraitGenerator(GeneratorConfig.from_dict(json.loads(Path(config.preset).read_text())))
    else:
        generator = MetaPortraitGenerator(generator_config(config.preset))
    size = generator.config.image_size
    encoder = load_identity_encoder(None).to(device).eval().requires_grad_(False)
    disc = MultiScalePatchDiscriminator(discriminator_config(config.disc_preset)) if config.adversarial else None
    objective = GeneratorObjective(encoder, ObjectiveConfig(
        weights=config.weights, pixel_l1=config.pixel_l1, pixel_ssim=config.pixel_ssim, perceptual_network=config.perceptual_network,
        perceptual_pyramid=config.perceptual_pyramid, gate_sparsity=config.gate_sparsity)).to(device)
    weights = objective.weights

    pairs = PairDataset(config.data_dir, split="train", size=size, augment=True, min_source_side=config.min_source_side,
                        head_prior=config.prior_mesh == "head")
    if len(pairs) == 0:
        raise ValueError(f"no training frames in {config.data_dir}"
                         + (f" from crops of >= {config.min_source_side:g} source px" if config.min_source_side else ""))
    accelerator.print(f"training on {len(pairs.clips)} clips of {len(pairs.identities)} people ({len(pairs)} frames)")
    train_sets = [(pairs, 1.0 - config.synthetic_fraction)]
    if config.synthetic_stills and config.synthetic_fraction > 0:
        train_sets.append((SyntheticMotionDataset(list(config.synthetic_stills), size=size), config.synthetic_fraction))
    source = BatchSource(train_sets, collate_pairs, config.batch_size, config.seed, accelerator.process_index)

    _submodules(generator, config.zero_at_export, "zero_at_export")
    for module in _submodules(generator, config.frozen_modules, "frozen_modules"):
        module.requires_grad_(False)
    warp_params = [p for p in generator.warping.parameters() if p.requires_grad]
    refine_params = [p for p in generator.refinement.parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(
        [{"params": warp_params, "lr": config.learning_rate, "name": "warping"},
         {"params": refine_params, "lr": config.learning_rate, "name": "refinement"}],
        lr=config.learning_rate, betas=config.adam_betas,
    )
    sched_g = get_scheduler(config.lr_scheduler, opt_g, num_warmup_steps=config.lr_warmup_steps,
                            num_training_steps=config.total_steps)
    modules = [generator, opt_g, sched_g]
    if disc is not None:
        opt_d = torch.optim.Adam(disc.parameters(), lr=config.disc_lr, betas=config.adam_betas)
        modules += [disc, opt_d]
    prepared = accelerator.prepare(*modules)
    generator, opt_g, sched_g = prepared[:3]
    if disc is not None:
        disc, opt_d = prepared[3:5]
    ema = EMAModel(accelerator.unwrap_model(generator).parameters(), decay=config.ema_decay)
    ema.to(device)
    state = TrainState()
    ckpt = _CheckpointParts(accelerator, generator, disc, opt_g, opt_d if disc is not None else None, sched_g, ema)

    ckpt_dir = out / "checkpoints"
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        state.load_state_dict(ckpt.load(latest))
        accelerator.print(f"resumed from {latest} at step {state.step}")
    if accelerator.is_main_process:
        truncate_log(out / "losses.jsonl", state.step)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
        summary = parameter_summary({"warping": accelerator.unwrap_model(generator).warping,
                                     "refinement": accelerator.unwrap_model(generator).refinement,
                                     **({"discriminator": accelerator.unwrap_model(disc)} if disc is not None else {}),
                                     "identity encoder (frozen)": encoder})
        accelerator.print(summary)
        accelerator.init_trackers("base", config={k: str(v) for k, v in dataclasses.asdict(config).items()})

    t_start = time.perf_counter() - state.seconds
    raw_gen = accelerator.unwrap_model(generator)
    while state.step < config.total_steps:
        stage = config.stage_at(state.step)
        generator.train()
        logs: dict[str, float] = {}
        # One optimiser step per ``grad_accum`` micro-batches, as in the diffusers training scripts:
        # accelerator.backward divides each loss by grad_accum, and under DDP only the last
        # micro-batch all-reduces its gradients. The optimiser step below comes after the last
        # micro-batch, where accelerator.sync_gradients is True.
        for micro in range(config.grad_accum):
            batch = source.batch(state.step, micro).to(device)
            with accelerator.accumulate(generator):
                with accelerator.autocast():
                    result = objective(generator, batch, stage=stage, discriminator=disc)
                loss, out_g = result.loss, result.output
                if not torch.isfinite(loss):
                    break
                accelerator.backward(loss)
        if not torch.isfinite(loss):
            state.skipped_nonfinite += 1
            opt_g.zero_grad(set_to_none=True)
            accelerator.step = 0  # the next step's micro-batches count from the first again
            accelerator.print(f"step {state.step}: non-finite loss, step skipped ({state.skipped_nonfinite} so far)")
            state.step += 1
            continue
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(generator.parameters(), config.max_grad_norm)
        for group, lr in zip(opt_g.param_groups, sched_g.get_last_lr()):
            group["lr"] = lr * _stage_lr_scale(group["name"], stage, config.joint_warp_lr_scale)
        opt_g.step()
        sched_g.step()
        opt_g.zero_grad(set_to_none=True)
        ema.step(raw_gen.parameters())

        if disc is not None and stage == "full" and weights.adv > 0:
            with accelerator.autocast():
                d_out_fake = disc(out_g.image.detach(), batch.driving_landmark_image)
                d_out_real = disc(batch.driving, batch.driving_landmark_image)
                d_loss = discriminator_loss(d_out_real.logits, d_out_fake.logits, kind="lsgan")
            if torch.isfinite(d_loss):
                # one discriminator step per generator step on the last micro-batch: undo the
                # division by grad_accum that accelerator.backward applies to every loss
                accelerator.backward(d_loss * config.grad_accum if config.grad_accum > 1 else d_loss)
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(disc.parameters(), config.max_grad_norm)
                opt_d.step()
            opt_d.zero_grad(set_to_none=True)
            logs["loss/discriminator"] = float(d_loss.detach())

        state.step += 1
        state.seconds = time.perf_counter() - t_start
        if accelerator.is_main_process:
            with open(out / "losses.jsonl", "a") as fh:
                fh.write(json.dumps({"step": state.step, "stage": stage, "loss": float(loss.detach()),
                                     **{k: round(v, 6) for k, v in result.terms.items()}}) + "\n")
        if state.step % config.log_every == 0 or state.step == 1:
            logs.update({f"loss/{k}": v for k, v in result.terms.items()})
            logs.update({"lr": sched_g.get_last_lr()[0], "stage": 0 if stage == "warp" else 1})
            accelerator.log(logs, step=state.step)
            accelerator.print(f"step {state.step}/{config.total_steps} [{stage}] loss {float(loss.detach()):.4f} "
                              f"({state.seconds / state.step:.2f} s/step)")
        if accelerator.is_main_process and config.image_every and state.step % config.image_every == 0:
            _log_images(accelerator, batch, out_g, state.step)
        budget_hit = config.max_seconds is not None and state.seconds >= config.max_seconds
        if state.step % config.checkpoint_every == 0 or state.step == config.total_steps or budget_hit:
            _checkpoint(accelerator, ckpt, state, ckpt_dir, config.checkpoints_total_limit)
        if budget_hit:
            accelerator.print(f"wall-clock budget of {config.max_seconds:.0f}s reached at step {state.step}")
            break

    accelerator.wait_for_everyone()
    final = out / "final"
    if accelerator.is_main_process:
        ema.store(raw_gen.parameters())
        ema.copy_to(raw_gen.parameters())
        with _zeroed(raw_gen, config.zero_at_export):
            raw_gen.save_pretrained(final / "base")
        ema.restore(raw_gen.parameters())
        write_model_index(final, generator="base")
        (final / "training.json").write_text(json.dumps(
            {"steps": state.step, "seconds": state.seconds, "skipped_nonfinite": state.skipped_nonfinite,
             "config": dataclasses.asdict(config)}, indent=2))
        if config.push_to_hub:
            raw_gen.push_to_hub(config.push_to_hub)
    accelerator.end_training()
    return final


def _submodules(generator: torch.nn.Module, names: Sequence[str], option: str) -> list[torch.nn.Module]:
    """The generator sub-modules called ``names`` (``named_modules`` paths); a clear error otherwise."""
    by_name = dict(generator.named_modules())
    found = []
    for name in names:
        module = by_name.get(name)
        if module is None or not list(module.parameters()):
            raise ValueError(f"{option}: {name!r} is not a generator sub-module with parameters "
                             f"(e.g. 'refinement.head', 'warping')")
        found.append(module)
    return found


@contextlib.contextmanager
def _zeroed(generator: torch.nn.Module, names: Sequence[str]):
    """Temporarily set the parameters of the named sub-modules to zero (for saving)."""
    modules = _submodules(generator, names, "zero_at_export")
    saved = [[p.detach().clone() for p in m.parameters()] for m in modules]
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for m, values in zip(modules, saved):
                for p, v in zip(m.parameters(), values):
                    p.copy_(v)


def _stage_lr_scale(group: str, stage: str, joint_scale: float) -> float:
    """Stage 1 ("warp"): refinement frozen; stage 2 ("full"): warping at ``joint_scale`` × the lr."""
    if stage == "warp":
        return 0.0 if group == "refinement" else 1.0
    if stage == "full":
        return joint_scale if group == "warping" else 1.0
    raise ValueError(f"unknown stage {stage!r}")


class _CheckpointParts:
    """What a base-training checkpoint holds (safetensors + JSON, :mod:`metaportrait.training.checkpoint`)."""

    def __init__(self, accelerator, generator, disc, opt_g, opt_d, sched_g, ema) -> None:
        self.accelerator = accelerator
        self.models = {"generator": accelerator.unwrap_model(generator)}
        self.optimizers = {"generator": opt_g}
        if disc is not None:
            self.models["discriminator"] = accelerator.unwrap_model(disc)
            self.optimizers["discriminator"] = opt_d
        self.schedulers = {"generator": sched_g}
        self.ema = ema

    def save(self, path: Path, state: TrainState) -> None:
        save_checkpoint(path, models=self.models, optimizers=self.optimizers, schedulers=self.schedulers,
                        ema=self.ema, state=state.state_dict(), scaler=self.accelerator.scaler,
                        process_index=self.accelerator.process_index,
                        is_main_process=self.accelerator.is_main_process)

    def load(self, path: Path) -> dict:
        return load_checkpoint(path, models=self.models, optimizers=self.optimizers, schedulers=self.schedulers,
                               ema=self.ema, scaler=self.accelerator.scaler,
                               process_index=self.accelerator.process_index)


def _checkpoint(accelerator, parts: _CheckpointParts, state: TrainState, ckpt_dir: Path, keep: int) -> None:
    path = ckpt_dir / f"step_{state.step:08d}"
    parts.save(path, state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rotate_checkpoints(ckpt_dir, keep)


def _log_images(accelerator, batch, out_g, step: int) -> None:
    tracker = accelerator.get_tracker("tensorboard", unwrap=True)
    n = min(4, batch.source.shape[0])
    rows = [batch.source[:n], batch.driving[:n], out_g.warped[:n], out_g.image[:n]]
    grid = torch.cat([torch.cat(list(r.float().detach().cpu()), dim=2) for r in rows], dim=1)  # 3×(4H)×(nW)
    tracker.add_image("source|driving|warped|output", (grid.clamp(-1, 1) + 1) / 2, step)


def export_checkpoint(config: BaseTrainConfig, checkpoint: str | Path, output: str | Path) -> Path:
    """Write the EMA generator of a training checkpoint as a pipeline folder (``output/base``)."""
    from diffusers.training_utils import EMAModel

    from metaportrait.models.generator import GeneratorConfig, MetaPortraitGenerator, generator_config
    from metaportrait.weights import write_model_index

    checkpoint, output = Path(checkpoint), Path(output)
    if config.init_from:
        generator = MetaPortraitGenerator.from_pretrained(config.init_from)
    elif config.preset.endswith(".json"):
        generator = MetaPortraitGenerator(GeneratorConfig.from_dict(json.loads(Path(config.preset).read_text())))
    else:
        generator = MetaPortraitGenerator(generator_config(config.preset))
    ema = EMAModel(generator.parameters(), decay=config.ema_decay)
    state = load_ema(checkpoint, ema)  # safetensors + JSON only; refuses pickles
    ema.copy_to(generator.parameters())
    with _zeroed(generator, config.zero_at_export):
        generator.save_pretrained(output / "base")
    write_model_index(output, generator="base")
    (output / "training.json").write_text(json.dumps({"steps": state.get("step"), "seconds": state.get("seconds"),
                                                      "checkpoint": str(checkpoint),
                                                      "config": dataclasses.asdict(config)}, indent=2))
    return output


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metaportrait train-base", description="Train the base model (two stages).")
    ap.add_argument("--config", required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--output-dir")
    ap.add_argument("--max-seconds", type=float)
    ap.add_argument("--export", metavar="CHECKPOINT", help="only export this checkpoint's EMA weights to --export-to")
    ap.add_argument("--export-to", metavar="DIR")
    args = ap.parse_args(argv)
    cfg = BaseTrainConfig.from_file(args.config, data_dir=args.data_dir, output_dir=args.output_dir,
                                    max_seconds=args.max_seconds)
    if args.export:
        if not args.export_to:
            ap.error("--export needs --export-to")
        print(f"exported {export_checkpoint(cfg, args.export, args.export_to)}")
        return 0
    logging.basicConfig(level=logging.INFO)
    final = train(cfg)
    print(f"final weights: {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
