#!/usr/bin/env python
"""The eyelids measured and shown: the mesh warp alone against the mesh warp + the eye-interior
network (``weights/eye_interior``), on closing eyes.

1. ``edit --eyes 0`` on portraits (``--source``: image files, or ``astronaut1400``, the source of
   tests/test_controls.py): the eye opening MediaPipe detects on the output (mean of
   159-145 / 33-133 and 386-374 / 362-263) against the unedited output, with and without the
   network (the dip asked for: ≥ 50 %);
2. unseen people (``--data``, ``--clip``): self-reenactment of each clip from its most open frame
   among the first 25 to every frame where an eye closes (:func:`metaportrait.eyes.fill_strength`
   ≥ 0.5 for an eye); eye-box PSNR and detail ratio (mean Sobel magnitude, output / truth) of the
   eyes being redrawn, warp vs network;
3. ``--strip``: a zoomed PNG strip (256-colour palette) of closed eyes (portraits: source, warp, network; unseen people:
   truth, warp, network).

    python scripts/eye_eval.py --source astronaut1400 examples/astronaut.jpg examples/mona_lisa.jpg \\
        --data data/prepared --clip fi_RGuHfwIRKpA fi_YwsVpkumbJc fi__ztmNiy8D3c --strip docs/eyelid_strip.png
"""

from __future__ import annotations

import argparse
import warnings

import cv2
import numpy as np

from metaportrait.evaluation.reenactment import psnr, sobel_detail
from metaportrait.eyes import EYES, eye_opening, fill_strength
from metaportrait.face import FaceAnalyzer
from metaportrait.pipeline import EditOptions, MetaPortraitPipeline

ZOOM = 160


def mp_eye(image: np.ndarray) -> float:
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as analyzer:
        lm = analyzer.largest(image).landmarks
    return float(np.mean([np.linalg.norm(lm[159] - lm[145]) / np.linalg.norm(lm[33] - lm[133]),
                          np.linalg.norm(lm[386] - lm[374]) / np.linalg.norm(lm[362] - lm[263])]))


def eye_box(lm: np.ndarray, eye: int, shape: tuple[int, ...], pad: float = 0.35) -> tuple[int, int, int, int]:
    """Box of eye ``eye``'s contour grown by ``pad`` of the eye width (the lids and the lash line)."""
    pts = np.asarray(lm, np.float64)[list(EYES[eye][1]), :2]
    (a, b), _, _, _ = EYES[eye]
    g = pad * np.linalg.norm(lm[a, :2] - lm[b, :2])
    lo, hi = np.floor(pts.min(0) - g).astype(int), np.ceil(pts.max(0) + g).astype(int)
    h, w = shape[:2]
    return int(max(lo[0], 0)), int(max(lo[1], 0)), int(min(hi[0], w)), int(min(hi[1], h))


def eyes_zoom(img: np.ndarray, lm: np.ndarray, text: str) -> np.ndarray:
    """Both eyes of ``img`` side by side (a box around both, 2:1), ``ZOOM`` high, labelled."""
    pts = np.asarray(lm, np.float64)[list(EYES[0][1]) + list(EYES[1][1]), :2]
    c = pts.mean(0)
    half = 0.62 * (pts[:, 0].max() - pts[:, 0].min())
    x0, y0 = int(round(c[0] - half)), int(round(c[1] - half / 2))
    side = int(round(2 * half))
    pad = side
    big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    part = big[y0 + pad:y0 + pad + side // 2, x0 + pad:x0 + pad + side]
    out = cv2.resize(part, (2 * ZOOM, ZOOM), interpolation=cv2.INTER_CUBIC)
    cv2.putText(out, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def portraits(pipe, plain, paths: list[str], strip: list[np.ndarray]) -> None:
    print("| portrait | MediaPipe eye opening: unedited | --eyes 0, warp | dip | --eyes 0, warp + eye network | dip |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        if path == "astronaut1400":  # tests/test_controls.py's source: skimage's astronaut at 1400²
            from skimage import data

            src = pipe.prepare_source(cv2.resize(data.astronaut(), (1400, 1400), interpolation=cv2.INTER_CUBIC))
        else:
            src = pipe.prepare_source(path)
        base_img = plain.edit(src, EditOptions(visible_label=False))
        warp = plain.edit(src, EditOptions(eyes=0.0, visible_label=False))
        ours = pipe.edit(src, EditOptions(eyes=0.0, visible_label=False))
        base, w, o = mp_eye(base_img), mp_eye(warp), mp_eye(ours)
        print(f"| {path} | {base:.3f} | {w:.3f} | {100 * (1 - w / base):.0f} % | {o:.3f} | {100 * (1 - o / base):.0f} % |")
        lm = pipe.edited_landmarks(src, EditOptions(eyes=0.0))[:, :2] * (base_img.shape[0] / pipe.size)
        strip.append(np.concatenate([eyes_zoom(base_img, lm, "source"), eyes_zoom(warp, lm, "--eyes 0: mesh warp"),
                                     eyes_zoom(ours, lm, "--eyes 0: + eye network")], 1))


def unseen(pipe, plain, data_dir: str, clip_id: str, strip: list[np.ndarray], rows_in_strip: int) -> dict[str, float]:
    from metaportrait.training.prepared import PreparedData

    data = PreparedData(data_dir)
    clip = next(c for c in data.clips if clip_id in c.id)
    frames, lms, valid = data.frames(clip), data.landmarks(clip), data.valid(clip)
    idx = np.flatnonzero(valid)
    first = idx[:25]
    s = int(first[np.argmax([eye_opening(lms[i], 0) + eye_opening(lms[i], 1) for i in first])])
    source = pipe.source_from_crop(np.ascontiguousarray(frames[s]), np.asarray(lms[s]))
    stats = {"warp_psnr": [], "ours_psnr": [], "warp_detail": [], "ours_detail": []}
    shown = []
    for t in idx:
        lm = np.asarray(lms[t], np.float32)
        eyes = [e for e in (0, 1) if fill_strength(lm, lms[s], e) >= 0.5]
        if not eyes or t == s:
            continue
        truth = np.asarray(frames[t])
        warp = plain.generate(source, [lm])[0]
        ours = pipe.generate(source, [lm])[0]
        for e in eyes:
            x0, y0, x1, y1 = eye_box(lm, e, truth.shape)
            tb = truth[y0:y1, x0:x1]
            stats["warp_psnr"].append(psnr(warp[y0:y1, x0:x1], tb))
            stats["ours_psnr"].append(psnr(ours[y0:y1, x0:x1], tb))
            d = sobel_detail(truth, (x0, y0, x1, y1))
            stats["warp_detail"].append(sobel_detail(warp, (x0, y0, x1, y1)) / d)
            stats["ours_detail"].append(sobel_detail(ours, (x0, y0, x1, y1)) / d)
        shown.append((min(eye_opening(lm, 0), eye_opening(lm, 1)), t, truth, warp, ours, lm))
    for _, t, truth, warp, ours, lm in sorted(shown, key=lambda r: r[0])[:rows_in_strip]:
        strip.append(np.concatenate([eyes_zoom(truth, lm, f"{clip_id[3:]} truth {t}"), eyes_zoom(warp, lm, "mesh warp"),
                                     eyes_zoom(ours, lm, "+ eye network")], 1))
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["eyes"] = len(stats["warp_psnr"])
    out["frames"] = len(shown)
    out["source"] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", nargs="*", default=[])
    ap.add_argument("--data")
    ap.add_argument("--clip", nargs="*", default=[])
    ap.add_argument("--strip", help="write the zoomed strip here (PNG)")
    ap.add_argument("--strip-rows", type=int, default=1, help="closed-eye rows per unseen clip in the strip")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
    if pipe.eyes is None:
        raise SystemExit("the weights folder has no eye_interior component")
    plain = MetaPortraitPipeline.from_pretrained(device="cpu", eye_interior=False)
    strip: list[np.ndarray] = []
    if args.source:
        portraits(pipe, plain, args.source, strip)
    if args.data and args.clip:
        print("\n| unseen clip | source frame | blink frames | eyes | eye-box PSNR warp | + network | detail warp | + network |")
        print("|---|---|---|---|---|---|---|---|")
        for clip in args.clip:
            r = unseen(pipe, plain, args.data, clip, strip, args.strip_rows)
            print(f"| {clip} | {r['source']} | {r['frames']} | {r['eyes']} | {r['warp_psnr']:.2f} | {r['ours_psnr']:.2f} "
                  f"| {r['warp_detail']:.3f} | {r['ours_detail']:.3f} |")
    if args.strip and strip:
        img = np.concatenate(strip, 0)
        from PIL import Image

        # a 256-colour palette (median cut, dithered) keeps the PNG a third of its RGB size
        Image.fromarray(img).quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                      dither=Image.Dither.FLOYDSTEINBERG).save(args.strip, optimize=True)
        print(f"{args.strip}: {img.shape[1]}×{img.shape[0]}")


if __name__ == "__main__":
    main()
