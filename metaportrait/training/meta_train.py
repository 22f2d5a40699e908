"""Meta-learning for fast personalization (MetaPortrait §3.2, Algorithm 1; docs/METHOD.md §8).

Starting from base weights φ, each outer step takes M identities; for each, φ is cloned and
fine-tuned for K inner steps (Adam, α) on a batch of that person's frames; the outer optimiser
(Adam, β) receives the mean of (φ − φ_K) as its gradient, i.e. φ moves toward the adapted
weights (Reptile). No GAN loss (as the official code). The result is saved as a Hub model
(``MetaPortraitGenerator``) in ``output_dir/final/meta`` with a pipeline ``model_index.json``.

Checkpoints (``output_dir/checkpoints/step_N``: the generator via ``save_pretrained`` and the
outer-optimiser state) resume exactly: tasks are drawn from an RNG seeded by (seed, step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from metaportrait.config import ConfigChecks, rename_keys
from metaportrait.errors import CheckpointError
from metaportrait.training.checkpoint import latest_checkpoint, load_checkpoint, rotate_checkpoints, save_checkpoint, truncate_log


# Field names before the training configs shared the diffusers-script names ({old: new}).
RENAMED_KEYS = {"keep_checkpoints": "checkpoints_total_limit"}


@dataclass(frozen=True)
class MetaTrainConfig(ConfigChecks):
    data_dir: str
    output_dir: str
    init_from: str  # base generator folder or pipeline folder
    outer_steps: int = 14_000
    tasks_per_step: int = 4  # M identities per outer step
    inner_steps: int = 24  # K
    inner_lr: float = 2e-4  # α
    outer_lr: float = 2e-5  # β
    frames_per_identity: int = 48
    inner_batch_size: int = 8  # the 48 frames are split into inner batches of this size
    objective: dict = field(default_factory=dict)  # ObjectiveConfig fields (no adversarial term)
    min_source_side: float = 0  # only people filmed at >= this many source pixels (see BaseTrainConfig)
    prior_mesh: str = "face"  # "head": the render path's full-head mesh warp as prior (see BaseTrainConfig)
    # generator sub-modules kept at their init_from weights (e.g. ["warping"]: the warp stays the mesh
    # warp; Reptile meta-learns only what remains trainable)
    frozen_modules: tuple[str, ...] = ()
    checkpoint_every: int = 100
    checkpoints_total_limit: int = 2
    log_every: int = 10
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        self.check_positive_ints("outer_steps", "tasks_per_step", "inner_steps", "frames_per_identity", "inner_batch_size")
        if self.prior_mesh not in ("face", "head"):
            raise ValueError(f"prior_mesh must be face|head, got {self.prior_mesh!r}")
        if isinstance(self.frozen_modules, list):
            object.__setattr__(self, "frozen_modules", tuple(self.frozen_modules))

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> MetaTrainConfig:
        """Read a JSON recipe; ``keep_checkpoints`` (the older name) is read as ``checkpoints_total_limit``."""
        data = rename_keys(json.loads(Path(path).read_text()), RENAMED_KEYS, str(path))
        data.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        return cls(**data)


def load_generator(path: str | Path):
    """A generator from a generator folder or a pipeline folder (its ``generator`` component)."""
    from metaportrait.models.generator import MetaPortraitGenerator
    from metaportrait.weights import find_component

    return MetaPortraitGenerator.from_pretrained(find_component(path, "generator"))


def _split_batches(batch, size: int) -> list:
    """Split a batched :class:`PairSample` into inner batches of ``size`` (tensors and lists sliced)."""
    from metaportrait.training.datasets import PairSample

    return [
        PairSample(**{f.name: (v[i: i + size] if isinstance(v, (torch.Tensor, list)) else v)
                      for f in dataclasses.fields(batch) for v in [getattr(batch, f.name)]})
        for i in range(0, batch.batch_size, size)
    ]


def meta_train(config: MetaTrainConfig) -> Path:
    """Run (or resume) Reptile meta-learning; returns the pipeline folder ``output_dir/final``."""
    from metaportrait.identity import load_identity_encoder
    from metaportrait.training.datasets import IdentityFramesDataset
    from metaportrait.training.objective import GeneratorObjective, ObjectiveConfig
    from metaportrait.training.reptile import Reptile, ReptileConfig, Task
    from metaportrait.weights import write_model_index

    out = Path(config.output_dir)
    ckpt_dir = out / "checkpoints"
    torch.manual_seed(config.seed)
    latest = latest_checkpoint(ckpt_dir)
    generator = load_generator(latest / "generator" if latest else config.init_from)
    generator.train()
    from metaportrait.training.train_base import _submodules

    for module in _submodules(generator, config.frozen_modules, "frozen_modules"):
        module.requires_grad_(False)
    encoder = load_identity_encoder(None)
    objective = GeneratorObjective(encoder, ObjectiveConfig(**config.objective))
    data = IdentityFramesDataset(config.data_dir, frames_per_identity=config.frames_per_identity, split="train",
                                 size=generator.config.image_size, seed=config.seed,
                                 min_source_side=config.min_source_side, head_prior=config.prior_mesh == "head")
    if len(data) < 1:
        raise ValueError(f"no training identities in {config.data_dir}")
    reptile = Reptile(generator, ReptileConfig(inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                                               outer_lr=config.outer_lr, tasks_per_step=config.tasks_per_step,
                                               seed=config.seed))
    step, seconds = 0, 0.0
    if latest is not None:
        state = load_checkpoint(latest, models={}, optimizers={"outer": reptile.outer_optimizer})
        if list(state["param_names"]) != reptile.param_names:
            raise CheckpointError(f"{latest}: saved for other trainable parameters "
                                  f"({len(state['param_names'])} vs {len(reptile.param_names)})")
        reptile.step = int(state["reptile_step"])
        reptile.generator.set_state(state["tensors"]["task_rng"])
        step, seconds = int(state["step"]), float(state["seconds"])
        print(f"resumed from {latest} at outer step {step}")
    truncate_log(out / "losses.jsonl", step)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    def loss_fn(model, batch):
        return objective(model, batch, stage="full").loss

    t0 = time.perf_counter() - seconds
    while step < config.outer_steps:
        rng = np.random.default_rng([config.seed, step])
        people = rng.choice(len(data), size=min(config.tasks_per_step, len(data)), replace=False)
        tasks = []
        for p in people:
            data.set_epoch(step)
            batches = _split_batches(data[int(p)], config.inner_batch_size)
            tasks.append(Task.from_batches(batches, loss_fn, name=data.identities[int(p)]))
        result = reptile.outer_step(tasks)
        step += 1
        seconds = time.perf_counter() - t0
        with open(out / "losses.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "first": float(np.mean(result.first_losses)),
                                 "last": float(np.mean(result.last_losses)), "seconds": seconds}) + "\n")
        if step % config.log_every == 0 or step == 1:
            print(f"outer step {step}/{config.outer_steps}: inner loss {np.mean(result.first_losses):.4f} -> "
                  f"{np.mean(result.last_losses):.4f} ({seconds / step:.1f} s/step)")
        budget_hit = config.max_seconds is not None and seconds >= config.max_seconds
        if step % config.checkpoint_every == 0 or step == config.outer_steps or budget_hit:
            _save_checkpoint(ckpt_dir, step, seconds, generator, reptile, config.checkpoints_total_limit)
        if budget_hit:
            print(f"wall-clock budget of {config.max_seconds:.0f}s reached at outer step {step}")
            break
    final = out / "final"
    generator.save_pretrained(final / "meta")
    write_model_index(final, generator="meta")
    (final / "training.json").write_text(json.dumps({"outer_steps": step, "seconds": seconds,
                                                     "config": dataclasses.asdict(config)}, indent=2))
    return final


def _save_checkpoint(ckpt_dir: Path, step: int, seconds: float, generator, reptile, keep: int) -> None:
    """The meta-learned weights (``generator/``, a Hub folder) + the outer optimiser, counters and
    task RNG (safetensors + JSON; ``DONE`` last)."""
    path = ckpt_dir / f"step_{step:08d}"
    generator.save_pretrained(path / "generator")
    save_checkpoint(path, models={}, optimizers={"outer": reptile.outer_optimizer},
                    state={"step": step, "seconds": seconds, "reptile_step": reptile.step,
                           "param_names": list(reptile.param_names), "config": reptile.config.to_dict()},
                    tensors={"task_rng": reptile.generator.get_state()})
    rotate_checkpoints(ckpt_dir, keep)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metaportrait meta-train", description="Reptile meta-learning (Algorithm 1).")
    ap.add_argument("--config", required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--output-dir")
    ap.add_argument("--init-from")
    ap.add_argument("--max-seconds", type=float)
    args = ap.parse_args(argv)
    cfg = MetaTrainConfig.from_file(args.config, data_dir=args.data_dir, output_dir=args.output_dir,
                                    init_from=args.init_from, max_seconds=args.max_seconds)
    print(f"final weights: {meta_train(cfg)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
