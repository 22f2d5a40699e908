"""Live benchmark: FPS and capture-to-output latency of `metaportrait live`'s loop at 256² and 512²
output, with FOMM vox-256's per-frame network time measured in the same run as the reference.

A driving clip (`examples/driving_webcam.mp4`, looped ping-pong to ``--seconds``) is replayed in real
time at 25 FPS as the camera; frames that become stale while one renders are dropped. Latency is
reported for the first and last 10 s of the stream (it must stay flat).
Usage: ``python benchmarks/live.py [--threads 2] [--seconds 120]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=120.0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import cv2
    import torch
    from skimage import data

    from metaportrait.live import run_live
    from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
    from metaportrait.video import iter_frames

    torch.set_num_threads(args.threads)
    clip = list(iter_frames(REPO / "examples" / "driving_webcam.mp4"))
    order = list(range(len(clip))) + list(range(len(clip) - 2, 0, -1))
    n = int(args.seconds * 25)

    def camera():
        for i in range(n):
            yield clip[order[i % len(order)]], i / 25.0

    pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
    big = cv2.resize(data.astronaut(), (1400, 1400), interpolation=cv2.INTER_CUBIC)
    src = pipe.prepare_source(big)
    rows = []
    for size in (256, 512):
        with pipe.live(src, ReenactOptions(size=size)) as session:
            report = run_live(session, camera(), 25.0, [])
        lat = report.latencies_ms
        k = max(1, int(10 * report.fps))
        rows.append((size, report, statistics.median(lat), sorted(lat)[int(0.95 * (len(lat) - 1))],
                     statistics.median(lat[:k]), statistics.median(lat[-k:]), session.ms_per_frame))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from networks import fomm_case, time_ms_per_frame

    torch.set_num_threads(args.threads)
    _model, run = fomm_case(batch=1)
    fomm = time_ms_per_frame(run, batch=1, runs=5, dtype="fp32")
    print(f"\nCPU threads: {args.threads}; {args.seconds:g} s stream at 25 FPS; FOMM vox-256 network "
          f"(random weights, batch 1): {fomm:.1f} ms/frame\n")
    print("| output | FPS rendered | dropped | ms a frame (landmarks included) | × FOMM | latency median ms | p95 ms "
          "| median first 10 s → last 10 s |")
    print("|---|---|---|---|---|---|---|---|")
    for size, r, med, p95, first, last, ms in rows:
        print(f"| {size}² | {r.fps:.1f} | {r.dropped}/{r.captured} | {ms:.1f} | {ms / fomm:.3f} | {med:.0f} | {p95:.0f} "
              f"| {first:.0f} → {last:.0f} |")


if __name__ == "__main__":
    main()
