"""Training of the temporal super-resolution network (MetaPortrait §3.3, §4; docs/METHOD.md §9).

Paper recipe: HDTF at 512², 20k iterations, batch 8, clips of 7 consecutive frames, Adam 1e-4,
L1 + perceptual loss, 3D kernels inflated from GFPGAN. Here:

* data: the prepared format (docs/DATA_FORMAT.md); only clips with ``split == "train"`` and only
  frames before ``heldout_frames_from``; a clip is ``clip_length`` consecutive frames, all ``valid``.
  Targets: ``hr_frames_file`` (``frames_512.npy``) resized to the model's ``out_size`` when they
  differ; inputs: the same frames degraded to ``in_size`` by :mod:`.degradations`, one degradation
  per clip (temporal consistency), plus a random horizontal flip of the whole clip;
* loss: ``l1_weight · L1 + perceptual_weight · PerceptualLoss`` over all frames of the clip
  (:class:`metaportrait.training.losses.PerceptualLoss`: VGG19 when its weights load, else the
  frozen SFace features), and the terms that make detail rather than the average of the
  plausible ones (all off by default; the GFPGAN recipe the paper starts from uses them):
  ``adversarial_weight`` (a multi-scale patch discriminator, LSGAN, trained beside the network
  from ``adversarial_from`` on), ``feature_matching_weight`` (its features of output vs truth),
  ``identity_weight`` (SFace identity of output vs truth, aligned by the five landmarks of the
  prepared data), and ``temporal_weight`` (L1 of the frame-to-frame differences of output vs
  truth: flicker that is not in the truth costs);
* Accelerate: mixed precision (``no``/``bf16``/``fp16``), gradient clipping, EMA of the trainable
  weights (diffusers ``EMAModel``), LR schedule (diffusers ``get_scheduler``), TensorBoard scalars,
  checkpoints with exact resume (safetensors + JSON, never pickles), final ``save_pretrained`` (EMA weights);
* the StyleGAN2 decoder is frozen or trained (``freeze_decoder``);
* ``init_from``: a TemporalSuperResolution folder to start from (e.g. GFPGAN inflated by
  ``scripts/convert_gfpgan.py``); otherwise random initialisation.

Exact resume: the clips of step ``s`` (which clips, the crop of frames, flip, degradation, noise)
depend only on ``(seed, s, process, slot)``, so a resumed run sees exactly the batches the
uninterrupted run would have seen; model, optimizer, scheduler, EMA and RNG states come from the
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from metaportrait.face.regions import five_points
from metaportrait.models.discriminator import DiscriminatorConfig, MultiScalePatchDiscriminator
from metaportrait.models.hub import ModelConfig
from metaportrait.models.temporal_sr import TemporalSRConfig, TemporalSuperResolution
from metaportrait.tensors import to_tensor
from metaportrait.training.checkpoint import latest_checkpoint, load_checkpoint, rotate_checkpoints, save_checkpoint
from metaportrait.training.degradations import DegradationConfig, degrade_clip
from metaportrait.training.prepared import TRAIN, ClipInfo, PreparedData, frames_file

logger = logging.getLogger(__name__)

__all__ = ["SRClipDataset", "SRTrainConfig", "SRTrainResult", "main", "train_sr"]

LANDMARK_SIZE = 256  # the prepared data's landmarks are pixels of its 256² frames
_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass(frozen=True)
class SRTrainConfig(ModelConfig):
    """Everything a super-resolution training run needs; load with :meth:`from_json`.

    Defaults follow the paper (batch 8, 7-frame clips, Adam 1e-4, 20k steps).
    """

    data_dir: str = "data/prepared"
    output_dir: str = "runs/temporal_sr"
    model: TemporalSRConfig = field(default_factory=TemporalSRConfig)
    init_from: str | None = None
    hr_frames_file: str = frames_file(512)
    # Train only on clips whose crop box covers at least this many source pixels: a 512² target cut
    # from a 228-pixel face is an upscaled image that teaches the network to produce blur. 0 = all clips.
    min_source_side: float = 0
    clip_length: int = 7
    batch_size: int = 8
    num_steps: int = 20000
    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    use_ema: bool = True
    ema_decay: float = 0.999
    freeze_decoder: bool = False
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_network: Literal["auto", "vgg19", "sface", "none"] = "auto"
    adversarial_weight: float = 0.0
    feature_matching_weight: float = 0.0
    identity_weight: float = 0.0
    temporal_weight: float = 0.0
    adversarial_from: int = 0
    disc_learning_rate: float = 1e-4
    discriminator: DiscriminatorConfig = field(default_factory=lambda: DiscriminatorConfig(
        condition_channels=0, base_channels=32, max_channels=256, num_layers=3, num_scales=2))
    hflip: bool = True
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 1000
    checkpoints_total_limit: int | None = 3
    log_every: int = 50
    resume_from: str | None = None

    def validate(self) -> None:
        if not isinstance(self.model, TemporalSRConfig):
            raise ValueError(f"model must be a TemporalSRConfig (or its dict), got {type(self.model).__name__}")
        self.check_positive_ints("clip_length", "batch_size", "num_steps", "checkpoint_every", "log_every")
        if self.min_source_side < 0:
            raise ValueError(f"min_source_side must be >= 0, got {self.min_source_side}")
        self.check_non_negative_ints("num_workers", "lr_warmup_steps")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_scheduler not in _SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.perceptual_network not in ("auto", "vgg19", "sface", "none"):
            raise ValueError(f"perceptual_network must be auto/vgg19/sface/none, got {self.perceptual_network!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.l1_weight < 0 or self.perceptual_weight < 0 or self.l1_weight + self.perceptual_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {self.l1_weight}, {self.perceptual_weight}")
        if self.checkpoints_total_limit is not None:
            self.check_positive_ints("checkpoints_total_limit")
        for name in ("adversarial_weight", "feature_matching_weight", "identity_weight", "temporal_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.adversarial_from < 0 or not self.disc_learning_rate > 0:
            raise ValueError(f"adversarial_from must be >= 0 and disc_learning_rate > 0, got "
                             f"{self.adversarial_from}, {self.disc_learning_rate}")
        if not isinstance(self.discriminator, DiscriminatorConfig) or self.discriminator.condition_channels != 0:
            raise ValueError("discriminator must be a DiscriminatorConfig without a condition (condition_channels 0)")

    @property
    def uses_discriminator(self) -> bool:
        return self.adversarial_weight > 0 or self.feature_matching_weight > 0

    @classmethod
    def from_json(cls, path: str | Path) -> "SRTrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# -- data ------------------------------------------------------------------------------------------
class SRClipDataset(Dataset):
    """Clips of ``clip_length`` consecutive valid training frames: degraded input + HR target.

    Items are requested by ``(step, slot, item)`` keys (see :class:`_StepBatchSampler`); an item's
    randomness depends only on ``(seed, step, slot)``. Returns ``{"lr": T×3×in×in, "hr": T×3×out×out}``
    float tensors in [-1, 1]; with ``points``, also ``"points"``: ``T×5×2`` five-point landmarks of the
    target frames in its pixels (template order: eyes, nose, mouth corners, each left then right in
    the image; for the identity loss).
    """

    def __init__(
        self,
        data_dir: str | Path,
        clip_length: int,
        lr_size: int,
        hr_size: int,
        degradation: DegradationConfig,
        *,
        hr_frames_file: str = frames_file(512),
        hflip: bool = True,
        seed: int = 0,
        min_source_side: float = 0,
        points: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.points = points
        self.prepared = PreparedData(self.data_dir)
        self.clip_length, self.lr_size, self.hr_size = clip_length, lr_size, hr_size
        self.degradation, self.hr_frames_file, self.hflip, self.seed = degradation, hr_frames_file, hflip, seed
        self.clips: list[ClipInfo] = []
        self.starts: list[tuple[int, int]] = []  # (clip index, first frame)
        for clip in self.prepared.clips_in(TRAIN):
            if not self.prepared.has_file(clip, hr_frames_file):
                continue
            if min_source_side and (clip.source_side is None or clip.source_side < min_source_side):
                continue  # the HR target would be an upscaled image
            lo, end = clip.split_range(TRAIN)
            valid = self.prepared.valid(clip)[lo:end]
            ok = np.convolve(valid.astype(np.int64), np.ones(clip_length, np.int64), mode="valid") == clip_length
            ci = len(self.clips)
            self.clips.append(clip)
            self.starts.extend((ci, int(s)) for s in np.flatnonzero(ok))
        if not self.starts:
            raise ValueError(
                f"no training clips of {clip_length} consecutive valid frames with {hr_frames_file} "
                f"(and a source crop of at least {min_source_side:g} px) in {self.data_dir}"
            )
        self._frames: dict[int, np.ndarray] = {}
        self._points: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_frames"], state["_points"] = {}, {}  # memory maps are re-opened in each worker
        return state

    def _five(self, ci: int) -> np.ndarray:
        """``N×5×2`` five points of clip ``ci`` in its 256² landmark pixels."""
        if ci not in self._points:
            lms = np.asarray(self.prepared.landmarks(self.clips[ci]), np.float32)
            self._points[ci] = np.stack([five_points(lm) for lm in lms]).astype(np.float32)
        return self._points[ci]

    @property
    def clip_dirs(self) -> list[Path]:
        """Folders of the clips in use (index = the clip index of :attr:`starts`)."""
        return [self.prepared.clip_dir(c) for c in self.clips]

    def __len__(self) -> int:
        return len(self.starts)

    def _hr(self, ci: int) -> np.ndarray:
        if ci not in self._frames:
            self._frames[ci] = self.prepared.open_array(self.clips[ci], self.hr_frames_file)
        return self._frames[ci]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        step, slot, item = key
        rng = np.random.default_rng([self.seed, step, slot])
        ci, start = self.starts[item]
        hr = np.asarray(self._hr(ci)[start : start + self.clip_length])
        if hr.shape[1:3] != (self.hr_size, self.hr_size):
            interp = cv2.INTER_AREA if hr.shape[1] > self.hr_size else cv2.INTER_CUBIC
            hr = np.stack([cv2.resize(f, (self.hr_size, self.hr_size), interpolation=interp) for f in hr])
        points = self._five(ci)[start : start + self.clip_length] * (self.hr_size / LANDMARK_SIZE) if self.points else None
        if self.hflip and rng.random() < 0.5:
            hr = np.ascontiguousarray(hr[:, :, ::-1])
            if points is not None:
                points = points[:, [1, 0, 2, 4, 3]].copy()  # the image's left eye is the flipped right one
                points[..., 0] = self.hr_size - points[..., 0]
        lr = degrade_clip(hr, self.degradation, self.lr_size, rng)
        item = {"lr": to_tensor(lr), "hr": to_tensor(hr)}
        if points is not None:
            item["points"] = torch.from_numpy(np.ascontiguousarray(points))
        return item


class _StepBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Batches of ``(step, slot, item)`` keys for steps ``start..num_steps-1``; items drawn from ``(seed, step)``."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, num_steps: int, process: int, num_processes: int) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start, self.num_steps, self.process, self.num_processes = start, num_steps, process, num_processes

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.num_steps):
            items = np.random.default_rng([self.seed, step, 7919]).integers(
                0, self.num_items, size=self.batch_size * self.num_processes
            )
            first = self.process * self.batch_size
            yield [(step, first + j, int(items[first + j])) for j in range(self.batch_size)]


# -- training --------------------------------------------------------------------------------------
@dataclass
class SRTrainResult:
    """``final_dir``: the saved model; ``losses``: total loss of each step run (from ``start_step + 1``)."""

    final_dir: Path
    start_step: int
    losses: list[float]
    checkpoints: list[Path]


def _resolve_resume(config: SRTrainConfig, ckpt_root: Path) -> Path | None:
    if config.resume_from is None:
        return None
    if config.resume_from == "latest":
        return latest_checkpoint(ckpt_root)
    path = Path(config.resume_from).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from {path} does not exist")
    return path


def _flat_hparams(config: SRTrainConfig) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in config.to_dict().items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = v2 if isinstance(v2, (int, float, str, bool)) else str(v2)
        else:
            out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def train_sr(config: SRTrainConfig) -> SRTrainResult:
    """Run (or resume) a training run; returns where the final (EMA) model was saved and the losses."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    out_dir = Path(config.output_dir).expanduser()
    ckpt_root = out_dir / "checkpoints"
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )
    set_seed(config.seed)

    if config.init_from:
        model = TemporalSuperResolution.from_pretrained(config.init_from)
        if model.config != config.model:
            raise ValueError(
                f"init_from {config.init_from} has config {model.config}, but the training config says {config.model}"
            )
    else:
        model = TemporalSuperResolution(config.model)
    model.freeze_decoder(config.freeze_decoder)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    dataset = SRClipDataset(
        config.data_dir, config.clip_length, config.model.in_size, config.model.out_size, config.degradation,
        hr_frames_file=config.hr_frames_file, hflip=config.hflip, seed=config.seed,
        min_source_side=config.min_source_side, points=config.identity_weight > 0,
    )
    accelerator.print(f"{len(dataset.clips)} training clips, {len(dataset)} windows")
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, betas=config.adam_betas, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.num_steps * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ema = None
    if config.use_ema:
        ema = EMAModel(params, decay=config.ema_decay)
        ema.to(accelerator.device)
    parts = {"models": {"model": accelerator.unwrap_model(model)}, "optimizers": {"model": optimizer},
             "schedulers": {"model": scheduler}, "ema": ema, "scaler": accelerator.scaler}
    disc = opt_d = None
    if config.uses_discriminator:
        from metaportrait.training.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss

        disc = MultiScalePatchDiscriminator(config.discriminator)
        opt_d = torch.optim.Adam(disc.parameters(), lr=config.disc_learning_rate, betas=(0.5, 0.999))
        disc, opt_d = accelerator.prepare(disc, opt_d)
        parts["models"]["disc"] = accelerator.unwrap_model(disc)
        parts["optimizers"]["disc"] = opt_d
    identity = None
    if config.identity_weight > 0:
        from metaportrait.identity import load_identity_encoder
        from metaportrait.training.losses import IdentityLoss

        identity = IdentityLoss(load_identity_encoder(None)).to(accelerator.device)

    perceptual = None
    if config.perceptual_network != "none" and config.perceptual_weight > 0:
        from metaportrait.training.losses import PerceptualLoss

        perceptual = PerceptualLoss(network=config.perceptual_network).to(accelerator.device)

    start_step = 0
    resume = _resolve_resume(config, ckpt_root)
    if resume is not None:
        start_step = int(load_checkpoint(resume, process_index=accelerator.process_index, **parts)["step"])
        logger.info("resumed from %s at step %d", resume, start_step)

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1))
    accelerator.init_trackers("train_sr", config=_flat_hparams(config))

    sampler = _StepBatchSampler(
        len(dataset), config.batch_size, config.seed, start_step, config.num_steps,
        accelerator.process_index, accelerator.num_processes,
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers)
    losses: list[float] = []
    checkpoints: list[Path] = []
    step = start_step
    for batch in loader:
        lr_frames = batch["lr"].to(accelerator.device)
        hr = batch["hr"].to(accelerator.device)
        with accelerator.autocast():
            pred = model(lr_frames).frames
        pred = pred.float()
        terms: dict[str, torch.Tensor] = {}
        if config.temporal_weight > 0 and pred.shape[1] > 1:  # flicker the truth does not have
            terms["temporal"] = F.l1_loss(pred[:, 1:] - pred[:, :-1], hr[:, 1:] - hr[:, :-1])
        pred = pred.flatten(0, 1)
        target = hr.flatten(0, 1)
        l1 = F.l1_loss(pred, target)
        perc = perceptual(pred, target) if perceptual is not None else pred.new_zeros(())
        loss = config.l1_weight * l1 + config.perceptual_weight * perc
        if identity is not None:
            pts = batch["points"].to(accelerator.device).flatten(0, 1)
            terms["identity"] = identity(pred, target, pts, pts)
        adversarial = disc is not None and step >= config.adversarial_from
        if adversarial:
            d_fake = disc(pred)
            with torch.no_grad():
                d_real = disc(target)
            terms["g_adv"] = generator_adversarial_loss(d_fake.logits)
            terms["fm"] = feature_matching_loss(d_real.features, d_fake.features)
        weights = {"temporal": config.temporal_weight, "identity": config.identity_weight,
                   "g_adv": config.adversarial_weight, "fm": config.feature_matching_weight}
        for name, value in terms.items():
            loss = loss + weights[name] * value
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step + 1} (l1 {l1.item()}, perceptual "
                                     f"{perc.item()}, {', '.join(f'{k} {v.item()}' for k, v in terms.items())})")
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm) if config.max_grad_norm > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        if adversarial:
            loss_d = discriminator_loss(disc(target).logits, disc(pred.detach()).logits)
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(loss_d)
            opt_d.step()
            terms["d"] = loss_d
        step += 1
        losses.append(float(loss.detach()))
        if step % config.log_every == 0 or step == config.num_steps:
            scalars = {"loss": losses[-1], "l1": float(l1.detach()), "perceptual": float(perc.detach()), "lr": scheduler.get_last_lr()[0],
                       **{k: float(v.detach()) for k, v in terms.items()}}
            if grad_norm is not None:
                scalars["grad_norm"] = float(grad_norm)
            accelerator.log(scalars, step=step)
        if step % config.checkpoint_every == 0 or step == config.num_steps:
            ckpt = ckpt_root / f"step_{step}"
            save_checkpoint(ckpt, state={"step": step}, process_index=accelerator.process_index,
                            is_main_process=accelerator.is_main_process, **parts)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                checkpoints.append(ckpt)
                rotate_checkpoints(ckpt_root, config.checkpoints_total_limit)
            accelerator.wait_for_everyone()

    final_dir = out_dir / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        unwrapped.save_pretrained(final_dir)
        if ema is not None:
            ema.restore(params)
    accelerator.end_training()
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a later run in this process may pick another mixed precision
    return SRTrainResult(final_dir=final_dir, start_step=start_step, losses=losses, checkpoints=checkpoints)


def main(argv: list[str] | None = None) -> int:
    """``metaportrait train-sr --config FILE [--output-dir DIR] [--num-steps N] [--resume-from latest|DIR]``."""
    parser = argparse.ArgumentParser(prog="train-sr", description="Train the temporal super-resolution network (paper §3.3).")
    parser.add_argument("--config", type=Path, required=True, help="JSON file with SRTrainConfig fields (configs/sr_*.json)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--resume-from", default=None, help="'latest' or a checkpoint folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = SRTrainConfig.from_json(args.config)
    overrides = {
        k: v
        for k, v in (("data_dir", args.data_dir), ("output_dir", args.output_dir), ("num_steps", args.num_steps), ("resume_from", args.resume_from))
        if v is not None
    }
    config = config.replace(**overrides)
    result = train_sr(config)
    tail = result.losses[-min(len(result.losses), 50):]
    mean = sum(tail) / len(tail) if tail else math.nan
    print(f"saved {result.final_dir} after step {result.start_step + len(result.losses)} (mean loss of the last {len(tail)} steps {mean:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
