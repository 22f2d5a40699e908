#!/usr/bin/env python
"""A frame strip of the gated refinement residual: unseen people's frames where the full-head mesh
warp magnifies the source most (an opening mouth, a head turning away from the photo's pose),
driven from the clip's first frame.

Columns: truth, the shipped pipeline (geometry + mouth and eye networks), the pipeline with the
gated generator of ``--weights``, the gate's region over the truth (red), then 2× zooms of the first
three around the largest region.

    PYTHONPATH=. python scripts/gated_strip.py --data data/prepared --weights runs/pipe_gated \\
        --rows 2 --output docs/gated_strip.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from metaportrait.evaluation.reenactment import stretch_mask  # noqa: E402
from metaportrait.pipeline import MetaPortraitPipeline  # noqa: E402
from metaportrait.training.prepared import HELDOUT_IDENTITY, PreparedData  # noqa: E402
from mouth_strip import zoom  # noqa: E402


def label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True, help="pipeline folder whose base generator is gated")
    ap.add_argument("--rows", type=int, default=2, help="frames per person")
    ap.add_argument("--frames", type=int, default=48, help="later frames searched per person")
    ap.add_argument("--output", default="docs/gated_strip.jpg")
    args = ap.parse_args(argv)
    shipped = MetaPortraitPipeline.from_pretrained(device="cpu")
    gated = MetaPortraitPipeline.from_pretrained(args.weights, device="cpu")
    data = PreparedData(args.data)
    rows = []
    for clip in data.clips_in(HELDOUT_IDENTITY):
        frames = data.frames(clip, 256)
        lms = data.landmarks(clip)
        valid = data.valid(clip, num_frames=len(frames))
        idx = [i for i in range(len(frames)) if valid[i]]
        source = shipped.source_from_crop(np.ascontiguousarray(frames[idx[0]]), np.asarray(lms[idx[0]]))
        later = idx[1: 1 + args.frames]
        masks = {i: stretch_mask(shipped.prior_grid(source, np.asarray(lms[i], np.float32))) for i in later}
        best = sorted(later, key=lambda i: -masks[i].sum())[: args.rows]
        for i in sorted(best):
            t = np.asarray(lms[i], np.float32)
            a = shipped.generate(source, [t])[0]
            src_g = gated.source_from_crop(np.ascontiguousarray(frames[idx[0]]), np.asarray(lms[idx[0]]))
            b = gated.generate(src_g, [t])[0]
            truth = np.ascontiguousarray(frames[i])
            over = truth.copy()
            over[masks[i]] = (0.5 * over[masks[i]] + [127, 0, 0]).astype(np.uint8)
            ys, xs = np.nonzero(masks[i])
            centre = np.array([xs.mean(), ys.mean()]) if len(xs) else np.array([128.0, 128.0])
            half = 48
            zooms = [cv2.resize(zoom(img, centre, half, 256), (256, 256), interpolation=cv2.INTER_CUBIC) for img in (truth, a, b)]
            rows.append(np.concatenate([label(truth, f"truth {clip.identity} #{i}"), label(a, "shipped"),
                                        label(b, "gated residual"), label(over, "region")]
                                       + [label(z, n) for z, n in zip(zooms, ("truth 2x", "shipped 2x", "gated 2x"))], 1))
    strip = np.concatenate(rows, 0)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.output, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {args.output} ({strip.shape[1]}×{strip.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
