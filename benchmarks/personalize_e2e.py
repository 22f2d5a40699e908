"""What `metaportrait personalize` (and the app's Personalize tab) gives a user, end to end, on every
person the model never saw.

For each held-out person of a prepared data set: `personalize()` runs exactly as the CLI does
(the start chosen on the person's held-back frames, the generator and the mouth-interior network
fine-tuned within the budget, early stopping), on 48 frames from the first half of the clip; then
the pipeline loaded with that adapter and the shipped pipeline (the baseline, same run) render the
clip's 24 later frames from its first frame, through the render path a user gets. Reported: PSNR /
L1 / detail ratio over the face crop, and the mouth-box PSNR over the later frames whose mouth is
open, each with the ratio to the baseline.

    PYTHONPATH=. python benchmarks/personalize_e2e.py --data prepared/ --seconds 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def render_scores(pipe, train, test) -> dict[str, float]:
    from metaportrait.evaluation.reenactment import MOUTH_OPEN, detail_ratio, mouth_opening, mouth_scores, psnr

    source = pipe.source_from_crop(np.ascontiguousarray(train.frames[0]), np.asarray(train.landmarks[0]))
    targets = [np.asarray(lm, np.float32) for lm in test.landmarks]
    out = pipe.generate(source, targets)
    l1, ps, det, mouth = [], [], [], []
    for img, gt, lm in zip(out, test.frames, targets):
        l1.append(float(np.abs(img.astype(np.float32) - gt).mean() / 255))
        ps.append(psnr(img, gt))
        det.append(detail_ratio(img, gt, lm))
        if mouth_opening(lm) > MOUTH_OPEN:
            mouth.append(mouth_scores(img, gt, lm)["mouth_psnr"])
    return {"l1": float(np.mean(l1)), "psnr": float(np.mean(ps)), "detail": float(np.mean(det)),
            "mouth_psnr": float(np.mean(mouth)) if mouth else float("nan"), "mouth_frames": len(mouth)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--weights", default=None, help="pipeline folder (default: the embedded weights)")
    ap.add_argument("--clip", default="all", help="all, an index or part of an id of the held-out clips")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, default=None, help="write OUTPUT.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from personalization import heldout_clips, heldout_person

    from metaportrait.pipeline import MetaPortraitPipeline
    from metaportrait.training.personalize import PersonalizeOptions, mouth_summary, personalize, start_summary

    shipped = MetaPortraitPipeline.from_pretrained(args.weights, device="cpu")
    rows = {}
    for rec in heldout_clips(args.data, args.clip):
        clip, train, test = heldout_person(args.data, rec)
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            res = personalize(train, Path(tmp) / "adapter", weights=args.weights,
                              options=PersonalizeOptions(seconds=args.seconds))
            wall = time.perf_counter() - t0
            tuned = MetaPortraitPipeline.from_pretrained(args.weights, device="cpu", adapter=Path(tmp) / "adapter")
            base, ours = render_scores(shipped, train, test), render_scores(tuned, train, test)
        kept = min(e for _, e in res.validation) if res.validation else float("nan")
        rows[clip] = {"shipped": base, "personalized": ours, "wall_seconds": wall, "component": res.component,
                      "start_errors": res.start_errors, "heldback_start": res.validation[0][1] if res.validation else None,
                      "heldback_kept": kept, "best_step": res.best_step, "steps": res.steps,
                      "mouth": None if res.mouth is None else res.mouth.__dict__}
        print(f"\n{clip}: {res.steps} generator steps, {wall:.0f} s in all; {start_summary(res) if res.start_errors else ''}")
        if res.mouth is not None:
            print(mouth_summary(res.mouth))
    print(f"\n| person (24 later frames) | render path | PSNR ↑ | L1 ↓ | detail → 1 | mouth-box PSNR ↑ (open frames) |")
    print("|---|---|---|---|---|---|")
    for clip, r in rows.items():
        for name in ("shipped", "personalized"):
            s = r[name]
            print(f"| {clip} | {name} | {s['psnr']:.2f} | {s['l1']:.4f} | {s['detail']:.3f} | "
                  f"{s['mouth_psnr']:.2f} ({s['mouth_frames']}) |")
    print("\n| person | ΔPSNR (personalized − shipped) | L1 ratio | Δ mouth-box PSNR |")
    print("|---|---|---|---|")
    for clip, r in rows.items():
        a, b = r["shipped"], r["personalized"]
        print(f"| {clip} | {b['psnr'] - a['psnr']:+.2f} dB | {b['l1'] / a['l1']:.3f}× | {b['mouth_psnr'] - a['mouth_psnr']:+.2f} dB |")
    if args.output:
        args.output.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
