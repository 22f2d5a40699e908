"""Speed of audio-driven talking heads on the CPU.

* audio model: visemes (phone recognition, when the model reads them) + features + AudioToMotion for 60 s of speech (examples/driving_speech.mp4's track,
  repeated), as seconds of compute per second of speech (real-time factor);
* end to end: `speak` (astronaut photo, that speech, 256² crop) in frames per second, against the
  driving-video reenactment of the same photo by the same clip measured in the same run (ratio).

``PYTHONPATH=. python benchmarks/speak.py [--threads 1]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metaportrait.audio import SAMPLE_RATE, analyse_audio, read_audio
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.speak import SpeakOptions, SpeechFeatures, load_audio_model, speak
from metaportrait.visemes import viseme_track

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "examples" / "driving_speech.mp4"
PHOTO = REPO / "examples" / "astronaut.jpg"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_audio_model()
    info = analyse_audio(SPEECH)
    wave = read_audio(SPEECH)
    seconds = 60
    long = np.tile(wave, int(np.ceil(seconds * SAMPLE_RATE / len(wave))))[: seconds * SAMPLE_RATE]
    frames = seconds * 25
    t0 = time.perf_counter()
    visemes = viseme_track(iter(np.array_split(long, 12))) if model.config.num_visemes else None
    t_visemes = (time.perf_counter() - t0) / seconds
    feats = SpeechFeatures(model, iter(np.array_split(long, 12)), info.reference_db, 25.0, info.speech_threshold_db,
                           visemes=visemes)
    with torch.inference_mode():
        for f0 in range(0, frames, 25):
            x, _g = feats.windows(f0, min(frames, f0 + 25))
            model(x)
    audio_model = (time.perf_counter() - t0) / seconds

    pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
    out = Path(tempfile.mkdtemp()) / "speak.mp4"
    controls = ReenactOptions(size=256)
    speak(pipe, PHOTO, SPEECH, out, SpeakOptions(controls=controls), model=model)  # warm-up
    out.unlink()
    t0 = time.perf_counter()
    res = speak(pipe, PHOTO, SPEECH, out, SpeakOptions(controls=controls), model=model)
    speak_fps = res.num_frames / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ren = pipe.reenact(PHOTO, SPEECH, out.with_name("reenact.mp4"), controls)
    reenact_fps = ren.num_frames / (time.perf_counter() - t0)
    print(f"| measure ({args.threads} thread{'s' if args.threads > 1 else ''}) | value |")
    print("|---|---|")
    print(f"| audio model: compute per second of speech (60 s) | {audio_model * 1000:.1f} ms ({1 / audio_model:.0f}× real time) |")
    if visemes is not None:
        print(f"| of which visemes (phone recognition) | {t_visemes * 1000:.1f} ms ({1 / t_visemes:.0f}× real time) |")
    print(f"| speak end to end, 256² ({res.num_frames} frames) | {speak_fps:.1f} FPS |")
    print(f"| reenact with the same clip as driver (baseline) | {reenact_fps:.1f} FPS |")
    print(f"| ratio speak / reenact | {speak_fps / reenact_fps:.2f} |")
    print("stages (s):", {k: round(v, 2) for k, v in res.timings.items()})


if __name__ == "__main__":
    main()
