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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.config import ConfigChecks, rename_keys
from metaportrait.models.fewshot import (
    Embedder,
    EmbedderConfig,
    FewShotGenerator,
    FewShotGeneratorConfig,
    ProjectionDiscriminator,
    ProjectionDiscriminatorConfig,
)
from metaportrait.tensors import to_tensor
from metaportrait.training.checkpoint import complete_checkpoints, load_checkpoint, rotate_checkpoints, save_checkpoint
from metaportrait.training.losses import (
    PerceptualLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from metaportrait.training.prepared import FORMAT, TRAIN, ClipInfo, PreparedData, frames_file

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


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FewShotLossWeights:
    """Loss weights of Zakharov et al. 2019: content 1.5e-1 (VGG19) and 2.5e-2 (VGGFace; SFace here),
    adversarial 1, feature matching 10, embedding match 10. ``pixel`` (multi-scale L1) is 0 in the
    paper; the CPU demo and the tests use it instead of the perceptual networks."""

    vgg19: float = 0.15
    vggface: float = 0.025
    pixel: float = 0.0
    adversarial: float = 1.0
    feature_matching: float = 10.0
    embedding_match: float = 10.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"loss weight {f.name} must be a finite number >= 0, got {v!r}")
        if self.vgg19 == 0 and self.vggface == 0 and self.pixel == 0:
            raise ValueError("at least one content-loss weight (vgg19, vggface, pixel) must be > 0")


# Field names before the training configs shared the diffusers-script names ({old: new}).
RENAMED_KEYS = {"keep_checkpoints": "checkpoints_total_limit"}


@dataclass(frozen=True)
class FewShotTrainConfig(ConfigChecks):
    """Meta-learning run settings; load with :meth:`from_json` (``configs/fewshot_*.json``).

    ``preset`` picks the E/G/D presets (``paper`` 256², ``demo`` 128², ``tiny`` 64²); frames are
    resized to that resolution. ``frames_per_episode`` is K (8 in the paper). ``checkpoint_every``
    steps a checkpoint (safetensors + JSON) is written to ``output_dir/checkpoints/step_<8-digit step>`` (the last
    ``checkpoints_total_limit`` are kept); at the end E, G, D go to ``output_dir/{embedder,generator,
    discriminator}`` with ``save_pretrained``.
    """

    data_dir: str
    output_dir: str
    preset: Literal["paper", "demo", "tiny"] = "paper"
    frames_per_episode: int = 8
    batch_size: int = 8
    steps: int = 100_000
    lr_embedder_generator: float = 5e-5
    lr_discriminator: float = 2e-4
    adam_betas: tuple[float, float] = (0.0, 0.9)
    d_steps_per_g_step: int = 2
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 1000
    checkpoints_total_limit: int = 3
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    loss_weights: FewShotLossWeights = FewShotLossWeights()

    def __post_init__(self) -> None:
        if isinstance(self.loss_weights, dict):
            object.__setattr__(self, "loss_weights", FewShotLossWeights(**self.loss_weights))
        if isinstance(self.adam_betas, list):
            object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        self.validate()

    def validate(self) -> None:
        for lit in ("preset", "mixed_precision"):
            allowed = typing.get_args(typing.get_type_hints(FewShotTrainConfig)[lit])
            if getattr(self, lit) not in allowed:
                raise ValueError(f"{lit} must be one of {allowed}, got {getattr(self, lit)!r}")
        self.check_positive_ints("frames_per_episode", "batch_size", "steps", "d_steps_per_g_step", "checkpoint_every",
                                 "checkpoints_total_limit", "log_every")
        self.check_non_negative_ints("num_workers")
        for name in ("lr_embedder_generator", "lr_discriminator"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not isinstance(self.loss_weights, FewShotLossWeights):
            raise ValueError(f"loss_weights must be a FewShotLossWeights or dict, got {self.loss_weights!r}")

    @property
    def image_size(self) -> int:
        return EmbedderConfig.preset(self.preset).image_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FewShotTrainConfig:
        """``keep_checkpoints`` (the older name) is read as ``checkpoints_total_limit``."""
        data = rename_keys(data, RENAMED_KEYS, "FewShotTrainConfig")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"_comment"})
        if unknown:
            raise ValueError(f"FewShotTrainConfig: unknown keys {unknown}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> FewShotTrainConfig:
        """Read a JSON config (``configs/fewshot_paper.json``); a ``"_comment"`` key is ignored."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> FewShotTrainConfig:
        return dataclasses.replace(self, **changes)


# -- losses --------------------------------------------------------------------------------------
def multiscale_l1(x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125)) -> torch.Tensor:
    """Mean over an area-downsampled pyramid of ``mean|x - y|`` (``B×3×H×W`` in [-1, 1])."""
    if x.shape != y.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
    total = x.new_zeros((), dtype=torch.float32)
    for s in scales:
        if s == 1.0:
            xs, ys = x, y
        else:
            size = (max(1, round(x.shape[-2] * s)), max(1, round(x.shape[-1] * s)))
            xs, ys = F.interpolate(x, size=size, mode="area"), F.interpolate(y, size=size, mode="area")
        total = total + (xs.float() - ys.float()).abs().mean()
    return total / len(scales)


def embedding_match_loss(e_hat: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
    """L_MCH = mean |ê_i - W_i| (paper eq. 5, averaged over the batch and the D dimensions)."""
    if e_hat.shape != w_rows.shape:
        raise ValueError(f"ê {tuple(e_hat.shape)} and W_i {tuple(w_rows.shape)} must have the same shape")
    return (e_hat.float() - w_rows.float()).abs().mean()


@dataclass
class ContentLossTerms:
    """Weighted total and the unweighted parts (``None`` when a part has weight 0)."""

    total: torch.Tensor
    vgg19: torch.Tensor | None
    vggface: torch.Tensor | None
    pixel: torch.Tensor | None


class ContentLoss(nn.Module):
    """L_CNT = λ_VGG19·L_VGG19 + λ_VGGFace·L_VGGFace + λ_pix·multi-scale L1 (see the module docstring).

    The perceptual networks are frozen :class:`PerceptualLoss` instances: ``network="auto"``
    (VGG19, or SFace when VGG19 cannot be loaded) for L_VGG19 and ``network="sface"`` for L_VGGFace;
    when both end up on SFace the network is evaluated once with the two weights added.
    """

    def __init__(self, weights: FewShotLossWeights, identity_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.vgg19: PerceptualLoss | None = None
        self.vggface: PerceptualLoss | None = None
        if weights.vgg19 > 0:
            self.vgg19 = PerceptualLoss(network="auto", identity_encoder=identity_encoder)
        if weights.vggface > 0:
            if self.vgg19 is not None and self.vgg19.network == "sface":
                self.vggface = self.vgg19
            else:
                self.vggface = PerceptualLoss(network="sface", identity_encoder=identity_encoder)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> ContentLossTerms:
        w = self.weights
        total = fake.new_zeros((), dtype=torch.float32)
        vgg19 = vggface = pixel = None
        if self.vgg19 is not None:
            vgg19 = self.vgg19(fake, real).float()
            total = total + w.vgg19 * vgg19
        if self.vggface is not None:
            vggface = vgg19 if self.vggface is self.vgg19 else self.vggface(fake, real).float()
            total = total + w.vggface * vggface
        if w.pixel > 0:
            pixel = multiscale_l1(fake, real)
            total = total + w.pixel * pixel
        return ContentLossTerms(total=total, vgg19=vgg19, vggface=vggface, pixel=pixel)


# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Clip:
    id: str
    path: Path
    frames: np.ndarray  # usable frame indices (valid and before heldout_frames_from)
    info: ClipInfo  # the manifest entry


class FewShotVideoData:
    """The training videos of a prepared-data folder (docs/DATA_FORMAT.md), read with memory maps.

    Video index i is the position of a ``split == "train"`` clip among the usable ones (manifest
    order). A clip needs at least 2 usable frames (valid, index < ``heldout_frames_from``); clips
    with fewer are listed in :attr:`skipped`.
    """

    def __init__(self, data_dir: str | Path, image_size: int) -> None:
        self.data_dir = Path(data_dir)
        self.image_size = int(image_size)
        self.prepared = PreparedData(self.data_dir)
        self.clips: list[_Clip] = []
        self.skipped: list[tuple[str, str]] = []
        for rec in self.prepared.clips_in(TRAIN):
            n = int(self.prepared.landmarks(rec).shape[0])
            usable = self.prepared.usable_frames(rec, TRAIN, num_frames=n)
            if usable.size < 2:
                self.skipped.append((rec.id, f"{usable.size} usable frames (need 2)"))
                continue
            self.clips.append(_Clip(id=rec.id, path=self.prepared.clip_dir(rec), frames=usable, info=rec))
        if not self.clips:
            raise ValueError(f"{self.data_dir}: no training clip with at least 2 usable frames")
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:  # worker processes reopen the memory maps
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    @property
    def num_videos(self) -> int:
        return len(self.clips)

    def _open(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._arrays:
            clip = self.clips[i]
            frames = self.prepared.frames(clip.info)
            landmarks = self.prepared.landmarks(clip.info)
            if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[1] != frames.shape[2]:
                raise ValueError(f"{clip.path / frames_file(256)}: expected N×S×S×3, got {frames.shape}")
            self._arrays[i] = (frames, landmarks)
        return self._arrays[i]

    def load(self, i: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames and landmark images of video i: two ``N×3×S×S`` tensors in [-1, 1] (S = image_size)."""
        frames, landmarks = self._open(i)
        idx = np.asarray(indices, dtype=np.int64)
        src = frames.shape[1]
        x = to_tensor(np.asarray(frames[idx]))
        s = self.image_size
        if src != s:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
        from metaportrait.face.drawing import draw_landmark_image

        pts = np.asarray(landmarks[idx], dtype=np.float32) * (s / src)
        y = to_tensor(np.stack([draw_landmark_image(p, s) for p in pts]))
        return x, y


@dataclass
class Episode:
    """A meta-learning batch: K frames + landmark images per video and one target frame each.

    ``x_frames``/``y_frames``: ``B×K×3×H×W``; ``x_target``/``y_target``: ``B×3×H×W``;
    ``video_index``: ``B`` (long).
    """

    x_frames: torch.Tensor
    y_frames: torch.Tensor
    x_target: torch.Tensor
    y_target: torch.Tensor
    video_index: torch.Tensor

    def to(self, device: torch.device) -> Episode:
        return Episode(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


class EpisodeDataset(torch.utils.data.Dataset):
    """Item j is the whole episode batch of training step ``start_step + j``.

    The sampling is a pure function of (seed, step, process index), so a resumed run sees
    exactly the episodes an uninterrupted run would have seen, with any number of workers.
    """

    def __init__(self, data: FewShotVideoData, *, batch_size: int, k: int, seed: int, start_step: int, steps: int,
                 process_index: int = 0) -> None:
        self.data = data
        self.batch_size = batch_size
        self.k = k
        self.seed = seed
        self.start_step = start_step
        self.steps = steps
        self.process_index = process_index

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def episode(self, step: int) -> Episode:
        rng = np.random.default_rng([self.seed, step, self.process_index])
        n = self.data.num_videos
        videos = rng.choice(n, size=self.batch_size, replace=self.batch_size > n)
        xs, ys, xt, yt = [], [], [], []
        for i in videos:
            usable = self.data.clips[int(i)].frames
            t = int(rng.integers(usable.size))
            others = np.delete(usable, t)
            chosen = rng.choice(others, size=self.k, replace=self.k > others.size)
            x, y = self.data.load(int(i), [*chosen.tolist(), int(usable[t])])
            xs.append(x[:-1])
            ys.append(y[:-1])
            xt.append(x[-1])
            yt.append(y[-1])
        return Episode(torch.stack(xs), torch.stack(ys), torch.stack(xt), torch.stack(yt),
                       torch.as_tensor(videos, dtype=torch.long))

    def __getitem__(self, j: int) -> Episode:
        if not 0 <= j < len(self):
            raise IndexError(j)
        return self.episode(self.start_step + j)


def _identity_collate(item: Episode) -> Episode:
    return item


# -- models --------------------------------------------------------------------------------------
def build_models(preset: Literal["paper", "demo", "tiny"], num_videos: int) -> tuple[Embedder, FewShotGenerator, ProjectionDiscriminator]:
    """E, G, D of one preset, with ``num_videos`` rows of W."""
    e = Embedder(EmbedderConfig.preset(preset))
    g = FewShotGenerator(FewShotGeneratorConfig.preset(preset))
    d = ProjectionDiscriminator(ProjectionDiscriminatorConfig.preset(preset, num_videos=num_videos))
    _check_compatible(e, g, d)
    return e, g, d


def _check_compatible(e: Embedder, g: FewShotGenerator, d: ProjectionDiscriminator) -> None:
    dims = (e.config.embed_dim, g.config.embed_dim, d.config.embed_dim)
    sizes = (e.config.image_size, g.config.image_size, d.config.image_size)
    if len(set(dims)) != 1 or len(set(sizes)) != 1:
        raise ValueError(f"embedder/generator/discriminator disagree: embed dims {dims}, image sizes {sizes}")


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


# -- few-shot fine-tuning ------------------------------------------------------------------------
@dataclass
class FineTuneResult:
    """Personalised G' (ψ' in ``generator.adain_personal``) and D' (w' in ``discriminator.w_personal``).

    ``embedding``: ê_NEW (``D``); ``losses``: per-step scalars; ``content_loss_before/after``: the
    content loss of G' on all T frames (eval mode) at initialisation and after fine-tuning (``nan``
    with ``evaluate=False``);
    timings in seconds: ``embed_seconds`` (ê_NEW and the copies), ``finetune_seconds`` (the steps).
    """

    generator: FewShotGenerator
    discriminator: ProjectionDiscriminator
    embedding: torch.Tensor
    losses: list[dict[str, float]]
    content_loss_before: float
    content_loss_after: float
    embed_seconds: float
    finetune_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.embed_seconds + self.finetune_seconds

    @property
    def seconds_per_step(self) -> float:
        return self.finetune_seconds / len(self.losses) if self.losses else 0.0


@torch.no_grad()
def _chunked_content_loss(generator: FewShotGenerator, frames: torch.Tensor, landmark_images: torch.Tensor,
                          content_loss: ContentLoss, chunk: int) -> float:
    was = generator.training
    generator.eval()
    total = 0.0
    for s in range(0, frames.shape[0], chunk):
        x, y = frames[s : s + chunk], landmark_images[s : s + chunk]
        total += content_loss(generator(y), x).total.item() * x.shape[0]
    generator.train(was)
    return total / frames.shape[0]


def finetune_fewshot(
    embedder: Embedder,
    generator: FewShotGenerator,
    discriminator: ProjectionDiscriminator,
    frames: torch.Tensor,
    landmark_images: torch.Tensor,
    *,
    steps: int = 40,
    lr_generator: float = 5e-5,
    lr_discriminator: float = 2e-4,
    adam_betas: tuple[float, float] = (0.0, 0.9),
    batch_size: int = 8,
    d_steps_per_g_step: int = 1,
    feed_forward: bool = False,
    loss_weights: FewShotLossWeights | None = None,
    content_loss: ContentLoss | None = None,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    chunk: int = 16,
    evaluate: bool = True,
    seconds: float | None = None,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> FineTuneResult:
    """Personalise the meta-learned model to T frames of a new person (paper §3.3).

    Args:
        embedder, generator, discriminator: the meta-learned E, G, D (left unchanged).
        frames, landmark_images: ``T×3×H×W`` in [-1, 1] (T >= 1), on the models' device.
        steps: generator updates (each followed by ``d_steps_per_g_step`` discriminator updates).
        lr_generator, lr_discriminator, adam_betas: Adam settings for G' (all weights and ψ') and
            D' (all weights, w' and b).
        batch_size: frames per step (sampled without replacement from the T frames, at most T).
        feed_forward: the FF variant: no optimisation (``steps`` is ignored), ψ' = P·ê_NEW.
        loss_weights / content_loss: the objective (default: :class:`FewShotLossWeights`; the
            embedding-match weight is unused here). ``content_loss`` overrides the weights' content part.
        autocast_dtype: e.g. ``torch.bfloat16`` to run forward passes under autocast.
        seed: seeds the frame sampling.
        chunk: frames per forward pass when embedding or evaluating all T frames.
        evaluate: measure the content loss on all T frames before and after (``nan`` when False).
        seconds: a wall-clock budget for the fine-tuning steps (stops early when spent).
        callback: ``callback(step, losses)`` after every step (1-based); returning True stops
            (a cancel button).
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or landmark_images.shape != frames.shape or frames.shape[0] < 1:
        raise ValueError(
            f"frames and landmark_images must both be T×3×H×W with T >= 1, got {tuple(frames.shape)} and "
            f"{tuple(landmark_images.shape)}"
        )
    if steps < 0 or batch_size < 1 or d_steps_per_g_step < 1 or chunk < 1:
        raise ValueError(
            f"need steps >= 0, batch_size >= 1, d_steps_per_g_step >= 1, chunk >= 1; got {steps}, {batch_size}, "
            f"{d_steps_per_g_step}, {chunk}"
        )
    _check_compatible(embedder, generator, discriminator)
    weights = loss_weights or FewShotLossWeights()
    if content_loss is None:
        content_loss = ContentLoss(weights)
    device = generator.P.device
    content_loss = content_loss.to(device)
    frames = frames.to(device)
    landmark_images = landmark_images.to(device)
    t_count = frames.shape[0]

    def autocast() -> Any:
        if autocast_dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=autocast_dtype)

    # ê_NEW, ψ' = P·ê_NEW, w' = w_0 + ê_NEW
    t0 = time.perf_counter()
    was_training = embedder.training
    embedder.eval()
    with torch.no_grad(), autocast():
        e_sum = torch.zeros(embedder.embed_dim, device=device)
        for s in range(0, t_count, chunk):
            e_sum += embedder(frames[s : s + chunk], landmark_images[s : s + chunk]).float().sum(dim=0)
    embedder.train(was_training)
    e_new = e_sum / t_count
    g_p = generator.personalize(e_new)
    d_p = discriminator.personalize(e_new)
    embed_seconds = time.perf_counter() - t0

    before = _chunked_content_loss(g_p, frames, landmark_images, content_loss, chunk) if evaluate else math.nan
    losses: list[dict[str, float]] = []
    t1 = time.perf_counter()
    if not feed_forward and steps > 0:
        g_p.train()
        d_p.train()
        opt_g = torch.optim.Adam(g_p.parameters(), lr=lr_generator, betas=adam_betas)
        opt_d = torch.optim.Adam(d_p.parameters(), lr=lr_discriminator, betas=adam_betas)
        rng = np.random.default_rng(seed)
        n = min(batch_size, t_count)
        for _ in range(steps):
            sel = torch.as_tensor(rng.choice(t_count, size=n, replace=False), device=device)
            x, y = frames[sel], landmark_images[sel]
            with autocast():
                fake = g_p(y)
                out_fake = d_p(fake, y)
                with torch.no_grad():
                    out_real = d_p(x, y)
                cnt = content_loss(fake, x)
                adv = generator_adversarial_loss(out_fake.score.float(), kind="hinge")
                fm = feature_matching_loss([f.float() for f in out_real.features], [f.float() for f in out_fake.features])
                loss_g = cnt.total + weights.adversarial * adv + weights.feature_matching * fm
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            fake_d = fake.detach()
            for _ in range(d_steps_per_g_step):
                with autocast():
                    out = d_p(torch.cat([x, fake_d]), torch.cat([y, y]))
                    real_score, fake_score = out.score.float().split(n)
                    loss_d = discriminator_loss(real_score, fake_score, kind="hinge")
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            losses.append({"loss_g": loss_g.item(), "loss_content": cnt.total.item(), "loss_adv": adv.item(),
                           "loss_fm": fm.item(), "loss_d": loss_d.item()})
            if callback is not None and callback(len(losses), losses[-1]):
                break
            if seconds is not None and time.perf_counter() - t1 >= seconds:
                break
    finetune_seconds = time.perf_counter() - t1
    after = _chunked_content_loss(g_p, frames, landmark_images, content_loss, chunk) if losses and evaluate else before
    g_p.eval()
    d_p.eval()
    return FineTuneResult(generator=g_p, discriminator=d_p, embedding=e_new, losses=losses,
                          content_loss_before=before, content_loss_after=after,
                          embed_seconds=embed_seconds, finetune_seconds=finetune_seconds)


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
