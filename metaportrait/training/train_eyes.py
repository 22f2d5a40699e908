"""Training of the eye-interior network (:mod:`metaportrait.models.eye_interior`).

Self-reenactment pairs from the prepared clips (``metaportrait prepare-data``) in which the target
frame's eye is more closed than the source frame's (blinks, half-closed eyes; the pairs are chosen
around each clip's closing frames, so blinks are heavily oversampled). The source is moved onto
the target's landmarks by the render path's own full-head mesh warp
(:func:`metaportrait.training.train_mouth.warp_source`, 256²); the network reads that warp's eye
crop (aligned by the target's eye corners, the right eye mirrored, :mod:`metaportrait.eyes`), the
target's eye contour rasterised in it and the source's own eye crop, and must give the true target
eye inside the feathered eye mask — only the eyes for which :func:`metaportrait.eyes.fill_strength`
would let the network draw. Every training clip with eyes at least :data:`MIN_EYE_WIDTH` pixels
wide trains it, except the held-out identities and each clip's held-out-in-time tail (validation
targets).

The loop, losses (L1 + perceptual + LSGAN patch discriminator + feature matching), EMA, resumable
checkpoints and the JSON-lines log are the mouth network's
(:func:`metaportrait.training.train_mouth.train_crop_network`); augmentation: random shift and a
colour jitter shared by the three crops (no flip: the crops are oriented, outer corner left).

    metaportrait train-eyes --data-dir data/prepared --cache-dir ~/.cache/metaportrait/eyes \\
        --output-dir runs/eyes --minutes 45
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metaportrait.eyes import EYES, contour_image, eye_frame, eye_mask, eye_opening, fill_strength
from metaportrait.models.eye_interior import EyeInteriorConfig, EyeInteriorNetwork
from metaportrait.mouth import apply_affine, crop_mouth
from metaportrait.training.crop_pairs import CropPairs
from metaportrait.training.prepared import HELDOUT_FRAMES, TRAIN, PreparedData
from metaportrait.training.train_mouth import MouthTrainConfig, export_checkpoint, train_crop_network, warp_source

logger = logging.getLogger(__name__)

SHIFT = 4  # random shift of the training crop inside the stored one (each way)
MIN_EYE_WIDTH = 12.0
"""Clips whose median eye width (corner distance, 256² pixels) is below this are left out (the
crop would only upsample a blur)."""
CLOSING = 0.8
"""A target frame counts as closing when its eye opening is below this fraction of the clip's median."""


def _openings(lms: np.ndarray) -> np.ndarray:
    return np.array([[eye_opening(lm, e) for e in (0, 1)] for lm in lms])


def _eye_rows(frames: np.ndarray, lms: np.ndarray, s: int, t: int, eye_width: float, cache_crop: int,
              rings_cache: dict) -> list[dict[str, np.ndarray]]:
    """The rows (one per eye that the network would draw) of the pair source ``s`` -> target ``t``."""
    src_lm, tgt_lm = np.asarray(lms[s], np.float64), np.asarray(lms[t], np.float64)
    eyes = [e for e in (0, 1) if fill_strength(tgt_lm, src_lm, e) > 0]
    if not eyes:
        return []
    warped = warp_source(frames, lms, s, t, rings_cache)
    rows = []
    for e in eyes:
        a_t = eye_frame(tgt_lm, e, cache_crop, eye_width)
        a_s = eye_frame(src_lm, e, cache_crop, eye_width)
        contour = list(EYES[e][1])
        rows.append({
            "target": crop_mouth(np.asarray(frames[t]), a_t, cache_crop),
            "warped": crop_mouth(warped, a_t, cache_crop),
            "source": crop_mouth(np.asarray(frames[s]), a_s, cache_crop),
            "contour": apply_affine(a_t, tgt_lm[contour]).astype(np.float32),
            "source_contour": apply_affine(a_s, src_lm[contour]).astype(np.float32),
            "strength": np.float32(fill_strength(tgt_lm, src_lm, e)),
        })
    return rows


def build_cache(data_dir: str | Path, cache_dir: str | Path, *, eye_width: float = 24.0, crop_size: int = 48,
                max_targets: int = 160, sources_per_target: int = 3, seed: int = 0) -> list[Path]:
    """Write one ``<split>__<clip>.npz`` of eye rows per usable clip (train: the clip's training
    frames; val: targets from its held-out-in-time tail, sources from its training frames).
    Targets: the clip's closing frames (opening below :data:`CLOSING` of its median) first, then
    others; sources: more open frames of the same clip. Existing files are kept."""
    data = PreparedData(data_dir)
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cache_crop = crop_size + 2 * SHIFT
    written = []
    for clip in data.clips_in(TRAIN):
        frames, lms = data.frames(clip), data.landmarks(clip)
        train_idx = data.usable_frames(clip, TRAIN)
        if len(train_idx) < 2:
            continue
        widths = np.linalg.norm(lms[train_idx][:, 33] - lms[train_idx][:, 133], axis=1)
        if float(np.median(widths)) < MIN_EYE_WIDTH:
            logger.info("%s: eyes %.1f px wide, left out", clip.id, float(np.median(widths)))
            continue
        opening = _openings(lms).mean(axis=1)
        median = float(np.median(opening[train_idx]))
        for split, targets_from in ((TRAIN, train_idx), ("val", data.usable_frames(clip, HELDOUT_FRAMES))):
            path = cache / f"{split}__{clip.id.replace('/', '__')}.npz"
            if path.is_file():
                written.append(path)
                continue
            cap = max_targets if split == TRAIN else max_targets // 4
            closing = targets_from[opening[targets_from] < CLOSING * median]
            rest = targets_from[opening[targets_from] >= CLOSING * median]
            n_close = min(len(closing), int(cap * 0.85))
            targets = np.concatenate([rng.choice(closing, n_close, replace=False),
                                      rng.choice(rest, min(len(rest), cap - n_close), replace=False)]).astype(int)
            rows: dict[str, list[np.ndarray]] = {}
            rings_cache: dict = {}
            for t in targets:
                pool = train_idx[opening[train_idx] > opening[t] / (1.0 - 0.2)]
                for s in rng.choice(pool, min(len(pool), sources_per_target), replace=False) if len(pool) else ():
                    for row in _eye_rows(frames, lms, int(s), int(t), eye_width, cache_crop, rings_cache):
                        for key, v in row.items():
                            rows.setdefault(key, []).append(v)
            if not rows:
                continue
            np.savez(path, **{k: np.stack(v) for k, v in rows.items()})
            logger.info("%s: %d eye rows", path.name, len(rows["target"]))
            written.append(path)
    return written


class EyePairs(CropPairs):
    """The cached eye rows of one split, augmented (random shift, shared colour jitter) when
    ``augment``; items: ``warped``, ``source``, ``target`` (3×S×S in [-1, 1]), ``contour``
    (3×S×S, :func:`metaportrait.eyes.contour_image`) and ``mask`` (1×S×S, the eye mask).
    ``width``: the eye width in crop pixels."""

    what = "eye"

    def sample(self, i: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Row ``i``, augmented with draws from ``rng`` when ``augment``."""
        s = self.crop_size
        ims, shift = self.crops(i, rng)
        contour = self.arrays["contour"][i].astype(np.float64) - shift
        src_contour = self.arrays["source_contour"][i].astype(np.float64) - shift
        ims = self.jitter(ims, rng)
        raster = contour_image(contour, src_contour, s)
        mask = eye_mask(contour, src_contour, self.width, s)
        t = self.tensors(ims)
        return {"warped": t[0], "source": t[1], "target": t[2],
                "contour": torch.from_numpy(raster).permute(2, 0, 1), "mask": torch.from_numpy(mask)[None]}


@dataclass(frozen=True)
class EyeTrainConfig(MouthTrainConfig):
    """:class:`MouthTrainConfig` with the eye network's model and folders (SFace features at the
    crop's full size: the eye crop is small)."""

    cache_dir: str = "~/.cache/metaportrait/eyes"
    output_dir: str = "runs/eyes"
    model: EyeInteriorConfig = EyeInteriorConfig()
    perceptual_scale: float = 1.0
    minutes: float = 45.0


def train_eyes(config: EyeTrainConfig) -> Path:
    """Train (or resume); returns the folder the EMA weights were saved to (``<output>/final``)."""
    torch.set_num_threads(1)
    cfg = config.model
    build_cache(config.data_dir, config.cache_dir, eye_width=cfg.eye_width, crop_size=cfg.crop_size, seed=config.seed)
    train = EyePairs.from_cache(config.cache_dir, TRAIN, cfg.crop_size, cfg.eye_width, augment=True)
    val = EyePairs.from_cache(config.cache_dir, "val", cfg.crop_size, cfg.eye_width, augment=False)
    return train_crop_network(config, EyeInteriorNetwork(cfg), train, val, condition="contour")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(prog="train-eyes", description="Train the eye-interior (closing eyelid) network.")
    parser.add_argument("--data-dir", default=EyeTrainConfig.data_dir)
    parser.add_argument("--cache-dir", default=EyeTrainConfig.cache_dir)
    parser.add_argument("--output-dir", default=EyeTrainConfig.output_dir)
    parser.add_argument("--minutes", type=float, default=EyeTrainConfig.minutes)
    parser.add_argument("--num-steps", type=int, default=EyeTrainConfig.num_steps)
    parser.add_argument("--batch-size", type=int, default=EyeTrainConfig.batch_size)
    parser.add_argument("--cache-only", action="store_true", help="build the pair cache and stop")
    parser.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "DEST"),
                        help="write a checkpoint's EMA weights to DEST (save_pretrained) and stop")
    args = parser.parse_args(argv)
    if args.export:
        print(export_checkpoint(*args.export, model=EyeInteriorConfig(), network_class=EyeInteriorNetwork))
        return 0
    config = EyeTrainConfig(data_dir=args.data_dir, cache_dir=args.cache_dir, output_dir=args.output_dir,
                            minutes=args.minutes, num_steps=args.num_steps, batch_size=args.batch_size)
    if args.cache_only:
        torch.set_num_threads(1)
        cfg = config.model
        files = build_cache(config.data_dir, config.cache_dir, eye_width=cfg.eye_width, crop_size=cfg.crop_size,
                            seed=config.seed)
        print(f"{len(files)} pair files in {config.cache_dir}")
        return 0
    print(train_eyes(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
