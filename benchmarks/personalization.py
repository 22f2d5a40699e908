"""Fast-personalization benchmark (MetaPortrait §4.3; issue "Fast personalization", part 5).

In one run, on one held-out person (``--clip``: an index or part of a clip id) or on every held-out
person (``--clip all``, the default; then the median and the spread over people are printed) of a
prepared data folder (a ``heldout_identity`` clip: its first half is the personalization set, its
second half the held-out evaluation frames):

* fine-tune the generator from (a) the plain base weights and (b) the meta-learned weights,
  with the same objective, optimiser, batch and time budget; every ``--eval-every`` steps
  measure the held-out error (L1 of the output against the real frame, source = the first
  personalization frame, driving = held-out frames' landmarks; also PSNR, the face detail ratio
  and the mouth-box L1 / PSNR of the frames whose mouth is open), and always once more at the
  end of the budget (so the point "at 30 s" is measured at 30 s even when fewer than
  ``--eval-every`` steps fit);
* as `metaportrait personalize` does, hold back every 8th personalization frame as a validation
  split and report the test error of the weights it would save (lowest validation error) at 30 s;
* print steps and seconds each start needs to reach a target error (the error the base start
  reaches at the end of its budget, unless ``--target`` is given), the speedup ratio (paper:
  3×), and the error after 30 s (paper: LPIPS 0.1485 -> 0.0827);
* optionally (``--mouth``) personalize the mouth-interior network on the person's own frames for
  the same budget and measure the render path's mouth box (head mesh warp; + the shipped mouth
  network; + the personalized one) on the held-out frames whose mouth is open;
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


def heldout_clips(data_dir: Path, choice: str = "all") -> list[dict]:
    """The held-out-identity clips of the manifest: all, the ``choice``-th, or those whose id
    contains ``choice``."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    clips = [c for c in manifest["clips"] if c["split"] == "heldout_identity"]
    if not clips:
        raise SystemExit(f"{data_dir}: no heldout_identity clips")
    if choice == "all":
        return clips
    if choice.isdigit():
        if int(choice) >= len(clips):
            raise SystemExit(f"--clip {choice}: only {len(clips)} held-out clips")
        return [clips[int(choice)]]
    chosen = [c for c in clips if choice in c["id"]]
    if not chosen:
        raise SystemExit(f"--clip {choice!r} matches none of {[c['id'] for c in clips]}")
    return chosen


def heldout_person(data_dir: Path, clip: dict):
    from metaportrait.person import PersonFrames

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


def test_scores(generator, objective, fit, test, batch_size: int = 8) -> dict[str, float]:
    """Held-out L1 and PSNR (as `personalize` measures them) and, from the same outputs, the face
    detail ratio and the mouth-box L1 and PSNR over the frames whose true mouth is open."""
    from metaportrait.evaluation.reenactment import MOUTH_OPEN, detail_ratio, mouth_box, mouth_opening, mouth_scores
    from metaportrait.training.personalize import heldout_errors
    from metaportrait.tensors import to_uint8
    from metaportrait.training.datasets import collate_pairs, make_pair

    l1, psnr = heldout_errors(generator, objective, fit, test, batch_size)
    details, mouth_l1, mouth_psnr = [], [], []
    for i in range(0, len(test), batch_size):
        js = range(i, min(i + batch_size, len(test)))
        batch = collate_pairs([make_pair(fit.frames[0], test.frames[j], fit.landmarks[0], test.landmarks[j]) for j in js])
        out = to_uint8(objective(generator, batch, stage="full").output.image.float().clamp(-1, 1))
        for img, j in zip(out, js):
            gt, lm = test.frames[j], test.landmarks[j]
            details.append(detail_ratio(img, gt, lm))
            if mouth_opening(lm) > MOUTH_OPEN:
                x0, y0, x1, y1 = mouth_box(lm, gt.shape)
                mouth_l1.append(float(np.abs(img[y0:y1, x0:x1].astype(np.float32) - gt[y0:y1, x0:x1]).mean() / 255))
                mouth_psnr.append(mouth_scores(img, gt, lm)["mouth_psnr"])
    nan = float("nan")
    return {"l1": l1, "psnr": psnr, "detail": float(np.mean(details)),
            "mouth_l1": float(np.mean(mouth_l1)) if mouth_l1 else nan,
            "mouth_psnr": float(np.mean(mouth_psnr)) if mouth_psnr else nan}


def run_curve(name, generator, objective, train, test, seconds: float, eval_every: int, lr: float, batch: int):
    """Fine-tune as `metaportrait personalize` does: every 8th personalization frame is held back as
    its validation split (never trained on). Each curve point is (steps, training seconds, test L1,
    test PSNR, validation L1, test scores dict); the test frames are the clip's later half. A point
    is measured every ``eval_every`` steps and always at the end of the budget."""
    from metaportrait.person import PersonFrames
    from metaportrait.training.personalize import PersonPairs, PersonalizeOptions, heldout_errors, split_validation
    from metaportrait.training.reptile import adapt

    fit_idx, val_idx = split_validation(len(train), PersonalizeOptions().validation_fraction)
    fit = PersonFrames(train.frames[fit_idx], train.landmarks[fit_idx])
    val = PersonFrames(train.frames[val_idx], train.landmarks[val_idx])
    pairs = PersonPairs(fit, seed=0)

    def point(done: int, secs: float) -> tuple:
        generator.eval()
        scores = test_scores(generator, objective, fit, test)
        v = heldout_errors(generator, objective, fit, val)[0]
        generator.train()
        return (done, secs, scores["l1"], scores["psnr"], v, scores)

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
            report(curve[-1])
        return None

    def report(c: tuple) -> None:
        done, secs, l1, psnr, v, sc = c
        print(f"  {name}: step {done:4d}  {secs:6.1f}s  held-out L1 {l1:.4f}  PSNR {psnr:.2f}  "
              f"detail {sc['detail']:.3f}  mouth L1 {sc['mouth_l1']:.4f}  validation L1 {v:.4f}")

    def stop_or_measure(step: int, loss: float, elapsed: float):
        if elapsed - clock["eval"] >= seconds:
            return True
        return callback(step, loss, elapsed)

    generator.train()
    params = [p for p in generator.parameters() if p.requires_grad]
    result = adapt(generator, loss_fn, seconds=None, steps=10**9, lr=lr, params=params, callback=stop_or_measure)
    done = int(result.steps)
    if curve[-1][0] != done:  # the budget ran out between two measurements: measure where it ended
        curve.append(point(done, result.seconds - clock["eval"]))
        report(curve[-1])
    return curve


def early_stopped(curve, seconds: float) -> tuple:
    """The curve point `personalize` would save with a `seconds` budget: lowest validation L1 so far."""
    return min((c for c in curve if c[1] <= seconds), key=lambda c: c[4])


def first_reach(curve, target: float):
    for step, sec, l1, *_ in curve:
        if l1 <= target:
            return step, sec
    return None, None


def person_rows(curves: dict, budget: float, target: float) -> dict:
    rows = {}
    for name, curve in curves.items():
        end = curve[-1]  # measured when the budget ran out
        steps, secs = first_reach(curve, target)
        kept = early_stopped(curve, float("inf"))
        rows[name] = {"l1_0": curve[0][2], "l1_budget": end[2], "psnr_budget": end[3], "psnr_0": curve[0][3],
                      "detail_budget": end[5]["detail"], "mouth_l1_budget": end[5]["mouth_l1"],
                      "mouth_l1_0": curve[0][5]["mouth_l1"], "mouth_psnr_budget": end[5]["mouth_psnr"],
                      "steps_budget": end[0], "seconds_budget": end[1], "best": min(c[2] for c in curve),
                      "l1_budget_early_stopping": kept[2], "early_stopping_step": kept[0],
                      "steps_to_target": steps, "seconds_to_target": secs, "curve": curve}
    return rows


def print_person(rows: dict, budget: float) -> None:
    print(f"| start | L1 at 0 s | L1 at {budget:g} s (steps, s) | PSNR 0 s → {budget:g} s | detail at {budget:g} s "
          f"| mouth-box L1 0 s → {budget:g} s | saved (early stopping): L1 / step | steps to target | seconds to target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        if not isinstance(r, dict) or "l1_0" not in r:
            continue
        secs = "–" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        print(f"| {name} | {r['l1_0']:.4f} | {r['l1_budget']:.4f} ({r['steps_budget']}, {r['seconds_budget']:.1f}) "
              f"| {r['psnr_0']:.2f} → {r['psnr_budget']:.2f} | {r['detail_budget']:.3f} "
              f"| {r['mouth_l1_0']:.4f} → {r['mouth_l1_budget']:.4f} "
              f"| {r['l1_budget_early_stopping']:.4f} / {r['early_stopping_step']} "
              f"| {r['steps_to_target'] if r['steps_to_target'] is not None else 'not reached'} "
              f"| {secs} |")


def print_summary(people: dict, budget: float) -> dict:
    """Median and spread (min–max) over people of each start's numbers, and the cut of each start's
    error at the budget against the plain start at 0 s."""
    starts = [k for k, v in next(iter(people.values()))["rows"].items() if isinstance(v, dict) and "l1_0" in v]
    keys = ["l1_0", "l1_budget", "psnr_budget", "detail_budget", "mouth_l1_budget"]
    summary = {}
    print(f"\nover {len(people)} held-out people: median [min – max]\n")
    print(f"| start | L1 at 0 s | L1 at {budget:g} s | PSNR at {budget:g} s | detail at {budget:g} s "
          f"| mouth-box L1 at {budget:g} s | cut vs plain start at 0 s |")
    print("|---|---|---|---|---|---|---|")
    for name in starts:
        vals = {k: np.array([p["rows"][name][k] for p in people.values()], np.float64) for k in keys}
        plain0 = np.array([p["rows"]["base (pretrained)"]["l1_0"] for p in people.values()])
        vals["cut"] = 1.0 - vals["l1_budget"] / plain0
        summary[name] = {k: {"median": float(np.nanmedian(v)), "min": float(np.nanmin(v)), "max": float(np.nanmax(v))}
                         for k, v in vals.items()}

        def cell(k, p=4):
            m = summary[name][k]
            return f"{m['median']:.{p}f} [{m['min']:.{p}f} – {m['max']:.{p}f}]"

        print(f"| {name} | {cell('l1_0')} | {cell('l1_budget')} | {cell('psnr_budget', 2)} | {cell('detail_budget', 3)} "
              f"| {cell('mouth_l1_budget')} | {cell('cut', 3)} |")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--weights", default=str(REPO / "weights"))
    ap.add_argument("--clip", default="all", help="'all' held-out people (default), an index, or part of a clip id")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fewshot", default=None, help="few-shot pipeline folder (embedder/, generator/, discriminator/)")
    ap.add_argument("--mouth", action="store_true", help="also personalize the mouth-interior network and measure it")
    ap.add_argument("--generator", action=argparse.BooleanOptionalAction, default=True,
                    help="run the generator's personalization curves (--no-generator: only --mouth)")
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
    objective = GeneratorObjective(load_identity_encoder(None), ObjectiveConfig(**PersonalizeOptions().objective))
    starts = [("base (pretrained)", "generator")] + ([("meta-learned", "meta")] if index.get("meta") else [])
    people: dict[str, dict] = {}
    all_curves: dict[str, dict] = {}
    for clip_rec in heldout_clips(args.data, args.clip):
        clip, train, test = heldout_person(args.data, clip_rec)
        print(f"\nheld-out person: {clip}; {len(train)} personalization frames, {len(test)} held-out frames; "
              f"budget {args.seconds:g}s per start; {args.threads} threads")
        curves, rows, target = {}, {}, None
        for name, comp in starts if args.generator else ():
            torch.manual_seed(0)
            gen = MetaPortraitGenerator.from_pretrained(component_folder(folder, index, comp))
            print(f"{name}:")
            curves[name] = run_curve(name, gen, objective, train, test, args.seconds, args.eval_every, args.lr, args.batch)
        if curves:
            target = args.target if args.target is not None else min(c[2] for c in curves["base (pretrained)"])
            print(f"\ntarget held-out L1: {target:.4f} ({'given' if args.target else 'best the base start reached'})\n")
            rows = person_rows(curves, args.seconds, target)
            print_person(rows, args.seconds)
        if "meta-learned" in rows:
            b, m = rows["base (pretrained)"]["seconds_to_target"], rows["meta-learned"]["seconds_to_target"]
            ratio = (b / m) if (b and m) else None
            print(f"\nspeedup (base seconds / meta seconds to target): {f'{ratio:.2f}×' if ratio else 'n/a'} (paper: 3×)")
            rows["speedup"] = ratio
        if args.fewshot:
            rows["fewshot"] = fewshot_rows(Path(args.fewshot), train, test)
        if args.mouth:
            rows["mouth"] = mouth_rows(args.weights, train, test, args.seconds)
        people[clip] = {"target": target, "rows": rows}
        all_curves[clip] = curves
    summary = print_summary(people, args.seconds) if len(people) > 1 and args.generator else None
    if args.mouth and len(people) > 1:
        print(f"\nmouth box of the render path over {len(people)} held-out people: median [min – max]\n")
        print("| render path | PSNR | L1 | detail |")
        print("|---|---|---|---|")
        for name in ("head mesh warp", "+ mouth network", "+ personalized mouth"):
            cells = []
            for k, p in (("mouth_psnr", 2), ("mouth_l1", 4), ("mouth_detail", 3)):
                v = np.array([q["rows"]["mouth"][name][k] for q in people.values()])
                cells.append(f"{np.nanmedian(v):.{p}f} [{np.nanmin(v):.{p}f} – {np.nanmax(v):.{p}f}]")
            print(f"| {name} | " + " | ".join(cells) + " |")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(
        {"budget_seconds": args.seconds, "people": people, "summary": summary}, indent=2, default=float))
    if not all_curves or not any(all_curves.values()):
        print(f"\nwrote {args.output.with_suffix('.json')}")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_curves), figsize=(5 * len(all_curves), 4), squeeze=False)
    for ax, (clip, curves) in zip(axes[0], all_curves.items()):
        for name, curve in curves.items():
            ax.plot([c[1] for c in curve], [c[2] for c in curve], marker="o", ms=3, label=name)
        ax.axhline(people[clip]["target"], color="gray", ls="--", lw=1, label="target")
        ax.set_xlabel("seconds of fine-tuning (CPU, evaluation time excluded)")
        ax.set_ylabel("held-out L1")
        ax.set_title(clip.split("/")[0])
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.output.with_suffix(".png"), dpi=100)
    print(f"\nwrote {args.output.with_suffix('.json')} and {args.output.with_suffix('.png')}")


def mouth_rows(weights: str, train, test, seconds: float) -> dict:
    """Mouth-box PSNR / L1 / detail of the render path on the held-out frames with an open mouth:
    the head mesh warp alone, with the shipped mouth network, and with that network fine-tuned on
    the person's own frames for ``seconds`` (pair building included)."""
    import copy

    from metaportrait.evaluation.reenactment import MOUTH_OPEN, head_mesh_warp, mouth_box, mouth_opening, mouth_scores
    from metaportrait.mouth import MouthFiller
    from metaportrait.pipeline import MetaPortraitPipeline
    from metaportrait.training.train_mouth import finetune_mouth

    pipe = MetaPortraitPipeline.from_pretrained(weights, device="cpu")
    if pipe.mouth is None:
        raise SystemExit("--mouth: the weights folder has no mouth_interior component")
    source = pipe.source_from_crop(np.ascontiguousarray(train.frames[0]), np.asarray(train.landmarks[0]))
    idx = [j for j in range(len(test)) if mouth_opening(test.landmarks[j]) > MOUTH_OPEN]
    targets = [np.asarray(test.landmarks[j], np.float32) for j in idx]
    warped = head_mesh_warp(pipe, source, targets)
    torch.manual_seed(0)
    net = copy.deepcopy(pipe.mouth.network).float()
    t0 = time.perf_counter()
    info = finetune_mouth(net, np.ascontiguousarray(train.frames), np.asarray(train.landmarks), seconds=seconds)
    info["wall_seconds"] = time.perf_counter() - t0
    out = {"frames": len(idx), "finetune": info}
    for name, filler in (("head mesh warp", None), ("+ mouth network", pipe.mouth), ("+ personalized mouth", MouthFiller(net))):
        vals = {"mouth_psnr": [], "mouth_detail": [], "mouth_l1": []}
        for img, t, j in zip(warped, targets, idx):
            if filler is not None:
                img = filler(img, t, source.face, source.landmarks)
            gt = test.frames[j]
            sc = mouth_scores(img, gt, t)
            x0, y0, x1, y1 = mouth_box(t, gt.shape)
            vals["mouth_psnr"].append(sc["mouth_psnr"])
            vals["mouth_detail"].append(sc["mouth_detail"])
            vals["mouth_l1"].append(float(np.abs(img[y0:y1, x0:x1].astype(np.float32) - gt[y0:y1, x0:x1]).mean() / 255))
        out[name] = {k: float(np.mean(v)) if v else float("nan") for k, v in vals.items()}
    print(f"\n| render path, mouth box ({len(idx)} open-mouth held-out frames) | PSNR | L1 | detail |")
    print("|---|---|---|---|")
    for name in ("head mesh warp", "+ mouth network", "+ personalized mouth"):
        r = out[name]
        print(f"| {name} | {r['mouth_psnr']:.2f} | {r['mouth_l1']:.4f} | {r['mouth_detail']:.3f} |")
    print(f"(mouth personalization: {info['steps']:.0f} steps on {info['pairs']:.0f} pairs in {info['seconds']:.1f} s)")
    return out


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
