"""Audio-driven talking heads on people the audio model never saw (README "Talking from audio").

For each held-out person: source = the first frame of their clip, audio = the clip's own track;
the generated video's mouth opening (MediaPipe on every output frame) is compared with the true
video's (landmarks of ``python -m metaportrait.training.speech_data``, detected on every frame):

* Pearson r of the mouth opening (target >= 0.6), of the rendered video and of the target
  landmarks before rendering (what the audio model gives, gated by the voice activity);
* audio-visual offset: lag maximising the correlation of mouth opening and speech envelope, for
  the generated and the true video (target: within ±1 frame);
* silence: the clip's first 5 s with 2 s of digital silence before and after; the mouth opening in
  the silent frames (0.3 s from the speech) against the speaking range (p95 − p5; target <= 10 %);
* liveliness: blinks per minute and head-rotation spread (mean std of yaw/pitch/roll) of the
  generated videos against the range of the 13 real talking clips.

``PYTHONPATH=. python benchmarks/speak_eval.py --data /work/data/speech --raw /work/data/raw``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import wave as wavmod
from pathlib import Path

import cv2
import numpy as np
import torch

from metaportrait.audio import SAMPLE_RATE, analyse_audio, read_audio
from metaportrait.evaluation.speech import av_offset, blink_count, head_spread, mouth_series, pearson, speech_envelope
from metaportrait.face import FaceAnalyzer
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.speak import SpeakOptions, load_audio_model, speak, speech_landmarks
from metaportrait.video import iter_frames, read_frames

HELDOUT = ("fi_RGuHfwIRKpA", "fi_YwsVpkumbJc", "fi__ztmNiy8D3c")


def detect_all(frames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lm2, lm3, ok = [], [], []
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as fa:
        for f in frames:
            d = fa.detect(f)
            ok.append(bool(d))
            lm2.append(d[0].landmarks if d else np.zeros((478, 2), np.float32))
            lm3.append(d[0].landmarks_3d if d else np.zeros((478, 3), np.float32))
    return np.stack(lm2), np.stack(lm3), np.asarray(ok)


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wavmod.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/work/data/speech")
    p.add_argument("--raw", default="/work/data/raw")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--head-motion", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-eyes-net", action="store_true", help="without the eye-interior network (the warp's lids)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = MetaPortraitPipeline.from_pretrained(device="cpu", eye_interior=not args.no_eyes_net)
    model = load_audio_model()
    tmp = Path(tempfile.mkdtemp(prefix="speak-eval-"))
    rows, strips = [], []
    options = SpeakOptions(head_motion=args.head_motion, seed=0, controls=ReenactOptions(visible_label=False, size=256))

    real_blinks, real_spread = [], []
    for f in sorted(Path(args.data).glob("*.npz")):
        d = np.load(f)
        v = d["valid"]
        real_blinks.append(blink_count(d["landmarks"][v], float(d["fps"])) / (v.sum() / float(d["fps"])) * 60)
        real_spread.append(float(head_spread(d["landmarks_3d"][v]).mean()))

    for person in HELDOUT:
        d = np.load(Path(args.data) / f"{person}.npz")
        clip = next((Path(args.raw) / person).glob("*/*.mp4"))
        first = next(iter_frames(clip))
        video = tmp / f"{person}.mp4"
        src = pipe.prepare_source(first)
        targets = np.stack([lm for block in speech_landmarks(model, src, clip, analyse_audio(clip), options) for lm in block])
        result = speak(pipe, src, clip, video, options, model=model)
        frames = read_frames(video)
        lm2, lm3, ok = detect_all(frames)
        n = min(len(frames), len(d["landmarks"]))
        m_gen = mouth_series(lm2[:n])
        m_true = mouth_series(d["landmarks"][:n])
        both = ok[:n] & d["valid"][:n]
        r = pearson(m_gen[both], m_true[both])
        k = min(len(targets), n)
        r_landmarks = pearson(mouth_series(targets[:k])[d["valid"][:k]], m_true[:k][d["valid"][:k]])
        env = speech_envelope(d["wave"], float(d["fps"]), n)
        lag_gen, lag_true = av_offset(m_gen, env), av_offset(m_true, env)
        fps = result.fps
        blinks = blink_count(lm2[ok], fps) / (ok.sum() / fps) * 60
        spread = float(head_spread(lm3[ok]).mean())

        # silence: 2 s of zeros + the first 5 s of the track + 2 s of zeros
        speech = read_audio(clip)[: 5 * SAMPLE_RATE]
        wav = tmp / f"{person}_silence.wav"
        write_wav(wav, np.concatenate([np.zeros(2 * SAMPLE_RATE), speech, np.zeros(2 * SAMPLE_RATE)]))
        sil_video = tmp / f"{person}_silence.mp4"
        speak(pipe, first, wav, sil_video, options, model=model)
        s_lm, _s3, s_ok = detect_all(read_frames(sil_video))
        m = mouth_series(s_lm)
        t = np.arange(len(m)) / fps
        silent = ((t < 2 - 0.3) | (t > 7 + 0.3)) & s_ok
        speaking = (t > 2) & (t < 7) & s_ok
        rng = float(np.percentile(m[speaking], 95) - np.percentile(m[speaking], 5))
        rest = float(np.median(m[silent]))
        silence_dev = float(np.percentile(np.abs(m[silent] - rest), 95) / max(rng, 1e-9))
        silence_abs = float(np.percentile(m[silent], 95) / max(float(np.percentile(m[speaking], 95)), 1e-9))
        rows.append({"person": person, "frames": int(n), "mouth_r": round(r, 3), "mouth_r_landmarks": round(r_landmarks, 3),
                     "lag_generated": lag_gen,
                     "lag_true": lag_true, "silence_dev_of_range": round(silence_dev, 3),
                     "silence_p95_over_speaking_p95": round(silence_abs, 3),
                     "blinks_per_min": round(blinks, 1), "head_spread_deg": round(spread, 2),
                     "fps_end_to_end": round(result.fps_end_to_end, 1)})
        print(json.dumps(rows[-1]), flush=True)
        # frame strip: true video (top) and generated (bottom), 8 frames over the first 4 s
        true_frames = read_frames(clip, max_frames=100)
        idx = np.linspace(5, 95, 8).astype(int)
        tile = 160
        top = [cv2.resize(np.asarray(true_frames[i]), (int(tile * true_frames[i].shape[1] / true_frames[i].shape[0]), tile)) for i in idx]
        top = [x[:, (x.shape[1] - tile) // 2:(x.shape[1] - tile) // 2 + tile] for x in top]
        bottom = [cv2.resize(np.asarray(frames[i]), (tile, tile)) for i in idx]
        strips.append(np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0))
    summary = {
        "rows": rows,
        "real_blinks_per_min_range": [round(min(real_blinks), 1), round(max(real_blinks), 1)],
        "real_head_spread_deg_range": [round(min(real_spread), 2), round(max(real_spread), 2)],
        "head_motion": args.head_motion,
    }
    print(json.dumps(summary, indent=1))
    (out / "speak_eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    cv2.imwrite(str(out / "speak_strip.jpg"), cv2.cvtColor(np.concatenate(strips, 0), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 88])


if __name__ == "__main__":
    main()
