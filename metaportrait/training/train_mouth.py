"""Training of the mouth-interior network (:mod:`metaportrait.models.mouth_interior`).

Self-reenactment pairs from the prepared clips (``metaportrait prepare-data``): a *source* frame and
a *target* frame of the same clip. The source is moved onto the target's landmarks by the render
path's own full-head mesh warp (:func:`metaportrait.face.head_mesh.head_warp_grid` +
:func:`metaportrait.render.render_crop`, at the working size 256²); the network reads that warp's
mouth crop (aligned by the target's mouth corners, :mod:`metaportrait.mouth`), the target's lips
rasterised in it and the source's own mouth crop, and must give the true target mouth inside the
feathered inner-lip mask. Faces of every size give good 40-pixel-wide mouths, so every usable clip
of every identity trains it, except the held-out identities and each clip's held-out-in-time tail.

1. ``build_cache``: the pairs, computed once into ``.npz`` files of a cache folder outside the
   repository (88² crops: the 80² training crop plus room for a random shift).
2. ``train_mouth``: Accelerate loop; loss (on the composite, :func:`~metaportrait.models.mouth_interior.composite`)
   ``L1 + λ_p perceptual + λ_adv LSGAN + λ_fm feature matching`` with the lip-conditioned patch
   discriminator (:class:`~metaportrait.models.discriminator.MultiScalePatchDiscriminator`, pix2pixHD)
   so it draws teeth rather than their average; augmentation: random shift, horizontal flip and a
   colour jitter shared by the three crops; resumable checkpoints (:mod:`.checkpoint`) and a
   JSON-lines log; the EMA weights are exported with ``save_pretrained``.

    metaportrait train-mouth --data-dir data/prepared --cache-dir ~/.cache/metaportrait/mouth \\
        --output-dir runs/mouth --minutes 50
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from metaportrait.face.head_mesh import head_rig, head_warp_grid
from metaportrait.face.regions import MOUTH_INNER, MOUTH_OUTER
from metaportrait.models.discriminator import DiscriminatorConfig, MultiScalePatchDiscriminator
from metaportrait.models.mouth_interior import MouthInteriorConfig, MouthInteriorNetwork, composite
from metaportrait.mouth import apply_affine, crop_mouth, inner_mask, lip_image, mouth_frame, mouth_opening
from metaportrait.render import render_crop
from metaportrait.training.crop_pairs import CropPairs
from metaportrait.training.checkpoint import latest_checkpoint, load_checkpoint, rotate_checkpoints, save_checkpoint, truncate_log
from metaportrait.training.prepared import HELDOUT_FRAMES, TRAIN, PreparedData

logger = logging.getLogger(__name__)

CACHE_CROP = 88  # stored crop side; training crops are CACHE_CROP - 2 * SHIFT
SHIFT = 4
WORK = 256  # the working size the pairs are warped at (the render path's)
_LIPS = list(MOUTH_INNER) + list(MOUTH_OUTER)


# ------------------------------------------------------------------------------- pairs
def warp_source(frames: np.ndarray, lms: np.ndarray, s: int, t: int, rings_cache: dict) -> np.ndarray:
    """Frame ``s`` moved onto frame ``t``'s landmarks by the render path's full-head mesh warp
    (``WORK``²; ``rings_cache`` keeps each source's head rings and triangles)."""
    src_lm, tgt_lm = np.asarray(lms[s], np.float64), np.asarray(lms[t], np.float64)
    if s not in rings_cache:
        rings_cache[s] = head_rig(src_lm, WORK)
    rings, tris = rings_cache[s]
    grid = head_warp_grid(src_lm, tgt_lm, rings, WORK, triangles=tris)
    return render_crop(np.asarray(frames[s]), grid)


def _pair(frames: np.ndarray, lms: np.ndarray, s: int, t: int, mouth_width: float, rings_cache: dict) -> dict[str, np.ndarray]:
    src_lm, tgt_lm = np.asarray(lms[s], np.float64), np.asarray(lms[t], np.float64)
    warped = warp_source(frames, lms, s, t, rings_cache)
    a_t = mouth_frame(tgt_lm, CACHE_CROP, mouth_width)
    a_s = mouth_frame(src_lm, CACHE_CROP, mouth_width)
    return {
        "target": crop_mouth(np.asarray(frames[t]), a_t, CACHE_CROP),
        "warped": crop_mouth(warped, a_t, CACHE_CROP),
        "source": crop_mouth(np.asarray(frames[s]), a_s, CACHE_CROP),
        "lips": apply_affine(a_t, tgt_lm[_LIPS]).astype(np.float32),
        "source_inner": apply_affine(a_s, src_lm[list(MOUTH_INNER)]).astype(np.float32),
    }


def build_cache(data_dir: str | Path, cache_dir: str | Path, *, mouth_width: float = 40.0, max_targets: int = 300,
                sources_per_target: int = 2, open_threshold: float = 0.05, seed: int = 0) -> list[Path]:
    """Write one ``<split>__<clip>.npz`` of pairs per usable clip (train: the clip's training
    frames; val: targets from its held-out-in-time tail, sources from its training frames).
    Existing files are kept (delete the folder to rebuild). Returns the files."""
    data = PreparedData(data_dir)
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for clip in data.clips_in(TRAIN):
        frames, lms = data.frames(clip), data.landmarks(clip)
        train_idx = data.usable_frames(clip, TRAIN)
        if len(train_idx) < 2:
            continue
        opening = np.array([mouth_opening(lms[i]) for i in range(len(lms))])
        closed = train_idx[opening[train_idx] < open_threshold]
        for split, targets_from in ((TRAIN, train_idx), ("val", data.usable_frames(clip, HELDOUT_FRAMES))):
            path = cache / f"{split}__{clip.id.replace('/', '__')}.npz"
            if path.is_file():
                written.append(path)
                continue
            open_t = targets_from[opening[targets_from] >= open_threshold]
            shut_t = targets_from[opening[targets_from] < open_threshold]
            cap = max_targets if split == TRAIN else max_targets // 6
            n_open = min(len(open_t), int(cap * 0.85))
            targets = np.concatenate([rng.choice(open_t, n_open, replace=False),
                                      rng.choice(shut_t, min(len(shut_t), cap - n_open), replace=False)]).astype(int)
            if len(targets) == 0:
                continue
            rows: dict[str, list[np.ndarray]] = {}
            rings_cache: dict = {}
            for t in targets:
                for k in range(sources_per_target):
                    pool = closed if (k == 0 and len(closed)) else train_idx
                    s = int(rng.choice(pool))
                    if s == t:
                        continue
                    for key, v in _pair(frames, lms, s, int(t), mouth_width, rings_cache).items():
                        rows.setdefault(key, []).append(v)
            np.savez(path, **{k: np.stack(v) for k, v in rows.items()})
            logger.info("%s: %d pairs", path.name, len(rows["target"]))
            written.append(path)
    return written


class MouthPairs(CropPairs):
    """The cached pairs of one split, augmented (random shift, flip, shared colour jitter) when
    ``augment``; items: ``warped``, ``source``, ``target`` (3×S×S in [-1, 1]), ``lips`` (3×S×S)
    and ``mask`` (1×S×S, the feathered inner-lip mask). ``width``: the mouth width in crop pixels."""

    what = "mouth"

    def sample(self, i: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Pair ``i``, augmented with draws from ``rng`` when ``augment``."""
        s = self.crop_size
        ims, shift = self.crops(i, rng)
        lips = self.arrays["lips"][i].astype(np.float64) - shift
        src_inner = self.arrays["source_inner"][i].astype(np.float64) - shift
        if self.augment and rng.random() < 0.5:
            ims = [im[:, ::-1] for im in ims]
            lips[:, 0] = s - lips[:, 0]
            src_inner[:, 0] = s - src_inner[:, 0]
        ims = self.jitter(ims, rng)
        full = np.zeros((478, 2))
        full[_LIPS] = lips
        raster = lip_image(full, src_inner, s)
        mask = inner_mask(lips[:20], self.width, s, s)
        t = self.tensors(ims)
        return {"warped": t[0], "source": t[1], "target": t[2],
                "lips": torch.from_numpy(raster).permute(2, 0, 1), "mask": torch.from_numpy(mask)[None]}


# ------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class MouthTrainConfig:
    data_dir: str = "/work/data/prepared"
    cache_dir: str = "~/.cache/metaportrait/mouth"
    output_dir: str = "runs/mouth"
    model: MouthInteriorConfig = MouthInteriorConfig()
    batch_size: int = 8
    learning_rate: float = 2e-4
    disc_learning_rate: float = 2e-4
    num_steps: int = 100_000
    minutes: float = 55.0  # wall-clock budget; the run stops (and saves) when it is spent
    perceptual_weight: float = 1.0
    perceptual_scale: float = 0.5  # SFace features at half the crop's size (full size costs more than the rest)
    adversarial_weight: float = 0.1
    feature_matching_weight: float = 1.0
    adversarial_from: int = 400
    ema_decay: float = 0.995
    checkpoint_every: int = 250
    log_every: int = 25
    val_every: int = 500
    checkpoints_total_limit: int = 2
    resume_from: str | None = "latest"
    seed: int = 0
    lr_decay_from: int | None = None  # from this step on, both learning rates fall linearly ...
    lr_decay_steps: int = 5000  # ... to 5 % of their value over this many steps (None: constant)


def _masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x - y).abs() * mask).sum() / (3 * mask.sum()).clamp_min(1.0)


def train_mouth(config: MouthTrainConfig) -> Path:
    """Train (or resume); returns the folder the EMA weights were saved to (``<output>/final``)."""
    torch.set_num_threads(1)
    cfg = config.model
    build_cache(config.data_dir, config.cache_dir, mouth_width=cfg.mouth_width, seed=config.seed)
    train = MouthPairs.from_cache(config.cache_dir, TRAIN, cfg.crop_size, cfg.mouth_width, augment=True)
    val = MouthPairs.from_cache(config.cache_dir, "val", cfg.crop_size, cfg.mouth_width, augment=False)
    return train_crop_network(config, MouthInteriorNetwork(cfg), train, val, condition="lips")


def train_crop_network(config, model: torch.nn.Module, train: torch.utils.data.Dataset, val: torch.utils.data.Dataset,
                       condition: str) -> Path:
    """The training loop shared by the crop networks (mouth interior, eyelids): ``model(warped,
    <condition>, source)`` on items ``warped``, ``source``, ``target``, ``mask`` and ``condition``
    (the raster that also conditions the discriminator); ``config``: a :class:`MouthTrainConfig`
    (or one with its fields). Returns ``<output>/final`` (the EMA weights)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel

    from metaportrait.training.losses import PerceptualLoss, discriminator_loss, feature_matching_loss, generator_adversarial_loss

    torch.set_num_threads(1)
    t_start = time.monotonic()
    out_dir = Path(config.output_dir).expanduser()
    ckpt_root = out_dir / "checkpoints"
    log_path = out_dir / "log.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=True)
    set_seed(config.seed)
    accelerator.print(f"{len(train)} training pairs from {len(train.files)} clips, {len(val)} validation pairs")
    loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=0)
    disc = MultiScalePatchDiscriminator(DiscriminatorConfig(condition_channels=3, base_channels=32, max_channels=128,
                                                            num_layers=3, num_scales=2, spectral_norm=True))
    opt_g = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.disc_learning_rate, betas=(0.5, 0.999))
    # at perceptual_scale of the crop's size (default half: SFace features at full size cost more than the rest of a step)
    perceptual = PerceptualLoss(pyramid=(config.perceptual_scale,), network="auto")
    model, disc, opt_g, opt_d, loader = accelerator.prepare(model, disc, opt_g, opt_d, loader)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    parts = {"models": {"model": accelerator.unwrap_model(model), "disc": accelerator.unwrap_model(disc)},
             "optimizers": {"model": opt_g, "disc": opt_d}, "ema": ema}
    step = 0
    resume = latest_checkpoint(ckpt_root) if config.resume_from == "latest" else (
        Path(config.resume_from) if config.resume_from else None)
    if resume is not None:
        step = int(load_checkpoint(resume, **parts)["step"])
        truncate_log(log_path, step)
        accelerator.print(f"resumed from {resume} at step {step}")
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=1, default=str))

    def checkpoint() -> None:
        save_checkpoint(ckpt_root / f"step_{step:07d}", state={"step": step}, **parts)
        rotate_checkpoints(ckpt_root, config.checkpoints_total_limit)

    def validate() -> dict[str, float]:
        model.eval()
        tot = {"val_l1_mask": 0.0, "warp_l1_mask": 0.0}
        chosen = np.linspace(0, len(val) - 1, min(len(val), 384)).round().astype(int)
        with torch.no_grad():
            for i in range(0, len(chosen), 32):
                b = [val[int(j)] for j in chosen[i:i + 32]]
                w, lips, src, tgt, m = (torch.stack([x[k] for x in b]) for k in ("warped", condition, "source", "target", "mask"))
                out = composite(w, model(w, lips, src).image, m)
                tot["val_l1_mask"] += float(_masked_l1(out, tgt, m)) * len(b)
                tot["warp_l1_mask"] += float(_masked_l1(w, tgt, m)) * len(b)
        model.train()
        return {k: v / len(chosen) for k, v in tot.items()}

    def set_learning_rates() -> None:
        start = getattr(config, "lr_decay_from", None)
        if start is None:
            return
        frac = max(0.05, 1.0 - max(0, step - start) / max(1, config.lr_decay_steps))
        for opt, base in ((opt_g, config.learning_rate), (opt_d, config.disc_learning_rate)):
            for group in opt.param_groups:
                group["lr"] = base * frac

    model.train()
    done = False
    while not done:
        for batch in loader:
            set_learning_rates()
            w, lips, src, tgt, m = (batch[k] for k in ("warped", condition, "source", "target", "mask"))
            fake = composite(w, model(w, lips, src).image, m)
            adv = step >= config.adversarial_from
            loss_l1 = _masked_l1(fake, tgt, m)
            loss_p = perceptual(fake, tgt)
            loss = loss_l1 * 10.0 + config.perceptual_weight * loss_p
            terms = {"l1": float(loss_l1), "perceptual": float(loss_p)}
            if adv:
                d_fake = disc(fake, lips)
                with torch.no_grad():
                    d_real = disc(tgt, lips)
                loss_adv = generator_adversarial_loss(d_fake.logits)
                loss_fm = feature_matching_loss(d_real.features, d_fake.features)
                loss = loss + config.adversarial_weight * loss_adv + config.feature_matching_weight * loss_fm
                terms.update(g_adv=float(loss_adv), fm=float(loss_fm))
            opt_g.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt_g.step()
            ema.step(model.parameters())
            if adv:
                loss_d = discriminator_loss(disc(tgt, lips).logits, disc(fake.detach(), lips).logits)
                opt_d.zero_grad(set_to_none=True)
                accelerator.backward(loss_d)
                opt_d.step()
                terms["d"] = float(loss_d)
            step += 1
            minutes = (time.monotonic() - t_start) / 60.0
            done = step >= config.num_steps or minutes >= config.minutes
            if step % config.log_every == 0 or done:
                rec = {"step": step, "minutes": round(minutes, 2), **{k: round(v, 5) for k, v in terms.items()}}
                if step % config.val_every == 0 or done:
                    rec.update({k: round(v, 5) for k, v in validate().items()})
                with log_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                accelerator.print(json.dumps(rec))
            if step % config.checkpoint_every == 0 or done:
                checkpoint()
            if done:
                break
    final = out_dir / "final"
    net = accelerator.unwrap_model(model)
    ema.store(net.parameters())
    ema.copy_to(net.parameters())
    net.save_pretrained(final)
    ema.restore(net.parameters())
    return final


# ------------------------------------------------------------------------------- one person
def person_pairs(frames: np.ndarray, landmarks: np.ndarray, mouth_width: float, max_pairs: int = 96,
                 open_threshold: float = 0.05, seed: int = 0) -> dict[str, np.ndarray]:
    """Self-reenactment mouth pairs among one person's 256² frames (targets: the open mouths first)."""
    rng = np.random.default_rng(seed)
    n = len(frames)
    if n < 2:
        raise ValueError(f"need at least 2 frames of the person, got {n}")
    opening = np.array([mouth_opening(lm) for lm in landmarks])
    targets = np.argsort(-opening)
    targets = np.concatenate([targets[opening[targets] >= open_threshold], targets[opening[targets] < open_threshold]])
    rows: dict[str, list[np.ndarray]] = {}
    rings_cache: dict = {}
    for k in range(max_pairs):
        t = int(targets[k % len(targets)])
        s = int(rng.choice([i for i in range(n) if i != t]))
        for key, v in _pair(frames, landmarks, s, t, mouth_width, rings_cache).items():
            rows.setdefault(key, []).append(v)
    return {k: np.stack(v) for k, v in rows.items()}


def finetune_mouth(network: MouthInteriorNetwork, frames: np.ndarray, landmarks: np.ndarray, *, seconds: float = 30.0,
                   steps: int | None = None, lr: float = 1e-4, batch_size: int = 4, max_pairs: int = 64,
                   seed: int = 0, perceptual: torch.nn.Module | None = None) -> dict[str, float]:
    """Fine-tune ``network`` in place on one person's own frames (personalization, MetaPortrait
    §3.2: the person-specific part learns the person's own teeth) within ``seconds`` of wall
    time, the pair building included, or ``steps`` steps (whichever ends first); L1 + perceptual
    on the composite; batches and augmentation drawn from ``seed``. Returns steps and seconds."""
    from metaportrait.training.losses import PerceptualLoss

    t0 = time.monotonic()
    cfg = network.config
    pairs = MouthPairs(person_pairs(frames, landmarks, cfg.mouth_width, max_pairs, seed=seed), cfg.crop_size,
                       cfg.mouth_width, augment=True)
    perceptual = perceptual if perceptual is not None else PerceptualLoss(pyramid=(0.5,), network="auto")
    network.requires_grad_(True)  # a network taken from an inference pipeline comes frozen
    opt = torch.optim.Adam(network.parameters(), lr=lr, betas=(0.5, 0.999))
    rng = np.random.default_rng(seed)
    network.train()
    done = 0
    while time.monotonic() - t0 < seconds and (steps is None or done < steps):
        items = [pairs.sample(int(i), rng) for i in rng.integers(len(pairs), size=batch_size)]
        w, lips, src, tgt, m = (torch.stack([x[k] for x in items]) for k in ("warped", "lips", "source", "target", "mask"))
        fake = composite(w, network(w, lips, src).image, m)
        loss = 10.0 * _masked_l1(fake, tgt, m) + perceptual(fake, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    network.eval().requires_grad_(False)
    return {"steps": float(done), "seconds": time.monotonic() - t0, "pairs": float(len(pairs))}


def validation_indices(n_train: int, val_landmarks: np.ndarray, open_threshold: float = 0.05) -> list[tuple[int, int]]:
    """``(training frame, held-back frame)`` index pairs of :func:`validation_pairs`: every held-back
    frame whose mouth opens at least ``open_threshold``, the training frames as sources in turn."""
    return [(k % n_train, k) for k, lm in enumerate(val_landmarks) if mouth_opening(lm) >= open_threshold]


def validation_pairs(train_frames: np.ndarray, train_landmarks: np.ndarray, val_frames: np.ndarray,
                     val_landmarks: np.ndarray, mouth_width: float, open_threshold: float = 0.05) -> dict[str, np.ndarray]:
    """Mouth pairs whose targets are the held-back frames with an open mouth (sources: the training
    frames in turn); empty dict when no held-back mouth is open."""
    frames = np.concatenate([np.asarray(train_frames), np.asarray(val_frames)])
    lms = np.concatenate([np.asarray(train_landmarks), np.asarray(val_landmarks)])
    n = len(train_frames)
    rows: dict[str, list[np.ndarray]] = {}
    rings_cache: dict = {}
    for s, k in validation_indices(n, val_landmarks, open_threshold):
        for key, v in _pair(frames, lms, s, n + k, mouth_width, rings_cache).items():
            rows.setdefault(key, []).append(v)
    return {k: np.stack(v) for k, v in rows.items()}


@torch.no_grad()
def masked_error(network: MouthInteriorNetwork, pairs: MouthPairs) -> float:
    """Mean inner-lip-masked L1 (in [0, 1] units) of the network's composite against the true mouths."""
    was_training = network.training
    network.eval()
    errs = []
    for i in range(len(pairs)):
        x = pairs.sample(i, np.random.default_rng(i))
        w, lips, src, tgt, m = (x[k][None] for k in ("warped", "lips", "source", "target", "mask"))
        errs.append(float(_masked_l1(composite(w, network(w, lips, src).image, m), tgt, m)) / 2)
    network.train(was_training)
    return float(np.mean(errs))


def export_checkpoint(checkpoint: str | Path, dest: str | Path, model: MouthInteriorConfig = MouthInteriorConfig(),
                      network_class: type = MouthInteriorNetwork) -> Path:
    """Write a checkpoint's EMA weights as a ``save_pretrained`` folder (``config.json`` +
    ``model.safetensors``); ``network_class(model)`` is the network trained."""
    from diffusers.training_utils import EMAModel

    from metaportrait.training.checkpoint import load_ema

    net = network_class(model)
    ema = EMAModel(net.parameters())
    load_ema(checkpoint, ema)
    ema.copy_to(net.parameters())
    net.save_pretrained(Path(dest))
    return Path(dest)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(prog="train-mouth", description="Train the mouth-interior network.")
    parser.add_argument("--data-dir", default=MouthTrainConfig.data_dir)
    parser.add_argument("--cache-dir", default=MouthTrainConfig.cache_dir)
    parser.add_argument("--output-dir", default=MouthTrainConfig.output_dir)
    parser.add_argument("--minutes", type=float, default=MouthTrainConfig.minutes)
    parser.add_argument("--num-steps", type=int, default=MouthTrainConfig.num_steps)
    parser.add_argument("--batch-size", type=int, default=MouthTrainConfig.batch_size)
    parser.add_argument("--cache-only", action="store_true", help="build the pair cache and stop")
    parser.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "DEST"),
                        help="write a checkpoint's EMA weights to DEST (save_pretrained) and stop")
    args = parser.parse_args(argv)
    if args.export:
        print(export_checkpoint(*args.export))
        return 0
    config = MouthTrainConfig(data_dir=args.data_dir, cache_dir=args.cache_dir, output_dir=args.output_dir,
                              minutes=args.minutes, num_steps=args.num_steps, batch_size=args.batch_size)
    if args.cache_only:
        torch.set_num_threads(1)
        files = build_cache(config.data_dir, config.cache_dir, mouth_width=config.model.mouth_width, seed=config.seed)
        print(f"{len(files)} pair files in {config.cache_dir}")
        return 0
    print(train_mouth(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
