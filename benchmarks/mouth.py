"""Cost of the mouth-interior fill (issue 14, part 1) or the eyelid fill (issue 15) per rendered frame.

The Mona Lisa with its mouth opened by the motion controls (``set_mouth_opening(0.8)``; with
``--feature eyes``: its eyes closed, ``set_eye_opening(0.0)``), rendered by the pipeline's ``draw``
without and with the network: the face crop at 256² and 512², and the whole photo pasted back at
its own resolution. Prints ms per frame (median of ``--runs``) and the ratio to the warp alone
measured in the same run.

    python benchmarks/mouth.py [--runs 20] [--threads 1] [--feature mouth|eyes]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--feature", choices=["mouth", "eyes"], default="mouth")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from PIL import Image

    from metaportrait.face.controls import set_eye_opening, set_mouth_opening
    from metaportrait.pipeline import MetaPortraitPipeline, draw

    pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
    filler = pipe.mouth if args.feature == "mouth" else pipe.eyes
    if filler is None:
        raise SystemExit(f"the weights folder has no {args.feature} network")
    fill = {"mouth": filler} if args.feature == "mouth" else {"eyes": filler}
    photo = np.asarray(Image.open(REPO / "examples" / "mona_lisa.jpg").convert("RGB"))
    src = pipe.prepare_source(photo)
    target = set_mouth_opening(src.landmarks, 0.8) if args.feature == "mouth" else set_eye_opening(src.landmarks, 0.0)
    grid = pipe.prior_grid(src, target)
    print(f"{args.threads} thread(s), {args.runs} runs, photo {photo.shape[1]}×{photo.shape[0]}\n")
    print(f"| output | warp alone ms | + {args.feature} ms | ratio |")
    print("|---|---|---|---|")
    for name, paste, size in (("crop 256²", False, 256), ("crop 512²", False, 512), ("photo (paste-back)", True, 256)):
        plain = median_ms(lambda: draw(src, grid, None, paste, size), args.runs)
        drawn = median_ms(lambda: draw(src, grid, None, paste, size, target=target, **fill), args.runs)
        print(f"| {name} | {plain:.1f} | {drawn:.1f} | {drawn / plain:.2f}× |")


if __name__ == "__main__":
    main()
