"""Training of the audio-to-motion model (:mod:`metaportrait.models.audio_to_motion`) on talking clips.

``python -m metaportrait.training.train_speech --data SPEECH --output weights/audio`` reads the
``<identity>.npz`` files of :mod:`metaportrait.training.speech_data` and

1. turns each frame's landmarks into a canonical lower-face displacement: the frame in its own
   canonical frame (:mod:`metaportrait.face.canonical`) minus the clip's resting face (the mean of
   its frames with the mouth closed by :func:`~metaportrait.face.motion.close_mouth`), weighted to
   the mouth, jaw and cheeks (:func:`~metaportrait.face.canonical.lower_face_weights`);
2. fits the PCA basis of those displacements (training people only) into the model's buffers;
3. trains the network on log-mel windows (and with ``--visemes`` the one-hot visemes of
   :mod:`metaportrait.visemes`; the same :class:`~metaportrait.speak.SpeechFeatures`
   the inference uses) to predict the displacement (MSE in canonical units), with random gain
   (±6 dB) and noise augmentation, on the first 80 % of each training clip; the last 20 % choose
   the checkpoint (best mouth-opening correlation, each clip its own r, averaged). ``--fold k``
   holds out the k-th fifth of every clip instead (5-fold cross-validation in time, for choosing a
   recipe and its step count: ``benchmarks/speech_cv.py``); ``--validation 0 --keep-step S`` then
   trains on every frame and keeps step S. The held-out people are never seen;
4. measures the statistics of the life beyond the lips on the training clips (head-rotation
   spread and correlation time, blink rate, brow-raise spread) into the config;
5. writes ``config.json`` + ``model.safetensors`` and a training record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metaportrait.evaluation.speech import blink_count, pearson
from metaportrait.face.canonical import head_pose, lower_face_weights, to_canonical
from metaportrait.face.controls import LEFT_BROW, LIPS, RIGHT_BROW
from metaportrait.face.motion import STABLE_POINTS, _umeyama, close_mouth
from metaportrait.models.audio_to_motion import AudioToMotion, AudioToMotionConfig
from metaportrait.speak import SpeechFeatures
from metaportrait.visemes import NUM_VISEMES, viseme_track

HELDOUT = ("fi_RGuHfwIRKpA", "fi_YwsVpkumbJc", "fi__ztmNiy8D3c")


def frontalise(lm3: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``T×478×2``: each frame's 3-D landmarks rotated onto the clip's first valid frame by their
    stable points (3-D similarity), so the head's yaw and pitch do not show as mouth motion."""
    ref = lm3[np.flatnonzero(valid)[0]].astype(np.float64)
    out = np.empty(lm3.shape[:2] + (2,), np.float32)
    for i, x in enumerate(lm3.astype(np.float64)):
        s, r, t = _umeyama(x[list(STABLE_POINTS)], ref[list(STABLE_POINTS)]) if valid[i] else (1.0, np.eye(3), 0.0)
        out[i] = (s * x @ r.T + t)[:, :2]
    return out


def clip_targets(lm: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``T×478×2`` canonical lower-face displacements from the clip's resting face (``lm``: the
    frontalised landmarks)."""
    canon = np.stack([to_canonical(x) for x in lm])
    closed = np.stack([to_canonical(close_mouth(x)) for x in lm[valid]])
    rest = closed.mean(0)
    w = lower_face_weights(rest)
    return ((canon - rest) * w[None, :, None]).astype(np.float32)


def clip_features(model: AudioToMotion, wave: np.ndarray, reference_db: float, fps: float, n: int) -> np.ndarray:
    visemes = viseme_track([wave]) if model.config.num_visemes else None
    stream = SpeechFeatures(model, iter([wave]), reference_db, fps, threshold_db=-200.0, visemes=visemes)
    return stream.windows(0, n)[0].numpy()


def mouth_gap(displacement: torch.Tensor) -> torch.Tensor:
    """Inner-lip gap (lower minus upper lip, 14 − 13) of canonical displacements ``B×N×2``."""
    return displacement[:, 14, 1] - displacement[:, 13, 1]


def per_clip_r(gap_p: np.ndarray, gap_t: np.ndarray, clip: np.ndarray) -> float:
    """Mean over clips of the Pearson r of predicted and true mouth gap (each clip its own r, as
    the evaluation on unseen people has it; a pooled r would also reward per-speaker offsets)."""
    rs = [pearson(gap_p[clip == c], gap_t[clip == c]) for c in np.unique(clip)]
    return float(np.nanmean(rs))


def life_statistics(clips: list[dict]) -> dict:
    """Head-rotation spread and correlation time, blink rate and brow spread of the training clips."""
    stds, taus, brows = [], [], []
    blinks, seconds = 0, 0.0
    for c in clips:
        lm, lm3, v, fps = c["landmarks"][c["valid"]], c["landmarks_3d"][c["valid"]], c["valid"], c["fps"]
        poses = np.stack([head_pose(x, lm3[0]) for x in lm3])
        poses = poses - poses.mean(0)
        stds.append(poses.std(0))
        for k in range(3):
            x = poses[:, k]
            ac = np.correlate(x, x, "full")[len(x) - 1:]
            ac = ac / max(ac[0], 1e-9)
            below = np.flatnonzero(ac < np.exp(-1))
            taus.append((below[0] if len(below) else len(x)) / fps)
        blinks += blink_count(lm, fps)
        seconds += v.sum() / fps
        brow = np.array([np.mean(x[list(LEFT_BROW) + list(RIGHT_BROW), 1]) - np.mean(x[[33, 133, 362, 263], 1]) for x in lm])
        width = np.array([np.linalg.norm(x[133] - x[33]) for x in lm])
        brows.append(float(np.std(brow / (0.35 * width))))
    return {"head_std_deg": tuple(float(v) for v in np.median(np.stack(stds), 0)),
            "head_time_constant": float(np.median(taus)), "blink_rate": float(blinks / seconds),
            "brow_std": float(np.median(brows))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train the audio-to-motion model")
    p.add_argument("--data", required=True, help="folder of <identity>.npz (python -m metaportrait.training.speech_data)")
    p.add_argument("--output", required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--n-mels", type=int, default=64)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--context", type=int, default=24)
    p.add_argument("--freq-mask", type=int, default=0, help="SpecAugment: mask up to this many mel bands per sample")
    p.add_argument("--visemes", action="store_true", help="one-hot visemes (metaportrait.visemes) beside the mels")
    p.add_argument("--vtlp", type=float, default=0.0, help="augmentation: warp the mel axis by a random "
                   "factor in 1 ± vtlp (a speaker's vocal tract length)")
    p.add_argument("--viseme-noise", type=float, default=0.0, help="augmentation: fraction of viseme columns "
                   "given a random class")
    p.add_argument("--mouth-loss", type=float, default=0.0, help="weight of an extra loss on the inner-lip gap")
    p.add_argument("--validation", type=float, default=0.2, help="last fraction of each training clip held out in "
                   "time: chooses the checkpoint (0: train on everything for --steps, keep the last step)")
    p.add_argument("--fold", type=int, default=None, help="cross-validation: hold out the fold-th block of "
                   "--validation of each clip instead of the last (recipe choice; the shipped model uses the last)")
    p.add_argument("--cache", default=None, help="folder keeping each clip's features and targets between runs")
    p.add_argument("--keep-step", type=int, default=None, help="keep the model of this step (chosen by "
                   "cross-validation) instead of the best on the validation frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.fold_count = int(round(1.0 / args.validation)) if args.validation > 0 else 1
    args.fold = args.fold_count - 1 if args.fold is None else args.fold
    if args.keep_step is not None and not 1 <= args.keep_step <= args.steps:
        raise SystemExit(f"--keep-step must be in [1, {args.steps}]")
    if not 0 <= args.fold < args.fold_count:
        raise SystemExit(f"--fold must be in [0, {args.fold_count - 1}] for --validation {args.validation}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    clips = []
    for f in sorted(Path(args.data).glob("*.npz")):
        d = np.load(f)
        if f.stem in HELDOUT or str(d["split"]) != "train":
            continue
        clips.append({k: d[k] for k in d.files} | {"name": f.stem, "fps": float(d["fps"])})
    if not clips:
        raise SystemExit(f"no training clips in {args.data}")
    cache = Path(args.cache) if args.cache else None
    stats_file = cache / "life_statistics.json" if cache else None
    if stats_file is not None and stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        stats["head_std_deg"] = tuple(stats["head_std_deg"])
    else:
        stats = life_statistics(clips)
        if stats_file is not None:
            cache.mkdir(parents=True, exist_ok=True)
            stats_file.write_text(json.dumps(stats))
    config = AudioToMotionConfig(dropout=args.dropout, n_mels=args.n_mels, hidden_channels=args.hidden,
                                 context_frames=args.context,
                                 num_visemes=NUM_VISEMES if args.visemes else 0, **stats)
    model = AudioToMotion(config)

    xs, ys, part, owner = [], [], [], []
    for ci, c in enumerate(clips):
        valid = c["valid"]
        n = len(c["landmarks"])
        stored = cache / f"{c['name']}_m{config.n_mels}_c{config.context_frames}_v{config.num_visemes}.npz" if cache else None
        if stored is not None and stored.is_file():
            z = np.load(stored)
            x, y = z["x"], z["y"]
        else:
            y = clip_targets(frontalise(c["landmarks_3d"], valid), valid)
            x = clip_features(model, c["wave"], float(c["reference_db"]), c["fps"], n)
            if stored is not None:
                np.savez(stored, x=x, y=y)
        # validation: the fold-th block of `validation` of the clip's time (default: the last block)
        v1 = int(round(n * (1.0 - args.validation * (args.fold_count - 1 - args.fold))))
        v0 = v1 - int(round(n * args.validation))
        for t in np.flatnonzero(valid):
            xs.append(x[t])
            ys.append(y[t])
            part.append(1 if v0 <= t < v1 else 0)
            owner.append(ci)
    x_all = torch.from_numpy(np.stack(xs))
    y_all = torch.from_numpy(np.stack(ys))
    part, owner = np.asarray(part), np.asarray(owner)
    train_idx, val_idx = np.flatnonzero(part == 0), np.flatnonzero(part == 1)

    # PCA of the training displacements -> the model's motion basis
    flat = y_all[train_idx].reshape(len(train_idx), -1).double()
    mean = flat.mean(0)
    _u, s, vt = torch.linalg.svd(flat - mean, full_matrices=False)
    k = config.num_coefficients
    explained = float((s[:k] ** 2).sum() / (s**2).sum())
    with torch.no_grad():
        model.mean.copy_(mean.view(config.num_points, 2).float())
        model.components.copy_(vt[:k].view(k, config.num_points, 2).float())

    opt = torch.optim.AdamW([p for n_, p in model.named_parameters()], lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)

    point_weight = torch.ones(config.num_points)
    point_weight[list(LIPS)] = 5.0  # the lips matter most (what a viewer reads speech from)

    def loss_of(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = ((pred - target).square().sum(-1) * point_weight).mean() * 100.0
        if args.mouth_loss:
            loss = loss + args.mouth_loss * (mouth_gap(pred) - mouth_gap(target)).square().mean() * 100.0
        return loss

    def validate() -> tuple[float, float, float]:
        """Validation loss, per-clip mean and pooled mouth-gap r on the held-out-in-time frames."""
        if not len(val_idx):
            return float("nan"), float("nan"), float("nan")
        model.eval()
        with torch.no_grad():
            pred = model(x_all[val_idx]).displacement
            loss = float(loss_of(pred, y_all[val_idx]))
        model.train()
        gap_p, gap_t = mouth_gap(pred).numpy(), mouth_gap(y_all[val_idx]).numpy()
        return loss, per_clip_r(gap_p, gap_t, owner[val_idx]), pearson(gap_p, gap_t)

    best = (float("inf"), -1.0, 0)
    best_state = None
    log = []
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.choice(train_idx, args.batch_size))
        x, vis = x_all[idx][:, :config.n_mels], x_all[idx][:, config.n_mels:]
        if args.vtlp:  # vocal tract length perturbation (Jaitly & Hinton 2013): warp the mel axis by 1 ± vtlp
            alpha = 1.0 + torch.empty(len(idx), 1).uniform_(-args.vtlp, args.vtlp)
            pos = (torch.arange(config.n_mels)[None].float() * alpha).clamp(0, config.n_mels - 1)  # B×M
            lo = pos.floor().long()
            hi = (lo + 1).clamp(max=config.n_mels - 1)
            frac = (pos - lo)[:, :, None]
            x = torch.gather(x, 1, lo[:, :, None].expand_as(x)) * (1 - frac) + \
                torch.gather(x, 1, hi[:, :, None].expand_as(x)) * frac
        x = x + torch.empty(len(idx), 1, 1).uniform_(-0.3, 0.3)  # ±6 dB gain
        x = torch.maximum(x, torch.randn(len(idx), 1, 1) * 0.3 - 2.5 + torch.randn_like(x) * 0.1)  # noise floor
        if args.freq_mask:  # SpecAugment (Park et al. 2019): a random band of mels set to the mean
            width = torch.randint(0, args.freq_mask + 1, (len(idx),))
            start = (torch.rand(len(idx)) * (config.n_mels - width)).long()
            band = torch.arange(config.n_mels)[None]
            mask = (band >= start[:, None]) & (band < (start + width)[:, None])
            x = torch.where(mask[:, :, None], x.mean(dim=(1, 2), keepdim=True), x)
        if vis.shape[1] and args.viseme_noise:  # recognition errors: some columns get a random class
            wrong = torch.rand(len(idx), 1, vis.shape[2]) < args.viseme_noise
            other = torch.nn.functional.one_hot(torch.randint(0, vis.shape[1], (len(idx), vis.shape[2])), vis.shape[1])
            vis = torch.where(wrong, other.permute(0, 2, 1).float(), vis)
        x = torch.cat([x, vis], 1)
        loss = loss_of(model(x).displacement, y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step in (args.steps, args.keep_step):
            val, r, pooled = validate()
            log.append({"step": step, "train_loss": round(loss.item(), 4), "val_loss": round(val, 4),
                        "val_mouth_r": round(r, 3), "val_mouth_r_pooled": round(pooled, 3)})
            print(json.dumps(log[-1]), flush=True)
            fixed = args.keep_step or (args.steps if not len(val_idx) else None)
            if step == fixed:  # the step chosen beforehand (by cross-validation), or the last one
                best = (val, r, step)
                best_state = {k_: v.clone() for k_, v in model.state_dict().items()}
            elif fixed is None and r > best[1]:  # the checkpoint whose mouth opening follows the held-out-in-time frames best
                best = (val, r, step)
                best_state = {k_: v.clone() for k_, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    out = Path(args.output)
    model.save_pretrained(out)
    record = {
        "data": [c["name"] for c in clips], "heldout_people": list(HELDOUT),
        "frames": {"train": int(len(train_idx)), "validation": int(len(val_idx))},
        "pca_explained_variance": round(explained, 4), "life_statistics": stats,
        "steps": args.steps, "n_mels": args.n_mels, "hidden": args.hidden, "context": args.context,
        "freq_mask": args.freq_mask, "visemes": args.visemes, "viseme_noise": args.viseme_noise, "vtlp": args.vtlp, "mouth_loss": args.mouth_loss,
        "validation_fraction": args.validation, "fold": args.fold, "keep_step": args.keep_step, "weight_decay": args.weight_decay, "dropout": args.dropout, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "best": {"step": best[2], "val_loss": round(best[0], 4), "val_mouth_r": round(best[1], 3)},
        "threads": args.threads, "seconds": round(time.perf_counter() - t_start, 1), "log": log,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k_: v for k_, v in record.items() if k_ != "log"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
