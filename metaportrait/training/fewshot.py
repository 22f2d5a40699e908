"""Meta-learning and few-shot fine-tuning of Zakharov et al. 2019 ("Few-Shot Adversarial Learning of
Realistic Neural Talking Head Models", §3.2-3.3; docs/METHOD.md §10).

**Meta-learning (§3.2).** Each episode picks a training video i, K frames s_1..s_K and a target
frame t of it. ê_i = mean_k E(x_i(s_k), y_i(s_k)) (eq. 1), x̂_i(t) = G(y_i(t), ê_i) (eq. 2).
The embedder, the generator and P minimise (eq. 3)

    L_CNT + L_ADV + L_MCH,   L_ADV = -D(x̂, y, i) + λ_FM·L_FM,   L_MCH = λ_MCH·|ê_i - W_i|_1,

where L_CNT = λ_VGG19·L_VGG19 + λ_VGGFace·L_VGGFace (+ λ_pix·multi-scale L1, an optional extra).
L_MCH also trains the discriminator's W_i (it appears in L(φ, ψ, P, θ, W, w_0, b) of eq. 3):
W is in both optimisers — the generator step moves it by the L_MCH gradient only (the adversarial
term scores x̂ with a detached W_i + w_0), the discriminator steps by the hinge loss (eq. 7)

    L_DSC = max(0, 1 + D(x̂, y, i)) + max(0, 1 - D(x, y, i)),

with two discriminator updates per generator update; Adam, learning rates 5e-5 (E, G) and
2e-4 (D), betas (0, 0.9) as in SAGAN, whose recipe (spectral norm, self-attention, hinge loss,
two learning rates) the paper follows.

Content loss: :class:`metaportrait.training.losses.PerceptualLoss` — VGG19 for L_VGG19 when its
ImageNet weights load (``network="auto"``), and the frozen SFace face-recognition network as the
open stand-in for VGGFace (L_VGGFace). Offline both terms use SFace features (one network,
weights added). With both perceptual weights at 0 only the pixel term is computed (CPU demos, tests).

**Fine-tuning (§3.3).** On T frames of a new person: ê_NEW = mean_t E(x(t), y(t)); a personalised
generator G'(y; ψ, ψ') with ψ' initialised to P·ê_NEW and a discriminator D'(x, y; θ, w', b) with
w' initialised to w_0 + ê_NEW are optimised with L_CNT + L_ADV (G') and L_DSC (D').
``feed_forward=True`` is the paper's FF variant: no optimisation, ψ = P·ê_NEW.

Data: the prepared format of docs/DATA_FORMAT.md (``frames_256.npy``, ``landmarks_256.npy``,
``valid.npy`` per clip; every ``split == "train"`` clip is one training video i, frames from
``heldout_frames_from`` on are never sampled). Landmark images are drawn with
:func:`metaportrait.face.drawing.draw_landmark_image` at the model resolution. All image tensors
are float RGB ``B×3×H×W`` in [-1, 1].

Layout: :mod:`~metaportrait.training.fewshot_config` (settings, model presets),
:mod:`~metaportrait.training.fewshot_losses`, :mod:`~metaportrait.training.fewshot_data`,
:mod:`~metaportrait.training.fewshot_finetune`; this module holds meta-learning and the CLI and
re-exports the public names of the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaportrait.models.fewshot import ProjectionDiscriminator
from metaportrait.training.checkpoint import complete_checkpoints, load_checkpoint, rotate_checkpoints, save_checkpoint
from metaportrait.training.fewshot_config import FewShotLossWeights, FewShotTrainConfig, build_models
from metaportrait.training.fewshot_data import Episode, EpisodeDataset, FewShotVideoData, _identity_collate
from metaportrait.training.fewshot_finetune import FineTuneResult, finetune_fewshot
from metaportrait.training.fewshot_losses import ContentLoss, ContentLossTerms, embedding_match_loss, multiscale_l1
from metaportrait.training.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss
from metaportrait.training.prepared import FORMAT

logger = logging.getLogger(__name__)

__all__ = [
    "FewShotLossWeights",
    "FewShotTrainConfig",
    "ContentLoss",
    "ContentLossTerms",
    "multiscale_l1",
    "embedding_match_loss",
    "FewShotVideoData",
    "Episode",
    "EpisodeDataset",
    "build_models",
    "TrainResult",
    "train_fewshot",
    "FineTuneResult",
    "finetune_fewshot",
    "add_arguments",
    "run",
    "main",
]

PREPARED_FORMAT = FORMAT  # the prepared-data format read here (defined in training.prepared)
CHECKPOINT_PREFIX = "step_"


# -- meta-learning -------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """``history``: per-step scalars of the steps run by this call; ``seconds_per_step``: their mean."""

    output_dir: Path
    step: int
    history: list[dict[str, float]]
    seconds_per_step: float


def _checkpoints(output_dir: Path) -> list[Path]:
    return complete_checkpoints(output_dir / "checkpoints", CHECKPOINT_PREFIX)


def _hparams(config: FewShotTrainConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in config.to_dict().items():
        if isinstance(v, dict):
            flat.update({f"loss_{kk}": vv for kk, vv in v.items()})
        elif isinstance(v, (tuple, list)):
            flat[k] = str(tuple(v))
        else:
            flat[k] = v
    return flat


def train_fewshot(config: FewShotTrainConfig, *, resume: str | Path | None = None) -> TrainResult:
    """Meta-learn E, G, D on the prepared data (paper §3.2); see the module docstring.

    ``resume``: a checkpoint folder, or ``"latest"`` (the newest under ``output_dir/checkpoints``,
    starting fresh when there is none). Resuming restores models, optimisers, RNG states and the
    step; the episodes are a function of the step, so the continuation is exact.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    set_seed(config.seed)
    data = FewShotVideoData(config.data_dir, config.image_size)
    for clip_id, why in data.skipped:
        logger.warning("clip %s not used: %s", clip_id, why)
    embedder, generator, discriminator = build_models(config.preset, data.num_videos)
    w = config.loss_weights
    content_loss = ContentLoss(w).to(accelerator.device)

    eg_params = list(embedder.parameters()) + list(generator.parameters())
    opt_g = torch.optim.Adam(
        [{"params": eg_params}, {"params": [discriminator.W]}],  # W: L_MCH gradient only
        lr=config.lr_embedder_generator, betas=config.adam_betas,
    )
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_discriminator, betas=config.adam_betas)
    embedder, generator, discriminator, opt_g, opt_d = accelerator.prepare(embedder, generator, discriminator, opt_g, opt_d)
    d_plain: ProjectionDiscriminator = accelerator.unwrap_model(discriminator)

    parts = {
        "models": {"embedder": accelerator.unwrap_model(embedder), "generator": accelerator.unwrap_model(generator),
                   "discriminator": d_plain},
        "optimizers": {"generator": opt_g, "discriminator": opt_d},
        "scaler": accelerator.scaler,
    }
    start_step = 0
    if resume is not None:
        ckpt: Path | None
        if str(resume) == "latest":
            found = _checkpoints(output_dir)
            ckpt = found[-1] if found else None
        else:
            ckpt = Path(resume)
        if ckpt is not None:
            start_step = int(load_checkpoint(ckpt, process_index=accelerator.process_index, **parts)["step"])
            logger.info("resumed from %s at step %d", ckpt, start_step)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "fewshot_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    accelerator.init_trackers("fewshot", config=_hparams(config))

    dataset = EpisodeDataset(data, batch_size=config.batch_size, k=config.frames_per_episode, seed=config.seed,
                             start_step=start_step, steps=config.steps, process_index=accelerator.process_index)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=config.num_workers,
                                         collate_fn=_identity_collate, persistent_workers=False)
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    step = start_step
    for episode in loader:
        ep = episode.to(accelerator.device)
        scalars = _meta_step(ep, embedder, generator, discriminator, d_plain, opt_g, opt_d, content_loss, config, accelerator)
        step += 1
        history.append(scalars)
        if not all(math.isfinite(v) for v in scalars.values()):
            raise FloatingPointError(f"non-finite loss at step {step}: {scalars}")
        if step % config.log_every == 0 or step == config.steps:
            accelerator.log(scalars, step=step)
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save_checkpoint(accelerator, parts, output_dir, step, config.checkpoints_total_limit)
    seconds = (time.perf_counter() - t_start) / max(1, len(history))

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, model in (("embedder", embedder), ("generator", generator), ("discriminator", discriminator)):
            accelerator.unwrap_model(model).save_pretrained(output_dir / name)
    accelerator.end_training()
    return TrainResult(output_dir=output_dir, step=step, history=history, seconds_per_step=seconds)


def _meta_step(ep: Episode, embedder: nn.Module, generator: nn.Module, discriminator: nn.Module,
               d_plain: ProjectionDiscriminator, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               content_loss: ContentLoss, config: FewShotTrainConfig, accelerator: Any) -> dict[str, float]:
    """One generator/embedder update and ``d_steps_per_g_step`` discriminator updates."""
    w = config.loss_weights
    embedder.train()
    generator.train()
    discriminator.train()
    b, k = ep.x_frames.shape[:2]
    idx = ep.video_index

    # -- embedder + generator (+ W through L_MCH)
    with accelerator.autocast():
        e_frames = embedder(ep.x_frames.flatten(0, 1), ep.y_frames.flatten(0, 1))
        e_hat = e_frames.float().view(b, k, -1).mean(dim=1)
        fake = generator(ep.y_target, e_hat)
        w_proj = (d_plain.W[idx] + d_plain.w0).detach()
        out_fake = d_plain(fake, ep.y_target, w_override=w_proj)
        with torch.no_grad():
            out_real = d_plain(ep.x_target, ep.y_target, w_override=w_proj)
        cnt = content_loss(fake, ep.x_target)
        adv = generator_adversarial_loss(out_fake.score.float(), kind="hinge")
        fm = feature_matching_loss([f.float() for f in out_real.features], [f.float() for f in out_fake.features])
        mch = embedding_match_loss(e_hat, d_plain.W[idx])
        loss_g = cnt.total + w.adversarial * adv + w.feature_matching * fm + w.embedding_match * mch
    opt_g.zero_grad(set_to_none=True)
    accelerator.backward(loss_g)
    if accelerator.num_processes > 1 and d_plain.W.grad is not None:  # W is outside DDP's reducer here
        d_plain.W.grad = accelerator.reduce(d_plain.W.grad, reduction="mean")
    opt_g.step()

    # -- discriminator (hinge), real and fake scored in one pass
    fake_d = fake.detach()
    x_all = torch.cat([ep.x_target, fake_d])
    y_all = torch.cat([ep.y_target, ep.y_target])
    i_all = torch.cat([idx, idx])
    for _ in range(config.d_steps_per_g_step):
        with accelerator.autocast():
            out = discriminator(x_all, y_all, video_index=i_all)
            real_score, fake_score = out.score.float().split(b)
            loss_d = discriminator_loss(real_score, fake_score, kind="hinge")
        opt_d.zero_grad(set_to_none=True)
        accelerator.backward(loss_d)
        opt_d.step()

    scalars = {
        "loss_g": loss_g.item(),
        "loss_content": cnt.total.item(),
        "loss_adv": adv.item(),
        "loss_fm": fm.item(),
        "loss_mch": mch.item(),
        "loss_d": loss_d.item(),
        "score_real": real_score.mean().item(),
        "score_fake": fake_score.mean().item(),
    }
    for name in ("vgg19", "vggface", "pixel"):
        part = getattr(cnt, name)
        if part is not None:
            scalars[f"content_{name}"] = part.item()
    return scalars


def _save_checkpoint(accelerator: Any, parts: dict, output_dir: Path, step: int, keep: int) -> None:
    path = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"
    save_checkpoint(path, state={"step": step}, process_index=accelerator.process_index,
                    is_main_process=accelerator.is_main_process, **parts)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rotate_checkpoints(output_dir / "checkpoints", keep, CHECKPOINT_PREFIX)
    accelerator.wait_for_everyone()


# -- CLI -----------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``train-fewshot`` options (for ``metaportrait train-fewshot``)."""
    p.add_argument("--config", required=True, help="JSON training config (configs/fewshot_paper.json, fewshot_demo.json)")
    p.add_argument("--resume", default=None, help="checkpoint folder to resume from, or 'latest'")
    p.add_argument("--output-dir", default=None, help="override the config's output_dir")
    p.add_argument("--data-dir", default=None, help="override the config's data_dir")
    p.add_argument("--steps", type=int, default=None, help="override the config's number of steps")


def run(args: argparse.Namespace) -> int:
    config = FewShotTrainConfig.from_json(args.config)
    changes = {k: v for k, v in (("output_dir", args.output_dir), ("data_dir", args.data_dir), ("steps", args.steps))
               if v is not None}
    if changes:
        config = config.replace(**changes)
    result = train_fewshot(config, resume=args.resume)
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    print(f"step {result.step}: {summary}; {result.seconds_per_step:.2f} s/step -> {result.output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m metaportrait.training.fewshot --config FILE [--resume latest]``."""
    parser = argparse.ArgumentParser(prog="metaportrait train-fewshot", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
