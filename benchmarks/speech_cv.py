"""Choose a recipe of the audio-to-motion model by 5-fold cross-validation in time on the TRAINING
speakers (the unseen people of ``benchmarks/speak_eval.py`` take no part).

Each fold holds out one fifth of every training clip's time (``train_speech --fold k``) and scores
the mouth opening (inner-lip gap, each clip its own Pearson r, averaged over the clips) every 100
steps; the table is the mean over the folds at each step, so a recipe and its step count are chosen
on the same footing (a best-per-fold checkpoint would be chosen on its own validation frames).

``PYTHONPATH=. python benchmarks/speech_cv.py --data /work/data/speech -- --n-mels 20 --hidden 32 \\
    --freq-mask 4 --visemes --steps 800``  (the arguments after ``--`` go to ``train_speech``)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from metaportrait.training import train_speech


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/data/speech")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="fold k trains with seed + k")
    p.add_argument("--cache", default=None, help="feature cache shared by the folds (default: a temporary folder)")
    args = p.parse_args(argv[:cut])
    recipe = argv[cut + 1:]
    work = Path(tempfile.mkdtemp(prefix="speech-cv-"))
    cache = args.cache or str(work / "cache")
    curves, steps = [], None
    for k in range(args.folds):
        out = work / f"fold{k}"
        train_speech.main(["--data", args.data, "--output", str(out), "--cache", cache, "--validation",
                           str(1.0 / args.folds), "--fold", str(k), *recipe, "--seed", str(args.seed + k)])
        log = json.loads((out / "training.json").read_text())["log"]
        steps = [e["step"] for e in log]
        curves.append([e["val_mouth_r"] for e in log])
    curve = np.asarray(curves)
    best = int(np.argmax(curve.mean(0)))
    print("| step | " + " | ".join(f"fold {k}" for k in range(args.folds)) + " | mean |")
    print("|---" * (args.folds + 2) + "|")
    for i, s in enumerate(steps):
        print(f"| {s} | " + " | ".join(f"{v:.3f}" for v in curve[:, i]) + f" | {curve[:, i].mean():.3f} |")
    print(json.dumps({"recipe": " ".join(recipe), "seed": args.seed, "best_step": steps[best],
                      "mean_r_at_best_step": round(float(curve[:, best].mean()), 3),
                      "mean_r_last_step": round(float(curve[:, -1].mean()), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
