"""End-to-end reenactment benchmark (issue "One-shot reenactment", benchmark section).

Prints, for the embedded (``demo``) weights on this machine's CPU:

* frames per second of ``MetaPortraitPipeline.reenact`` end to end, split into landmarks /
  generation (networks at 256² + mesh geometry) / render (sampling the photo at the output size,
  paste-back, label) / encoding, for a 256² and a 512² face-crop output and for paste-back into the
  whole photo, side by side in one run (source: the astronaut upscaled to 1400², so its face crop
  has more than 512 px);
* peak RSS of a whole run on a 10 s and on a 60 s driving video (each run in its own process);
* the reference: FOMM vox-256 (keypoint detector + generator, random weights) per-frame time
  measured in the same run, and the ratio of our per-frame time to it (README "Speed": the
  "≥ 10 FPS" target means ≤ 0.2× FOMM's per-frame time on the same machine).

Usage: ``python benchmarks/reenactment.py [--threads 2] [--weights DIR]``. Driving videos of
10 s and 60 s are built by looping ``examples/driving_speech.mp4`` forwards and backwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
pipe = MetaPortraitPipeline.from_pretrained(sys.argv[5] or None, device="cpu")
t0 = time.perf_counter()
size = int(sys.argv[6]) if sys.argv[6] != "paste" else None
opts = ReenactOptions(mode="relative", size=size, paste_back=sys.argv[6] == "paste")
r = pipe.reenact(sys.argv[1], sys.argv[2], sys.argv[3], opts)
wall = time.perf_counter() - t0
print(json.dumps({"frames": r.num_frames, "wall": wall, "timings": r.timings,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_driving(src: Path, seconds: float, out: Path) -> None:
    """Loop ``src`` forwards/backwards (ping-pong, so motion stays natural) to ``seconds``."""
    from metaportrait.video import VideoWriter, iter_frames, probe_video

    info = probe_video(src)
    frames = list(iter_frames(src))
    need = int(round(seconds * info.fps))
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    with VideoWriter(out, fps=info.fps, crf=23) as w:
        for i in range(need):
            w.write(frames[order[i % len(order)]])


def fomm_ms_per_frame(threads: int) -> float:
    """Per-frame time of FOMM vox-256 (random weights), from benchmarks/networks.py."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from networks import fomm_case, time_ms_per_frame  # the reference lives with the network benchmark

    _model, run = fomm_case(batch=1)
    return time_ms_per_frame(run, batch=1, runs=5, dtype="fp32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default="")
    ap.add_argument("--durations", default="10,60")
    ap.add_argument("--outputs", default="256,512,paste", help="face-crop sizes and/or 'paste' (whole photo)")
    args = ap.parse_args()
    import cv2
    from skimage import data

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "astronaut_1400.png"
        big = cv2.resize(data.astronaut(), (1400, 1400), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(source), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
        for seconds in [float(s) for s in args.durations.split(",")]:
            drv = Path(tmp) / f"driving_{seconds:g}s.mp4"
            make_driving(REPO / "examples" / "driving_speech.mp4", seconds, drv)
            for output in args.outputs.split(","):
                out = Path(tmp) / f"out_{seconds:g}s_{output}.mp4"
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, str(source), str(drv), str(out), str(args.threads), args.weights,
                     output],
                    capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                )
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr)
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append((seconds, output, res))
    fomm = fomm_ms_per_frame(args.threads)
    print(f"\nCPU threads: {args.threads}; FOMM vox-256 reference (random weights, batch 1): {fomm:.1f} ms/frame\n")
    print("| driving | output | frames | FPS end to end | landmarks ms/f | generation ms/f | render ms/f "
          "| encoding ms/f | total ms/f | × FOMM | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {}
    for seconds, output, r in rows:
        n = r["frames"]
        t = r["timings"]
        per = {k: 1000 * t.get(k, 0.0) / n for k in ("landmarks", "generation", "render", "encoding")}
        total = 1000 * r["wall"] / n
        totals[(seconds, output)] = (total, r["maxrss_mib"])
        label = "photo 1400²" if output == "paste" else f"{output}²"
        print(f"| {seconds:g} s | {label} | {n} | {n / r['wall']:.1f} | {per['landmarks']:.1f} | {per['generation']:.1f} "
              f"| {per['render']:.1f} | {per['encoding']:.1f} | {total:.1f} | {total / fomm:.2f} | {r['maxrss_mib']:.0f} |")
    for seconds in sorted({s for s, _ in totals}):
        if (seconds, "256") in totals and (seconds, "512") in totals:
            ratio = totals[(seconds, "512")][0] / totals[(seconds, "256")][0]
            print(f"\n{seconds:g} s: 512² / 256² time per frame = {ratio:.2f} (target ≤ 1.2)")
    durations = sorted({s for s, _ in totals})
    if len(durations) == 2:
        for output in args.outputs.split(","):
            a, b = totals.get((durations[0], output)), totals.get((durations[1], output))
            if a and b:
                print(f"peak RSS {output}: {durations[1]:g} s / {durations[0]:g} s = {b[1] / a[1]:.3f} "
                      f"({b[1]:.0f} MiB; target ≤ 2048 MiB)")


if __name__ == "__main__":
    main()
