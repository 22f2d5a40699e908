"""Slider latency of portrait editing: milliseconds per `MetaPortraitPipeline.edit` call at 256² and
512² (the astronaut upscaled to 1400², so its crop has the pixels), median of 11 changes per slider,
beside the time of one reenactment frame (`generate`) measured in the same run as the reference.

Usage: ``python benchmarks/edit.py [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import cv2
    import torch
    from skimage import data

    from metaportrait.pipeline import EditOptions, MetaPortraitPipeline

    torch.set_num_threads(args.threads)
    pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
    src = pipe.prepare_source(cv2.resize(data.astronaut(), (1400, 1400), interpolation=cv2.INTER_CUBIC))
    sliders = {
        "eyes": lambda v: EditOptions(eyes=v), "lips": lambda v: EditOptions(lips=v),
        "smile": lambda v: EditOptions(smile=v - 0.5), "yaw": lambda v: EditOptions(yaw=30 * (v - 0.5)),
        "gaze": lambda v: EditOptions(gaze_x=v - 0.5),
    }
    rows = []
    for size in (256, 512):
        for name, make in sliders.items():
            times = []
            for v in [i / 10 for i in range(11)]:
                opt = make(v)
                opt = EditOptions(**{**opt.__dict__, "size": size})
                t0 = time.perf_counter()
                pipe.edit(src, opt)
                times.append(1000 * (time.perf_counter() - t0))
            rows.append((size, name, statistics.median(times), max(times)))
    t = []
    for _ in range(11):
        t0 = time.perf_counter()
        pipe.generate(src, [src.landmarks])
        t.append(1000 * (time.perf_counter() - t0))
    ref = statistics.median(t)
    print(f"\nCPU threads: {args.threads}; one reenactment frame (generate, 256²): {ref:.1f} ms (median of 11)\n")
    print("| output | slider | median ms per change | max ms | × one reenactment frame |")
    print("|---|---|---|---|---|")
    for size, name, med, mx in rows:
        print(f"| {size}² | {name} | {med:.1f} | {mx:.1f} | {med / ref:.2f} |")


if __name__ == "__main__":
    main()
