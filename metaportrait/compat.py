"""Compatibility shims, applied in one place.

``basicsr==1.4.2`` (and ``facexlib``'s imports of it) import
``torchvision.transforms.functional_tensor``, a module torchvision removed in 0.17. Its only
use there is ``rgb_to_grayscale``, which ``torchvision.transforms.functional`` still provides,
so we alias the old module name to the new one before basicsr is imported.
"""

from __future__ import annotations

import sys


def patch_torchvision_functional_tensor() -> None:
    """Alias ``torchvision.transforms.functional_tensor`` to ``torchvision.transforms.functional``."""
    if "torchvision.transforms.functional_tensor" in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
    except ImportError:
        import torchvision.transforms.functional as functional

        sys.modules["torchvision.transforms.functional_tensor"] = functional


def import_basicsr():
    """Import and return the ``basicsr`` package with the torchvision shim applied."""
    patch_torchvision_functional_tensor()
    import basicsr

    return basicsr
