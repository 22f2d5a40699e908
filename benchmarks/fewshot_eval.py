"""Few-shot family (Zakharov et al. 2019) on the three held-out people (README "Few-shot family").

For each held-out person (a ``heldout_identity`` clip of the prepared data, 384 frames): fine-tune
(FT, paper §3.3) on T = 1, 8, 32 frames spread over the first half of the clip (frames 0–191),
then drive the personalised generator with the landmarks of held-out later frames (every 4th of
frames 256–383) and compare each output (upsampled to 256²) with the true frame:

* face detected: MediaPipe Face Mesh finds a face in the output (target >= 95 %);
* identity: SFace cosine between the output and the true frame, both aligned with the true
  frame's landmarks (the output is drawn at them) (target >= 0.5);
* SSIM against the true frame, 256² (target >= 0.6);
* mouth r: Pearson r of the mouth opening (inner-lip gap / mouth width) of the output (detected)
  and of the driver (target >= 0.7).

Also measured, as references: FF (feed-forward ψ = P·ê, T = 32, no fine-tuning), and MetaPortrait
(source = the clip's first frame, same driving landmarks). Writes
``OUT/fewshot_eval_<person>.json`` per person; ``--report`` merges them into ``OUT/fewshot_eval.md``
and the strip ``OUT/fewshot_strip.jpg`` (per person: true | few-shot FT, T = 32 | MetaPortrait).

``PYTHONPATH=. python benchmarks/fewshot_eval.py --people fi_RGuHfwIRKpA --t 32 8`` (one process per
person, one thread each; ``--t 1 --only-ft --suffix _t1`` runs T = 1 alongside), then
``PYTHONPATH=. python benchmarks/fewshot_eval.py --report``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HELDOUT = ("fi_RGuHfwIRKpA", "fi_YwsVpkumbJc", "fi__ztmNiy8D3c")
TARGETS = {"face": 0.95, "csim": 0.5, "ssim": 0.6, "mouth_r": 0.7}
STRIP_FRAMES = 4


def person_clip(data, person: str):
    from metaportrait.training.prepared import HELDOUT_IDENTITY

    for clip in data.clips_in(HELDOUT_IDENTITY):
        if clip.id.split("/")[0] == person:
            return clip
    raise SystemExit(f"no heldout_identity clip of {person} in {data.data_dir}")


def score(outputs: np.ndarray, truths: np.ndarray, driver_lms: np.ndarray, analyzer, encoder) -> dict:
    """Mean metrics of 256² uint8 outputs against the true frames (see the module docstring)."""
    from metaportrait.evaluation.metrics import ssim
    from metaportrait.evaluation.reenactment import mouth_opening, opening_correlation
    from metaportrait.identity import identity_embedding

    found, csim, ssims, mouth_out = [], [], [], []
    for out, gt, lm in zip(outputs, truths, driver_lms):
        dets = analyzer.detect(np.ascontiguousarray(out))
        found.append(bool(dets))
        mouth_out.append(mouth_opening(dets[0].landmarks) if dets else float("nan"))
        a = identity_embedding(encoder, np.ascontiguousarray(out), lm)
        b = identity_embedding(encoder, np.ascontiguousarray(gt), lm)
        csim.append(float((a * b).sum()))
        ssims.append(ssim(out, gt))
    r = opening_correlation([mouth_opening(lm) for lm in driver_lms], mouth_out, 0.5)
    return {"face": float(np.mean(found)), "csim": float(np.mean(csim)), "ssim": float(np.mean(ssims)), "mouth_r": r}


def run_person(args, person: str) -> dict:
    from metaportrait.face import FaceAnalyzer
    from metaportrait.fewshot_pipeline import load_fewshot_folder
    from metaportrait.training.fewshot_finetune import FT_SCHEDULE, fewshot_loss_weights, person_tensors
    from metaportrait.identity import load_identity_encoder
    from metaportrait.person import PersonFrames
    from metaportrait.pipeline import MetaPortraitPipeline
    from metaportrait.tensors import to_uint8
    from metaportrait.training.fewshot import finetune_fewshot
    from metaportrait.training.prepared import PreparedData

    data = PreparedData(args.data)
    clip = person_clip(data, person)
    frames, lms, valid = data.frames(clip), data.landmarks(clip), data.valid(clip)
    first = [i for i in range(0, 192) if valid[i]]
    test = [i for i in range(256, 384, 4) if valid[i]]
    truths = np.stack([np.asarray(frames[i]) for i in test])
    test_lms = np.stack([np.asarray(lms[i], np.float32) for i in test])
    emb, gen, disc = load_fewshot_folder(Path(args.weights))
    size = gen.config.image_size
    _, test_y = person_tensors(PersonFrames(truths, test_lms), size)
    encoder = load_identity_encoder()
    schedule = FT_SCHEDULE.replace(steps=args.steps) if args.steps is not None else FT_SCHEDULE
    rows: list[dict] = []

    def render(g) -> np.ndarray:
        with torch.no_grad():
            out = to_uint8(g.eval()(test_y))
        return np.stack([cv2.resize(o, (256, 256), interpolation=cv2.INTER_CUBIC) for o in out])

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"person": person, "clip": clip.id, "train_frames": "T spread over frames 0-191",
              "test_frames": test, "threads": torch.get_num_threads(), "schedule": schedule.kwargs(), "rows": rows}
    result["schedule"]["autocast_dtype"] = str(result["schedule"]["autocast_dtype"])

    def save() -> None:  # after every variant, so a long run leaves its finished rows
        (out_dir / f"fewshot_eval_{person}{args.suffix}.json").write_text(json.dumps(result, indent=1))

    with FaceAnalyzer(static_image_mode=True, max_faces=1) as analyzer:
        variants = [("FF", 32)] + [("FT", t) for t in sorted(args.t, reverse=True)]
        if args.only_ft:
            variants = variants[1:]
        t0 = time.perf_counter()
        pipe = MetaPortraitPipeline.from_pretrained(device="cpu")
        s0 = first[0]
        source = pipe.source_from_crop(np.ascontiguousarray(frames[s0]), np.asarray(lms[s0], np.float32))
        mp_out = np.concatenate([pipe.generate(source, list(test_lms[i: i + 8])) for i in range(0, len(test), 8)])
        if not args.only_ft:
            m = score(mp_out, truths, test_lms, analyzer, encoder)
            rows.append({"person": person, "variant": "MetaPortrait (one photo)", "T": 1, "steps": 0,
                         "seconds": time.perf_counter() - t0, "seconds_per_step": 0.0, **m})
            print(json.dumps(rows[-1]), flush=True)
            save()
        for variant, t in variants:
            idx = [first[int(round(j))] for j in np.linspace(0, len(first) - 1, t)]
            person_t = PersonFrames(np.stack([np.asarray(frames[i]) for i in idx]),
                                    np.stack([np.asarray(lms[i], np.float32) for i in idx]))
            f, y = person_tensors(person_t, size)
            torch.manual_seed(0)
            log_every = max(1, schedule.steps // 10)

            def progress(step: int, losses: dict) -> None:
                if step % log_every == 0:
                    print(f"  {person} T={t} step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in losses.items()),
                          flush=True)

            res = finetune_fewshot(emb, gen, disc, f, y, **schedule.kwargs(), feed_forward=variant == "FF",
                                   loss_weights=fewshot_loss_weights(Path(args.weights)), evaluate=False,
                                   callback=progress)
            outs = render(res.generator)
            m = score(outs, truths, test_lms, analyzer, encoder)
            row = {"person": person, "variant": variant, "T": t, "steps": len(res.losses),
                   "seconds": res.total_seconds, "seconds_per_step": res.seconds_per_step, **m}
            print(json.dumps(row), flush=True)
            rows.append(row)
            save()
            if variant == "FT" and t == 32:
                pick = np.linspace(0, len(test) - 1, STRIP_FRAMES).round().astype(int)
                img = np.concatenate([np.concatenate([truths[k], outs[k], mp_out[k]], axis=1) for k in pick])
                cv2.imwrite(str(out_dir / f"fewshot_strip_{person}.png"), img[:, :, ::-1])
    return result


def time_schedule(args) -> None:
    """Seconds per FT step at T = 32 (``--time-steps`` steps after one warm-up step) and the
    schedule's projected time; also without bf16 autocast for comparison."""
    import os

    from metaportrait.fewshot_pipeline import load_fewshot_folder
    from metaportrait.training.fewshot_finetune import FT_SCHEDULE, fewshot_loss_weights, person_tensors
    from metaportrait.person import PersonFrames
    from metaportrait.training.fewshot import finetune_fewshot
    from metaportrait.training.prepared import PreparedData

    data = PreparedData(args.data)
    clip = person_clip(data, args.people[0])
    idx = np.linspace(0, 191, 32).round().astype(int)
    person = PersonFrames(np.stack([np.asarray(data.frames(clip)[i]) for i in idx]),
                          np.stack([np.asarray(data.landmarks(clip)[i], np.float32) for i in idx]))
    emb, gen, disc = load_fewshot_folder(Path(args.weights))
    f, y = person_tensors(person, gen.config.image_size)
    print(f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")
    for bf16 in (True, False):
        kw = FT_SCHEDULE.replace(bfloat16=bf16, steps=1).kwargs()
        finetune_fewshot(emb, gen, disc, f, y, **kw, loss_weights=fewshot_loss_weights(Path(args.weights)),
                         evaluate=False)
        kw["steps"] = args.time_steps
        res = finetune_fewshot(emb, gen, disc, f, y, **kw, loss_weights=fewshot_loss_weights(Path(args.weights)),
                               evaluate=False)
        print(f"bf16 autocast {bf16}: {res.seconds_per_step:.2f} s/step, embedding {res.embed_seconds:.2f} s; "
              f"{FT_SCHEDULE.steps} steps -> {res.embed_seconds + FT_SCHEDULE.steps * res.seconds_per_step:.0f} s")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def report(out: Path) -> None:
    results = [json.loads(f.read_text()) for p in HELDOUT for f in sorted(out.glob(f"fewshot_eval_{p}*.json"))]
    if not results:
        raise SystemExit(f"no fewshot_eval_<person>.json in {out}")
    lines = ["| person | variant | T | steps | seconds (1 thread) | face detected | SFace cos | SSIM | mouth r |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, int], list[dict]] = {}
    for res in results:
        for r in res["rows"]:
            groups.setdefault((r["variant"], r["T"]), []).append(r)
            lines.append(f"| {r['person']} | {r['variant']} | {r['T']} | {r['steps']} | {r['seconds']:.0f} | "
                         f"{r['face']:.0%} | {r['csim']:.3f} | {r['ssim']:.3f} | {r['mouth_r']:.2f} |")
    lines += ["", "| variant | T | face detected | SFace cos | SSIM | mouth r | targets met |", "|---|---|---|---|---|---|---|"]
    for (variant, t), rs in groups.items():
        mean = {k: float(np.nanmean([r[k] for r in rs])) for k in TARGETS}
        met = [k for k, v in TARGETS.items() if all(np.isfinite(r[k]) and r[k] >= v for r in rs)]
        lines.append(f"| {variant} | {t} | {mean['face']:.0%} | {mean['csim']:.3f} | {mean['ssim']:.3f} | "
                     f"{mean['mouth_r']:.2f} | {', '.join(met) or 'none'} (all {len(rs)} people) |")
    text = "\n".join(lines)
    print(text)
    (out / "fewshot_eval.md").write_text(text + "\n")
    people = [p for p in HELDOUT if (out / f"fewshot_strip_{p}.png").is_file()]
    strips = [cv2.imread(str(out / f"fewshot_strip_{p}.png")) for p in people]
    if strips:
        strip = np.concatenate(strips, axis=1)  # half size: the file stays small enough to commit
        cv2.imwrite(str(out / "fewshot_strip.jpg"), cv2.resize(strip, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, 88])
        for p in people:
            (out / f"fewshot_strip_{p}.png").unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/data/prepared")
    ap.add_argument("--weights", default=str(REPO / "weights" / "fewshot"), help="few-shot component folder")
    ap.add_argument("--people", nargs="*", default=list(HELDOUT))
    ap.add_argument("--t", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the CLI's schedule)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--only-ft", action="store_true", help="skip the references (MetaPortrait, FF)")
    ap.add_argument("--suffix", default="", help="appended to the per-person JSON name (parallel runs)")
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many FT steps at T = 32")
    ap.add_argument("--report", action="store_true", help="merge the per-person results into a table and a strip")
    args = ap.parse_args()
    if args.report:
        report(Path(args.out))
        return
    torch.set_num_threads(args.threads)
    if args.time_steps:
        time_schedule(args)
        return
    for person in args.people:
        run_person(args, person)


if __name__ == "__main__":
    main()
