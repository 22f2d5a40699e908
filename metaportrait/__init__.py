"""MetaPortrait: identity-preserving talking-head generation with fast personalization.

Conventions used across the package (every docstring relies on them):

* torch image tensors are float, RGB, ``B×3×H×W`` with values in ``[-1, 1]``;
* numpy images are ``uint8`` RGB arrays ``H×W×3`` (values 0..255);
* landmarks are ``float32`` numpy arrays ``478×2`` of pixel coordinates ``(x, y)`` in the image
  they were detected on (MediaPipe Face Mesh with refined irises: 468 mesh + 10 iris points).

Layering: ``app.py`` -> ``metaportrait.pipeline`` -> ``metaportrait.models``. Models are pure
tensors in/out; file and video I/O live in ``metaportrait.io``/``metaportrait.video``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from metaportrait.errors import (  # noqa: E402
    InputTooLargeError,
    InvalidImageError,
    InvalidVideoError,
    MetaPortraitError,
    MultipleFacesWarning,
    NoFaceError,
    WeightsError,
)

__all__ = [
    "__version__",
    "MetaPortraitError",
    "NoFaceError",
    "InvalidImageError",
    "InvalidVideoError",
    "InputTooLargeError",
    "WeightsError",
    "MultipleFacesWarning",
]
