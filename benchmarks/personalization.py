"""Fast-personalization benchmark (MetaPortrait §4.3; issue "Fast personalization", part 5).

In one run, on one held-out person of a prepared data folder (a ``heldout_identity`` clip: its
first half is the personalization set, its second half the held-out evaluation frames):

* fine-tune the generator from (a) the plain base weights and (b) the meta-learned weights,
  with the same objective, optimiser, batch and time budget; every ``--eval-every`` steps
  measure the held-out error (L1 of the output against the real frame, source = the first
  personalization frame, driving = held-out frames' landmarks; also PSNR);
* as `metaportrait personalize` does, hold back every 8th personalization frame as a validation
  split and report the test error of the weights it would save (lowest validation error) at 30 s;
* print steps and seconds each start needs to reach a target error (the error the base start
  reaches at the end of its budget, unless ``--target`` is given), the speedup ratio (paper:
  3×), and the error after 30 s (paper: LPIPS 0.1485 -> 0.0827);
* optionally (``--fewshot DIR``) add rows for the few-shot family of Zakharov et al.:
  fine-tuning time and held-out error for T = 1, 8, 32 frames, FT and feed-forward (FF);
* save a plot (error vs seconds) next to ``--output``.

Usage: ``python benchmarks/personalization.py --data data/prepared --weights weights
[--seconds 60] [--output benchmarks/results/personalization]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def heldout_person(data_dir: Path, clip_index: int = 0):
    from metaportrait.person import PersonFrames

    manifest = json.loads((data_dir / "manifest.json").read_text())
    clips = [c for c in manifest["clips"] if c["split"] == "heldout_identity"]
    clip = clips[clip_index % len(clips)]
    base = data_dir / "clips" / clip["id"]
    frames = np.load(base / "frames_256.npy", mmap_mode="r")
    lms = np.load(base / "landmarks_256.npy", mmap_mode="r")
    valid = np.load(base / "valid.npy")
    idx = np.flatnonzero(valid)
    half = len(idx) // 2
    train_idx = idx[:half:max(1, half // 48)][:48]
    test_idx = idx[half::max(1, (len(idx) - half) // 24)][:24]
    train = PersonFrames(np.ascontiguousarray(frames[train_idx]), np.ascontiguousarray(lms[train_idx]))
    test = PersonFrames(np.ascontiguousarray(frames[test_idx]), np.ascontiguousarray(lms[test_idx]))
    return clip["id"], train, test


def run_curve(name, generator, objective, train, test, seconds: float, eval_every: int, lr: float, batch: int):
    """Fine-tune as `metaportrait personalize` does: every 8th personalization frame is held back as
    its validation split (never trained on). Each curve point is (steps, training seconds, test L1,
    test PSNR, validation L1); the test frames are the clip's later half."""
    from metaportrait.person import PersonFrames
    from metaportrait.training.personalize import PersonPairs, PersonalizeOptions, heldout_errors, split_validation
    from metaportrait.training.reptile import adapt

    fit_idx, val_idx = split_validation(len(train), PersonalizeOptions().validation_fraction)
    fit = PersonFrames(train.frames[fit_idx], train.landmarks[fit_idx])
    val = PersonFrames(train.frames[val_idx], train.landmarks[val_idx])
    pairs = PersonPairs(fit, seed=0)

    def point(done: int, secs: float) -> tuple:
        generator.eval()
        l1, psnr = heldout_errors(generator, objective, fit, test)
        v = heldout_errors(generator, objective, fit, val)[0]
        generator.train()
        return (done, secs, l1, psnr, v)

    curve = [point(0, 0.0)]
    clock = {"eval": 0.0}

    def loss_fn(model, step):
        return objective(model, pairs.batch(step, batch), stage="full").loss

    def callback(step, loss, elapsed):
        done = step + 1  # adapt() counts steps from 0; `done` optimisation steps have been taken
        if done % eval_every == 0:
            train_seconds = elapsed - clock["eval"]  # evaluation time is not training time
            t0 = time.perf_counter()
            curve.append(point(done, train_seconds))
            clock["eval"] += time.perf_counter() - t0
            _, _, l1, psnr, v = curve[-1]
            print(f"  {name}: step {done:4d}  {train_seconds:6.1f}s  held-out L1 {l1:.4f}  PSNR {psnr:.2f}  "
                  f"validation L1 {v:.4f}")
        return None

    generator.train()
    params = [p for p in generator.parameters() if p.requires_grad]
    adapt(generator, loss_fn, seconds=None, steps=10**9, lr=lr, params=params,
          callback=lambda s, loss, e: True if e - clock["eval"] >= seconds else callback(s, loss, e))
    return curve


def early_stopped(curve, seconds: float) -> tuple:
    """The curve point `personalize` would save with a `seconds` budget: lowest validation L1 so far."""
    return min((c for c in curve if c[1] <= seconds), key=lambda c: c[4])


def first_reach(curve, target: float):
    for step, sec, l1, *_ in curve:
        if l1 <= target:
            return step, sec
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--weights", default=str(REPO / "weights"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fewshot", default=None, help="few-shot pipeline folder (embedder/, generator/, discriminator/)")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "personalization")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from metaportrait.identity import load_identity_encoder
    from metaportrait.models.generator import MetaPortraitGenerator
    from metaportrait.training.personalize import PersonalizeOptions
    from metaportrait.training.objective import GeneratorObjective, ObjectiveConfig
    from metaportrait.weights import component_folder, read_model_index, resolve_pipeline_folder

    folder = resolve_pipeline_folder(args.weights, components=("base", "meta"))
    index = read_model_index(folder)
    clip, train, test = heldout_person(args.data)
    print(f"held-out person: {clip}; {len(train)} personalization frames, {len(test)} held-out frames; "
          f"budget {args.seconds:g}s per start; {args.threads} threads")
    objective = GeneratorObjective(load_identity_encoder(None), ObjectiveConfig(**PersonalizeOptions().objective))
    curves = {}
    starts = [("base (pretrained)", "generator")] + ([("meta-learned", "meta")] if index.get("meta") else [])
    for name, comp in starts:
        torch.manual_seed(0)
        gen = MetaPortraitGenerator.from_pretrained(component_folder(folder, index, comp))
        print(f"{name}:")
        curves[name] = run_curve(name, gen, objective, train, test, args.seconds, args.eval_every, args.lr, args.batch)

    base_curve = curves["base (pretrained)"]
    target = args.target if args.target is not None else min(c[2] for c in base_curve)
    print(f"\ntarget held-out L1: {target:.4f} ({'given' if args.target else 'best the base start reached'})\n")
    print("| start | L1 at 0 s | L1 at 30 s | PSNR at 30 s | saved at 30 s (early stopping): L1 / step | best L1 "
          "| steps to target | seconds to target |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, curve in curves.items():
        at30 = [c for c in curve if c[1] <= 30.0][-1]
        steps, secs = first_reach(curve, target)
        kept = early_stopped(curve, 30.0)
        rows[name] = {"l1_0": curve[0][2], "l1_30": at30[2], "psnr_30": at30[3], "best": min(c[2] for c in curve),
                      "l1_30_early_stopping": kept[2], "early_stopping_step": kept[0],
                      "steps_to_target": steps, "seconds_to_target": secs, "curve": curve}
        print(f"| {name} | {curve[0][2]:.4f} | {at30[2]:.4f} | {at30[3]:.2f} | {kept[2]:.4f} / {kept[0]} "
              f"| {rows[name]['best']:.4f} | "
              f"{steps if steps is not None else 'not reached'} | {f'{secs:.1f}' if secs is not None else '–'} |")
    if "meta-learned" in rows:
        b, m = rows["base (pretrained)"]["seconds_to_target"], rows["meta-learned"]["seconds_to_target"]
        ratio = (b / m) if (b and m) else None
        print(f"\nspeedup (base seconds / meta seconds to target): {f'{ratio:.2f}×' if ratio else 'n/a'} (paper: 3×)")
        rows["speedup"] = ratio

    if args.fewshot:
        rows["fewshot"] = fewshot_rows(Path(args.fewshot), train, test)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps({"clip": clip, "target": target, **rows}, indent=2, default=float))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([c[1] for c in curve], [c[2] for c in curve], marker="o", ms=3, label=name)
    ax.axhline(target, color="gray", ls="--", lw=1, label="target")
    ax.set_xlabel("seconds of fine-tuning (CPU, evaluation time excluded)")
    ax.set_ylabel("held-out L1")
    ax.set_title(f"personalization on an unseen person ({clip.split('/')[0]})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output.with_suffix(".png"), dpi=100)
    print(f"\nwrote {args.output.with_suffix('.json')} and {args.output.with_suffix('.png')}")


def fewshot_rows(folder: Path, train, test) -> list[dict]:
    """Few-shot family (Zakharov et al.): FT and FF at T = 1, 8, 32: time and held-out L1."""
    from metaportrait.face import draw_landmark_image
    from metaportrait.fewshot_pipeline import load_fewshot_folder
    from metaportrait.training.fewshot_finetune import fewshot_loss_weights
    from metaportrait.training.fewshot import finetune_fewshot

    weights = fewshot_loss_weights(folder)
    emb, gen, disc = load_fewshot_folder(folder)
    size = gen.config.image_size

    def tensors(person, idx):
        import cv2

        from metaportrait.tensors import to_tensor

        frames = np.stack([cv2.resize(person.frames[i], (size, size), interpolation=cv2.INTER_AREA) for i in idx])
        scale = size / person.frames.shape[1]
        lms = [draw_landmark_image(person.landmarks[i] * scale, size) for i in idx]
        return to_tensor(frames), to_tensor(lms)

    test_f, test_y = tensors(test, range(len(test)))
    out = []
    print("\n| few-shot (Zakharov) | T | fine-tune s | held-out L1 |")
    print("|---|---|---|---|")
    for ff in (True, False):
        for t in (1, 8, 32):
            idx = np.linspace(0, len(train) - 1, t).round().astype(int)
            f, y = tensors(train, idx)
            res = finetune_fewshot(emb, gen, disc, f, y, steps=0 if ff else 20, feed_forward=ff, evaluate=False,
                                   loss_weights=weights)
            with torch.no_grad():
                pred = res.generator(test_y)
            l1 = float((pred - test_f).abs().div(2).mean())
            secs = res.embed_seconds + res.finetune_seconds
            name = "FF" if ff else "FT (20 steps)"
            out.append({"variant": name, "T": t, "seconds": secs, "heldout_l1": l1})
            print(f"| {name} | {t} | {secs:.2f} | {l1:.4f} |")
    return out


if __name__ == "__main__":
    main()
