"""Blinks in talking-from-audio videos, with and without the eye-interior network (issue 15).

As ``benchmarks/speak_eval.py`` does: for each held-out person, source = the first frame of their
clip, audio = the clip's own track (``--head-motion 1``, seed 0, 256²); MediaPipe on every output
frame, blinks counted by :func:`metaportrait.evaluation.speech.blink_count` (the eye opening falling
below 55 % of its median), and the deepest dip of the eye opening (minimum / median).

    PYTHONPATH=. python benchmarks/speak_blinks.py --raw /work/data/raw
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from metaportrait.evaluation.speech import blink_count
from metaportrait.face import FaceAnalyzer
from metaportrait.face.controls import eye_opening
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.speak import SpeakOptions, load_audio_model, speak
from metaportrait.video import iter_frames, read_frames

HELDOUT = ("fi_RGuHfwIRKpA", "fi_YwsVpkumbJc", "fi__ztmNiy8D3c")


def detect(frames) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe landmarks of every frame (zeros where none) and where a face was found."""
    lms, ok = [], []
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as fa:
        for f in frames:
            d = fa.detect(f)
            ok.append(bool(d))
            lms.append(d[0].landmarks if d else np.zeros((478, 2), np.float32))
    return np.stack(lms), np.asarray(ok)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", default="/work/data/raw")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipes = {"warp": MetaPortraitPipeline.from_pretrained(device="cpu", eye_interior=False),
             "warp + eye network": MetaPortraitPipeline.from_pretrained(device="cpu")}
    model = load_audio_model()
    options = SpeakOptions(head_motion=1.0, seed=0, controls=ReenactOptions(visible_label=False, size=256))
    tmp = Path(tempfile.mkdtemp(prefix="speak-blinks-"))
    print("| person | renderer | frames | blinks (MediaPipe on the output) | deepest eye-opening dip (min / median) |")
    print("|---|---|---|---|---|")
    for person in HELDOUT:
        clip = next((Path(args.raw) / person).glob("*/*.mp4"))
        first = next(iter_frames(clip))
        for name, pipe in pipes.items():
            video = tmp / f"{person}_{name.replace(' ', '_')}.mp4"
            result = speak(pipe, first, clip, video, options, model=model)
            lms, ok = detect(read_frames(video))
            eyes = np.array([eye_opening(lm) for lm in lms[ok]])
            blinks = blink_count(lms[ok], result.fps)
            print(f"| {person} | {name} | {len(ok)} | {blinks} | {eyes.min() / np.median(eyes):.2f} |", flush=True)


if __name__ == "__main__":
    main()
