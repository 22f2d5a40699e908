"""Talking clips for the audio-to-motion model: per-frame landmarks + the clip's own speech.

``python -m metaportrait.training.speech_data --prepared DATA --output SPEECH`` reads every clip of
a prepared data folder (:mod:`metaportrait.training.prepared`) whose source video has an audio
track and writes ``SPEECH/<clip identity>.npz`` with

* ``landmarks`` ``T×478×2`` and ``landmarks_3d`` ``T×478×3`` float32 (256-crop pixels), detected
  on every frame afresh (static mode, **no smoothing**: a One-Euro filter lags the lips by a frame
  or two, which would teach the model a late mouth), ``valid`` ``T`` bool;
* ``wave`` the 16 kHz mono speech aligned to the first video frame, ``fps``, ``reference_db``,
  ``speech_threshold_db`` (:func:`metaportrait.audio.analyse_audio`), ``split``.

Clips are left out when their source has no audio, or when several people speak in it
(``--exclude``, default ``multispeaker_table``: the speech cannot be attributed to the tracked face).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from metaportrait.audio import analyse_audio, read_audio
from metaportrait.errors import MetaPortraitError
from metaportrait.face import FaceAnalyzer
from metaportrait.training.prepared import PreparedData

MULTI_SPEAKER = ("multispeaker_table",)


def extract_clip(data: PreparedData, clip, out: Path) -> dict:
    source = Path(clip.record["source_file"])
    info = analyse_audio(source)
    wave = read_audio(source)
    frames = data.frames(clip, 256)
    n = len(frames)
    lm2 = np.zeros((n, 478, 2), np.float32)
    lm3 = np.zeros((n, 478, 3), np.float32)
    valid = np.zeros(n, bool)
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as analyzer:
        for i in range(n):
            dets = analyzer.detect(np.ascontiguousarray(frames[i]))
            if dets:
                lm2[i], lm3[i], valid[i] = dets[0].landmarks, dets[0].landmarks_3d, True
    np.savez_compressed(out, landmarks=lm2, landmarks_3d=lm3, valid=valid, wave=wave.astype(np.float32),
                        fps=np.float32(clip.record.get("fps", 25.0)), reference_db=np.float32(info.reference_db),
                        speech_threshold_db=np.float32(info.speech_threshold_db), split=np.array(clip.split))
    return {"clip": clip.id, "identity": clip.identity, "frames": n, "valid": int(valid.sum()),
            "seconds": round(len(wave) / 16000, 2), "split": clip.split}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", required=True, help="prepared data folder (metaportrait prepare-data)")
    p.add_argument("--output", required=True, help="folder for the <identity>.npz files")
    p.add_argument("--exclude", default=",".join(MULTI_SPEAKER), help="identities left out (comma-separated)")
    args = p.parse_args(argv)
    data = PreparedData(args.prepared)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    excluded = {x for x in args.exclude.split(",") if x}
    records = []
    for clip in data.clips:
        name = clip.identity if sum(c.identity == clip.identity for c in data.clips) == 1 else clip.id.replace("/", "__")
        if clip.identity in excluded:
            records.append({"clip": clip.id, "left_out": "several people speak (speech not attributable)"})
            continue
        t0 = time.perf_counter()
        try:
            rec = extract_clip(data, clip, out / f"{name}.npz")
        except MetaPortraitError as e:
            records.append({"clip": clip.id, "left_out": str(e)})
            print(f"{clip.id}: left out: {e}", flush=True)
            continue
        rec["extract_seconds"] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        print(json.dumps(rec), flush=True)
    (out / "index.json").write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
