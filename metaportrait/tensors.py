"""uint8 images <-> float tensors in [-1, 1], the value range of every network of the package.

The mapping is ``x / 127.5 - 1`` one way and ``round((clamp(y, -1, 1) + 1) * 127.5)`` the other,
so ``to_uint8(to_tensor(a)) == a`` for every uint8 array ``a``.
"""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(images: np.ndarray | list[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``(B×)H×W×3`` (an array or a list of ``H×W×3`` arrays) -> float ``B×3×H×W`` in [-1, 1].

    The array is copied when it is not contiguous or not writeable (e.g. a read-only memory map of
    prepared frames): torch cannot wrap read-only memory safely. The uint8 data is moved to
    ``device`` before the conversion, so only a quarter of the float bytes cross to an accelerator.
    """
    arr = np.stack(images) if isinstance(images, list) else images
    if arr.ndim == 3:
        arr = arr[None]
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr).to(device)
    return t.permute(0, 3, 1, 2).to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``B×3×H×W`` in [-1, 1] (values outside are clamped) -> uint8 ``B×H×W×3`` on the CPU."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


__all__ = ["to_tensor", "to_uint8"]
