#!/usr/bin/env python
"""A frame strip of the mouth interior: a closed-mouth source driven by an open mouth, the mesh warp
(what geometry alone draws) against the mesh warp + the mouth-interior network, zoomed on the mouth.

Two kinds of rows:

* ``--source IMAGE --driving VIDEO``: the photo driven (relative mode) by the video's most open
  mouths; columns: driving frame, mesh warp, ours (face crops at 512²), then mouth zooms of the
  source, the mesh warp and ours;
* ``--data PREPARED --clip ID``: self-reenactment of an unseen person: source = the clip's most
  closed frame, targets = its most open frames; columns: truth, mesh warp, ours (256² crops).

    python scripts/mouth_strip.py --source examples/astronaut.jpg --driving examples/driving_speech.mp4 \\
        --data data/prepared --clip fi_RGuHfwIRKpA fi_YwsVpkumbJc --output docs/mouth_strip.jpg
"""

from __future__ import annotations

import argparse
import warnings

import cv2
import numpy as np

from metaportrait.evaluation.reenactment import mouth_opening
from metaportrait.face import transfer_landmarks
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions, draw
from metaportrait.video import iter_frames


def zoom(img: np.ndarray, centre: np.ndarray, half: int, out: int) -> np.ndarray:
    h, w = img.shape[:2]
    x0 = int(np.clip(centre[0] - half, 0, w - 2 * half))
    y0 = int(np.clip(centre[1] - half * 0.75, 0, h - int(1.5 * half)))
    part = img[y0:y0 + int(1.5 * half), x0:x0 + 2 * half]
    return cv2.resize(part, (out, int(out * 0.75)), interpolation=cv2.INTER_CUBIC)


def label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return img


def driven_rows(pipe, source_path: str, driving: str, count: int) -> list[np.ndarray]:
    frames = list(iter_frames(driving, max_frames=400))
    src = pipe.prepare_source(source_path)
    opts = ReenactOptions(visible_label=False, size=512, mode="relative")
    tracked = [lm for _f, lm in pipe.driving_landmarks(frames, opts, {})]
    reference = next(lm for lm in tracked if lm is not None)
    openings = np.array([mouth_opening(lm) if lm is not None else -1 for lm in tracked])
    picks = sorted(int(i) for i in np.argsort(-openings)[: count * 6][::6][:count])
    rows = []
    for i in picks:
        target = pipe.control(src, transfer_landmarks(src.landmarks, tracked[i], reference, mode="relative"), opts)
        grids, _ = pipe.motion(src, [target])
        warp = draw(src, grids[0], None, False, 512)
        ours = draw(src, grids[0], None, False, 512, target=target, mouth=pipe.mouth)
        h, w = frames[i].shape[:2]
        side = min(h, w)
        drv = cv2.resize(frames[i][(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2], (512, 512))
        c = target[[13, 14], :2].mean(0) * (512 / pipe.size)
        rows.append(np.concatenate([label(drv, f"driver frame {i}"), label(warp, "mesh warp"), label(ours, "ours")], 1))
        rows.append(np.concatenate([zoom(src.face_at(512), c, 80, 512), zoom(warp, c, 80, 512), zoom(ours, c, 80, 512)], 1))
    return rows


def heldout_rows(pipe, plain, data_dir: str, clip_id: str, count: int) -> list[np.ndarray]:
    from metaportrait.training.prepared import PreparedData

    data = PreparedData(data_dir)
    clip = next(c for c in data.clips if clip_id in c.id)
    frames, lms, valid = data.frames(clip), data.landmarks(clip), data.valid(clip)
    idx = np.flatnonzero(valid)
    openings = np.array([mouth_opening(lms[i]) for i in idx])
    s = int(idx[np.argmin(openings)])
    source = pipe.source_from_crop(np.ascontiguousarray(frames[s]), np.asarray(lms[s]))
    order = idx[np.argsort(-openings)]
    picks = [int(i) for i in order[: count * 8][::8][:count]]
    rows = []
    for i in picks:
        t = np.asarray(lms[i], np.float32)
        warp = plain.generate(source, [t])[0]
        ours = pipe.generate(source, [t])[0]
        truth = np.asarray(frames[i])
        c = t[[13, 14]].mean(0)
        big = [cv2.resize(x, (384, 384), interpolation=cv2.INTER_CUBIC) for x in (source.face, truth, warp, ours)]
        rows.append(np.concatenate([label(big[0], f"source (frame {s})"), label(big[1], f"truth (frame {i})"),
                                    label(big[2], "mesh warp"), label(big[3], "ours")], 1))
        rows.append(np.concatenate([zoom(x, cc, 40, 384) for x, cc in
                                    ((source.face, source.landmarks[[13, 14]].mean(0)), (truth, c), (warp, c), (ours, c))], 1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source")
    ap.add_argument("--driving")
    ap.add_argument("--data")
    ap.add_argument("--clip", nargs="+", default=[])
    ap.add_argument("--count", type=int, default=2)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
    if pipe.mouth is None:
        raise SystemExit("the weights folder has no mouth_interior component")
    plain = MetaPortraitPipeline.from_pretrained(device="cpu", mouth_interior=False)
    sections = []
    if args.source and args.driving:
        sections.append(np.concatenate(driven_rows(pipe, args.source, args.driving, args.count), 0))
    for clip in args.clip if args.data else ():
        sections.append(np.concatenate(heldout_rows(pipe, plain, args.data, clip, args.count), 0))
    if not sections:
        raise SystemExit("give --source and --driving, and/or --data and --clip")
    width = max(s.shape[1] for s in sections)
    strip = np.concatenate([np.pad(s, ((0, 8), (0, width - s.shape[1]), (0, 0))) for s in sections], 0)
    cv2.imwrite(args.output, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"{args.output}: {strip.shape[1]}×{strip.shape[0]}")


if __name__ == "__main__":
    main()
