"""Render a frame strip: driving frames (top) and the reenacted source (bottom), for the README.

Usage: ``python scripts/frame_strip.py --source examples/astronaut.jpg --driving VIDEO --output docs/strip.jpg``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from metaportrait.face import CropTransform, FaceAnalyzer
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.video import read_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--driving", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--tile", type=int, default=160)
    args = ap.parse_args()
    pipe = MetaPortraitPipeline.from_pretrained(args.weights, device="cpu")
    driving = read_frames(args.driving, max_frames=int(args.seconds * 25))
    src = pipe.prepare_source(args.source)
    out = list(pipe.animate(src, driving, ReenactOptions(mode="relative", visible_label=True)))
    with FaceAnalyzer(static_image_mode=True) as fa:
        crop = CropTransform.from_landmarks(fa.largest(driving[0]).landmarks, size=256)
    picks = np.linspace(0, len(out) - 1, args.frames).round().astype(int)
    t = args.tile
    top = np.concatenate([cv2.resize(crop.crop(driving[i]), (t, t), interpolation=cv2.INTER_AREA) for i in picks], 1)
    bottom = np.concatenate([cv2.resize(out[i], (t, t), interpolation=cv2.INTER_AREA) for i in picks], 1)
    left = np.concatenate([cv2.resize(src.face, (t, t)), np.full((t, t, 3), 255, np.uint8)], 0)
    Image.fromarray(np.concatenate([left, np.concatenate([top, bottom], 0)], 1)).save(args.output, quality=88)
    print(f"wrote {args.output} (frames {picks.tolist()})")


if __name__ == "__main__":
    main()
