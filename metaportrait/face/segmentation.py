"""Person segmentation (MediaPipe selfie segmentation, shipped inside the ``mediapipe`` wheel).

Used once per source photo to find where the head's silhouette (hair, ears) ends along each ray of
the full-head mesh (:mod:`metaportrait.face.head_mesh`), so hair moves with the head up to its
edge and the background just outside it stays still.
"""

from __future__ import annotations

import numpy as np

from metaportrait.face.landmarks import validate_image


def person_mask(image: np.ndarray) -> np.ndarray:
    """``H×W`` float32 in [0, 1]: how likely each pixel belongs to a person (uint8 RGB ``H×W×3`` in).

    MediaPipe's general (square, 256²) selfie-segmentation model; a few milliseconds on a CPU.
    """
    image = validate_image(image)
    from mediapipe.python.solutions import selfie_segmentation

    with selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        result = seg.process(image)
    mask = result.segmentation_mask
    if mask is None:
        return np.zeros(image.shape[:2], np.float32)
    return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)


__all__ = ["person_mask"]
