"""``metaportrait live``: animate a photo with a camera (or a video file standing in for one).

Frames are taken from the camera as they come; when rendering falls behind, stale frames are
dropped rather than queued, so the latency stays flat (a file "camera" is replayed in real time
at its own frame rate, which is how the tests exercise the same path). Output goes to a video file
(dropped frames repeat the last output, so the file keeps real time), to a virtual camera
(``pyvirtualcam``, when installed with its driver) and/or a window (``--show``). At the end the
measured FPS and capture-to-output latency are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from metaportrait.errors import InvalidVideoError, MetaPortraitError


@dataclass
class LiveReport:
    """What a live run measured."""

    captured: int = 0
    processed: int = 0
    dropped: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        lat = sorted(self.latencies_ms) or [float("nan")]
        p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
        return (f"{self.processed} frames rendered of {self.captured} captured ({self.dropped} dropped) in "
                f"{self.seconds:.1f} s: {self.fps:.1f} FPS; latency median {statistics.median(lat):.0f} ms, "
                f"p95 {p95:.0f} ms")


def camera_frames(camera: str, max_seconds: float | None = None) -> tuple[Iterator[tuple[np.ndarray, float]], float]:
    """(frames with capture times in seconds, fps): a camera index ("0") through OpenCV, or a video
    file replayed in real time (each frame 'captured' when its timestamp comes)."""
    if camera.isdigit():
        import cv2

        cap = cv2.VideoCapture(int(camera))
        if not cap.isOpened():
            raise InvalidVideoError(f"could not open camera {camera}; is one connected (and free)? "
                                    "A video file can stand in: --camera clip.mp4")
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0

        def grab() -> Iterator[tuple[np.ndarray, float]]:
            t0 = time.perf_counter()
            try:
                while True:
                    ok, bgr = cap.read()
                    now = time.perf_counter() - t0
                    if not ok or (max_seconds is not None and now > max_seconds):
                        return
                    yield np.ascontiguousarray(bgr[..., ::-1]), now
            finally:
                cap.release()

        return grab(), float(fps)
    from metaportrait.video import iter_frames, probe_video

    info = probe_video(camera)
    n = info.num_frames if max_seconds is None else min(info.num_frames, int(round(max_seconds * info.fps)))
    return ((f, i / info.fps) for i, f in enumerate(iter_frames(camera, max_frames=n))), info.fps


def run_live(session, frames: Iterator[tuple[np.ndarray, float]], fps: float, sinks: Sequence,
             realtime: bool = True) -> LiveReport:
    """Feed ``session`` the newest frame available at each step; frames that became stale while the
    previous one rendered are dropped (``realtime``); every sink gets one output per captured frame."""
    report = LiveReport()
    start = time.perf_counter()
    last_out: np.ndarray | None = None
    pending = next(frames, None)
    while pending is not None:
        frame, t_cap = pending
        report.captured += 1
        if realtime:  # wait for the frame's capture time (a file replayed like a camera)
            wait = t_cap - (time.perf_counter() - start)
            if wait > 0:
                time.sleep(wait)
        nxt = next(frames, None)
        # a newer frame already captured while we were busy: this one is stale, drop it
        if realtime and nxt is not None and nxt[1] <= time.perf_counter() - start and last_out is not None:
            report.dropped += 1
            for sink in sinks:
                sink(last_out)
            pending = nxt
            continue
        out = session(frame, t_cap)
        report.processed += 1
        report.latencies_ms.append(1000.0 * ((time.perf_counter() - start) - t_cap))
        last_out = out
        for sink in sinks:
            sink(out)
        pending = nxt
    report.seconds = time.perf_counter() - start
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``metaportrait live --source IMG [--camera 0|FILE] [--output OUT.mp4] [--virtual-camera] [--show]``."""
    from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
    from metaportrait.video import VideoWriter, check_output_path

    ap = argparse.ArgumentParser(prog="metaportrait live", description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="portrait photo")
    ap.add_argument("--camera", default="0", help="camera index (0, 1, …) or a video file standing in for one")
    ap.add_argument("--output", default=None, help="also write the result to this .mp4")
    ap.add_argument("--virtual-camera", action="store_true", help="send the result to a virtual camera (pyvirtualcam)")
    ap.add_argument("--show", action="store_true", help="show the result in a window (needs a display)")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long")
    ap.add_argument("--parts", default="all", help="all | head | expression | eyes | lips, comma-separated")
    ap.add_argument("--eyes", type=float, default=None, help="hold the eye opening (0 closed … 1 wide open)")
    ap.add_argument("--smile", type=float, default=0.0)
    ap.add_argument("--size", choices=["auto", "256", "512"], default="256",
                    help="output face crop (256 keeps the camera rate on a CPU)")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--backend", choices=("auto", "eager", "onnx", "compile"), default="auto", help="auto | eager | onnx | compile (see reenact)")
    args = ap.parse_args(argv)
    output = check_output_path(args.output) if args.output else None
    sinks = []
    if args.virtual_camera:
        try:
            import pyvirtualcam  # noqa: F401
        except ImportError:
            raise MetaPortraitError("--virtual-camera needs pyvirtualcam (pip install pyvirtualcam) and a virtual "
                                    "camera driver (v4l2loopback on Linux, OBS Virtual Camera on Windows/macOS)") from None
    if args.show:
        import os

        if os.name == "posix" and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise MetaPortraitError("--show needs a display (none found); write --output instead")
    options = ReenactOptions(parts=tuple(args.parts.split(",")), eyes=args.eyes, smile=args.smile,
                             size=None if args.size == "auto" else int(args.size))
    pipe = MetaPortraitPipeline.from_pretrained(args.weights, device=args.device, backend=args.backend)
    source = pipe.prepare_source(args.source)
    frames, fps = camera_frames(args.camera, args.seconds)
    writer = VideoWriter(output, fps=fps) if output else None
    vcam = None
    try:
        if writer is not None:
            sinks.append(writer.write)
        if args.virtual_camera:
            import pyvirtualcam

            size = options.size or 256
            vcam = pyvirtualcam.Camera(width=size, height=size, fps=fps)
            sinks.append(lambda f: vcam.send(np.ascontiguousarray(f)))
        if args.show:
            import cv2

            def show(f: np.ndarray) -> None:
                cv2.imshow("metaportrait live", f[..., ::-1])
                cv2.waitKey(1)

            sinks.append(show)
        with pipe.live(source, options) as session:
            report = run_live(session, frames, fps, sinks)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:  # an error or Ctrl-C: no half-written file is left
            writer.abort()
        if vcam is not None:
            vcam.close()
    print(report.summary() + (f"; wrote {output}" if output else ""))
    return 0


__all__ = ["LiveReport", "camera_frames", "run_live", "main"]
