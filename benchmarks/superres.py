"""Speed and size of temporal super-resolution (paper §3.3) at 256² -> 512² on this machine's CPU.

Usage::

    python benchmarks/superres.py                      # demo preset, 2 threads, median of 5 runs
    python benchmarks/superres.py --threads 1 --runs 5 --stream-frames 30 --with-paper

Rows: bicubic (OpenCV), the demo network on one window (frames processed per second), the demo
network through :func:`metaportrait.superres.upscale_frames` (output frames per second, windows
overlapping by the default overlap), optionally the paper preset (random weights; float32).
Columns: median wall time per output frame over ``--runs`` runs, FPS, and CPU time per frame (the
process's CPU seconds; on a machine shared with other jobs the wall time inflates, the CPU time
much less — the load average is printed so numbers can be judged). Then a table of parameter
counts and GFLOPs per frame of every preset.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from metaportrait.models.temporal_sr import PRESETS, TemporalSRConfig, TemporalSuperResolution
from metaportrait.superres import bicubic_upscale, default_overlap, upscale_frames


def _time(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of ``fn`` over ``runs`` runs (after one warm-up)."""
    fn()
    walls, cpus = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _gflops_per_frame(config: TemporalSRConfig, frames: int = 3) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = TemporalSuperResolution(config).eval()
        x = torch.zeros(1, frames, 3, config.in_size, config.in_size)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    return counter.get_total_flops() / frames / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--stream-frames", type=int, default=20, help="clip length for the streaming row")
    parser.add_argument("--with-paper", action="store_true", help="also time the paper preset (slow on a CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    rows: list[tuple[str, int, float, float]] = []  # name, frames per run, wall, cpu

    def add_network_rows(name: str) -> None:
        cfg = TemporalSRConfig.from_preset(name)
        model = TemporalSuperResolution(cfg).eval()
        t = cfg.window
        x = torch.rand(1, t, 3, cfg.in_size, cfg.in_size) * 2 - 1
        with torch.inference_mode():
            wall, cpu = _time(lambda: model(x), args.runs)
        rows.append((f"{name}: one window of {t} frames", t, wall, cpu))
        if name == args.preset:
            clip = [rng.integers(0, 256, (cfg.in_size, cfg.in_size, 3), dtype=np.uint8) for _ in range(args.stream_frames)]
            wall, cpu = _time(lambda: sum(1 for _ in upscale_frames(model, clip)), args.runs)
            rows.append((f"{name}: upscale_frames (window {t}, overlap {default_overlap(t)})", len(clip), wall, cpu))

    frames256 = rng.integers(0, 256, (10, 256, 256, 3), dtype=np.uint8)
    wall, cpu = _time(lambda: bicubic_upscale(frames256, 512), args.runs)
    rows.append(("bicubic (cv2.INTER_CUBIC)", len(frames256), wall, cpu))
    add_network_rows(args.preset)
    if args.with_paper and args.preset != "paper":
        add_network_rows("paper")

    print(f"\n256² -> 512², median of {args.runs} runs")
    print(f"| {'method':52s} | {'ms/frame':>9s} | {'FPS':>7s} | {'CPU ms/frame':>12s} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 9}|{'-' * 14}|")
    for name, n, wall, cpu in rows:
        print(f"| {name:52s} | {wall / n * 1e3:9.1f} | {n / wall:7.2f} | {cpu / n * 1e3:12.1f} |")

    print("\n| preset | parameters | GFLOPs/frame | U-Net input | temporal convs | temporal radius |")
    print("|---|---:|---:|---|---|---:|")
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            model = TemporalSuperResolution(cfg)
        print(f"| {name} | {model.num_parameters() / 1e6:.2f}M | {_gflops_per_frame(cfg):.1f} | "
              f"{cfg.unet_input} ({cfg.unet_size}²) | {cfg.temporal_convs} (kt={cfg.temporal_kernel_size}) | "
              f"{model.temporal_radius} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
