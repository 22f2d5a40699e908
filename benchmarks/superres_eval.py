"""Temporal super-resolution evaluation (issue "Temporal-consistent super-resolution", part 6).

On held-out clips of a prepared data folder (``frames_512.npy``; held-out identities by default),
the 512² ground truth is downsampled to 256² — ``--input clean``: an area filter; ``--input
degraded``: the training degradation of a config (blur, resize, noise, JPEG; one draw per clip,
seeded by the clip's position, as GFPGAN-style synthetic test sets are made) — then upscaled back by: bicubic, the
SR network over sliding windows (temporal), and the same network frame by frame (window 1,
t = 1), and the sliding windows followed by the motion-compensated temporal stabilizer
(``metaportrait.superres.TemporalStabilizer``). Reported: PSNR and SSIM against the ground truth,
the detail ratio (output / truth, mean Sobel gradient magnitude in the face box of the clip's
landmarks; blur lowers it), E_warp (MetaPortrait supplementary
eqs. 1-2, docs/METHOD.md §11; lower = more temporally stable, the ground truth's own value is the
floor), and frames per second.

Usage: ``python benchmarks/superres_eval.py --data data/prepared --weights weights [--frames 48]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--weights", default=str(REPO / "weights"))
    ap.add_argument("--split", default="heldout_identity", choices=["heldout_identity", "heldout_frames"])
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input", choices=["clean", "degraded"], default="clean",
                    help="how the 256² input is made from the 512² ground truth")
    ap.add_argument("--degradation-config", type=Path, default=REPO / "configs" / "sr_demo.json",
                    help="SR training config whose 'degradation' is used with --input degraded")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "superres_eval")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from metaportrait.evaluation.temporal import e_warp, psnr_frames, ssim_frames
    from metaportrait.evaluation.reenactment import face_box, sobel_detail
    from metaportrait.superres import StabilizerConfig, bicubic_upscale, load_sr_model, upscale_frames

    model = load_sr_model(args.weights).eval()
    degradation = None
    if args.input == "degraded":
        from metaportrait.training.degradations import DegradationConfig, degrade_clip

        degradation = DegradationConfig.from_dict(json.loads(args.degradation_config.read_text())["degradation"])
    manifest = json.loads((args.data / "manifest.json").read_text())
    if args.split == "heldout_identity":
        clips = [(c, 0) for c in manifest["clips"] if c["split"] == "heldout_identity"]
    else:
        clips = [(c, int(c["heldout_frames_from"])) for c in manifest["clips"] if c["split"] == "train"]
    rows: dict[str, dict[str, list[float]]] = {}
    gt_ewarp = []
    for position, (clip, start) in enumerate(clips[: args.clips]):
        hr = np.load(args.data / "clips" / clip["id"] / "frames_512.npy", mmap_mode="r")[start: start + args.frames]
        hr = np.ascontiguousarray(hr)
        lms = np.load(args.data / "clips" / clip["id"] / "landmarks_256.npy")[start: start + args.frames] * 2.0
        boxes = [face_box(lm, f.shape) for lm, f in zip(lms, hr)]
        if degradation is None:
            lr = np.stack([cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in hr])
        else:
            lr = degrade_clip(hr, degradation, 256, np.random.default_rng([2026, position]))
        gt_ewarp.append(e_warp(list(hr)))
        for name, fn in [
            ("bicubic", lambda x: bicubic_upscale(x, 512)),
            ("SR per frame (t = 1)", lambda x: np.stack(list(upscale_frames(model, iter(x), window=1, overlap=0)))),
            ("SR temporal (sliding window)", lambda x: np.stack(list(upscale_frames(model, iter(x))))),
            ("SR temporal + stabilizer", lambda x: np.stack(list(upscale_frames(model, iter(x), stabilize=StabilizerConfig())))),
        ]:
            t0 = time.perf_counter()
            out = fn(lr)
            secs = time.perf_counter() - t0
            r = rows.setdefault(name, {"psnr": [], "ssim": [], "detail": [], "e_warp": [], "fps": []})
            r["detail"].append(float(np.mean([sobel_detail(o, b) / sobel_detail(t, b) for o, t, b in zip(out, hr, boxes)])))
            r["psnr"].append(float(np.mean(psnr_frames(out, hr))))
            r["ssim"].append(float(np.mean(ssim_frames(out, hr))))
            r["e_warp"].append(e_warp(list(out)))
            r["fps"].append(len(out) / secs)
        print(f"evaluated {clip['id']} ({len(hr)} frames)")
    print(f"\n{args.split}, {args.clips} clips × {args.frames} frames, {args.input} 256² input -> 512², "
          f"{args.threads} threads\n")
    print("| method | PSNR ↑ | SSIM ↑ | detail ratio (→ 1) | E_warp ↓ | FPS |")
    print("|---|---|---|---|---|---|")
    print(f"| ground truth | – | – | 1 | {np.mean(gt_ewarp):.4f} | – |")
    summary = {"input": args.input, "ssim_window": "7x7 uniform (metaportrait.evaluation.metrics.ssim)",
               "ground_truth_e_warp": float(np.mean(gt_ewarp))}
    for name, r in rows.items():
        m = {k: float(np.mean(v)) for k, v in r.items()}
        summary[name] = m
        print(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['detail']:.3f} | {m['e_warp']:.4f} | {m['fps']:.1f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
