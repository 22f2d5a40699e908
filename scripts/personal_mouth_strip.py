#!/usr/bin/env python
"""A frame strip of personalization's mouth: an unseen person's later open-mouth frames, drawn from
the clip's first frame by the head mesh warp, with the shipped mouth-interior network, and with the
network personalized on 48 frames of the person's first half (`personalize`, as the CLI runs it).

Per person, two rows of the later frames with the most open mouths; columns: truth, head mesh warp,
shipped mouth network, personalized, then 2× zooms on the mouth of the same four.

    PYTHONPATH=. python scripts/personal_mouth_strip.py --data data/prepared \\
        --clip fi_YwsVpkumbJc fi__ztmNiy8D3c --seconds 30 --output docs/personal_mouth_strip.jpg
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "scripts"))

from metaportrait.evaluation.reenactment import head_mesh_warp, mouth_opening  # noqa: E402
from mouth_strip import zoom  # noqa: E402
from metaportrait.pipeline import MetaPortraitPipeline  # noqa: E402
from metaportrait.training.personalize import PersonalizeOptions, mouth_summary, personalize  # noqa: E402


def mouth_zoom(img: np.ndarray, lm: np.ndarray, out: int = 192) -> np.ndarray:
    """The mouth of ``img`` (landmarks ``lm``), 1.8 mouth widths across, at ``out`` px wide."""
    return zoom(img, lm[[61, 291, 13, 14]].mean(0), int(0.9 * np.linalg.norm(lm[61] - lm[291])), out)


def label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--clip", nargs="+", required=True)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from personalization import heldout_clips, heldout_person

    shipped = MetaPortraitPipeline.from_pretrained(device="cpu")
    rows = []
    for choice in args.clip:
        clip, train, test = heldout_person(args.data, heldout_clips(args.data, choice)[0])
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            res = personalize(train, Path(tmp) / "adapter", options=PersonalizeOptions(seconds=args.seconds))
            print(f"{clip}: {mouth_summary(res.mouth) if res.mouth else 'no mouth network'}")
            tuned = MetaPortraitPipeline.from_pretrained(device="cpu", adapter=Path(tmp) / "adapter")
        source = shipped.source_from_crop(np.ascontiguousarray(train.frames[0]), np.asarray(train.landmarks[0]))
        order = np.argsort([-mouth_opening(lm) for lm in test.landmarks])[: args.rows]
        targets = [np.asarray(test.landmarks[j], np.float32) for j in order]
        warp = head_mesh_warp(shipped, source, targets)
        ours = shipped.generate(source, targets)
        mine = tuned.generate(tuned.source_from_crop(source.face, source.landmarks), targets)
        for k, j in enumerate(order):
            cols = [test.frames[j], warp[k], ours[k], mine[k]]
            names = ["truth", "head mesh warp", "+ shipped mouth", "+ personalized"]
            big = [label(np.ascontiguousarray(c), n) for c, n in zip(cols, names)]
            zooms = [mouth_zoom(np.ascontiguousarray(c), targets[k]) for c in cols]
            zrow = np.concatenate(zooms, 1)
            zrow = cv2.resize(zrow, (1024, int(1024 * zrow.shape[0] / zrow.shape[1])))
            rows.append(np.concatenate([np.concatenate(big, 1), zrow], 0))
    strip = np.concatenate(rows, 0)
    cv2.imwrite(args.output, strip[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.output} ({strip.shape[1]}×{strip.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
