#!/usr/bin/env python
"""A 512² frame strip of self-reenactment on a talking-face clip: source (frame 0), driving frame
(the truth), classical face-mesh warp, and the sharp render path, with 2× zooms on eyes and mouth.

    python scripts/render_strip.py --video clip.mp4 --frames 40 80 --output docs/render_strip.jpg
"""

from __future__ import annotations

import argparse
import warnings

import cv2
import numpy as np

from metaportrait.face import FaceAnalyzer, mesh_warp_image
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.video import iter_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--frames", type=int, nargs="+", default=[40, 80])
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    frames = list(iter_frames(args.video, max_frames=max(args.frames) + 1))
    pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
    src = pipe.prepare_source(frames[0])
    out = list(pipe.animate(src, frames, ReenactOptions(visible_label=False, size=512, mode="absolute")))
    crop512 = src.crop.rescaled(512)
    rows = []
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as analyzer:
        for i in args.frames:
            truth = crop512.crop(frames[i])
            lm_t = crop512.points_to_crop(analyzer.largest(frames[i]).landmarks)
            source = src.face_at(512)
            lm_s = src.landmarks * (512 / pipe.size)
            mesh = mesh_warp_image(source, lm_s, lm_t)
            tiles = [source, truth, mesh, out[i]]
            eyes = lm_t[[33, 263]].mean(0)
            mouth = lm_t[[13, 14]].mean(0)

            def zoom(img, c, w=128, h=64):
                x0 = int(np.clip(c[0] - w, 0, 512 - 2 * w))
                y0 = int(np.clip(c[1] - h, 0, 512 - 2 * h))
                return cv2.resize(img[y0:y0 + 2 * h, x0:x0 + 2 * w], (512, 256), interpolation=cv2.INTER_NEAREST)

            rows.append(np.concatenate(tiles, 1))
            rows.append(np.concatenate([zoom(t, eyes) for t in tiles], 1))
            rows.append(np.concatenate([zoom(t, mouth) for t in tiles], 1))
    strip = np.concatenate(rows, 0)
    cv2.imwrite(args.output, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"{args.output}: {strip.shape[1]}×{strip.shape[0]} (columns: source, truth, mesh warp, ours)")


if __name__ == "__main__":
    main()
