"""Speed of the video-source (dubbing) mode: `reenact --source VIDEO` end to end, per stage, beside the
photo-source path on the same driving clip in the same run (the reference row).

Source video: `examples/driving_webcam.mp4` (400×300, 4 s); driver: `examples/driving_speech.mp4`;
photo reference: the first frame of the source video as the photo, whole-frame output (paste-back).
Usage: ``python benchmarks/dubbing.py [--threads 2] [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
    from metaportrait.video import iter_frames

    torch.set_num_threads(args.threads)
    pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
    src_video = REPO / "examples" / "driving_webcam.mp4"
    driver = REPO / "examples" / "driving_speech.mp4"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photo = next(iter_frames(src_video, max_frames=1))
        for name, source, opts in [
            ("photo source (reference)", photo, ReenactOptions(max_seconds=args.seconds, paste_back=True)),
            ("video source (dubbing)", src_video, ReenactOptions(max_seconds=args.seconds)),
        ]:
            t0 = time.perf_counter()
            r = pipe.reenact(source, driver, Path(tmp) / "o.mp4", opts)
            wall = time.perf_counter() - t0
            per = {k: 1000 * v / r.num_frames for k, v in r.timings.items()}
            rows.append((name, r.num_frames, r.num_frames / wall, per))
    print(f"\nCPU threads: {args.threads}\n")
    print("| mode | frames | FPS end to end | landmarks ms/f | networks ms/f | render ms/f | encoding ms/f |")
    print("|---|---|---|---|---|---|---|")
    for name, n, fps, per in rows:
        print(f"| {name} | {n} | {fps:.1f} | {per.get('landmarks', 0):.1f} | {per.get('generation', 0):.1f} "
              f"| {per.get('render', 0):.1f} | {per.get('encoding', 0):.1f} |")
    print(f"\nvideo source / photo source time per frame = {rows[0][2] / rows[1][2]:.2f}")


if __name__ == "__main__":
    main()
