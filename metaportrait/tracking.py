"""Driving-video landmarks for reenactment: detection per frame, one crop box, One-Euro smoothing
(MetaPortrait §3.1 crops its videos with one box; Casiez et al. 2012 for the filter).
Re-exported by :mod:`metaportrait.pipeline`."""

from __future__ import annotations

import numpy as np

from metaportrait.face import CropTransform, FaceAnalyzer, OneEuroFilter
from metaportrait.face.regions import LEFT_EYE, MOUTH_INNER, MOUTH_OUTER, RIGHT_EYE
from metaportrait.pipeline_types import ReenactOptions

# Eyelids, eye corners and irises: everything within the eye contours' reach gets the fast filter.
_EYE_POINTS = sorted(set(LEFT_EYE) | set(RIGHT_EYE) | set(range(468, 478)))


class LandmarkTracker:
    """Per-frame dense landmarks of one face in a crop box fixed on the first frame with a face,
    One-Euro smoothed with per-region cutoffs (eyelids and irises fastest, so blinks survive).

    Every frame is detected afresh: MediaPipe's tracking mode re-crops each frame around the last
    landmarks, which drifts by a pixel or two even on a still face (27-31 dB on 4 copies of one
    photo, against 56 dB detected afresh); the One-Euro filter handles the jitter instead.
    """

    def __init__(self, size: int, options: ReenactOptions) -> None:
        self.size = size
        self.options = options
        self.crop: CropTransform | None = None
        cutoff = np.full((478, 1), options.smoothing_min_cutoff)
        cutoff[list(MOUTH_OUTER) + list(MOUTH_INNER)] = options.mouth_min_cutoff
        cutoff[_EYE_POINTS] = options.eye_min_cutoff
        self.filter = OneEuroFilter(min_cutoff=cutoff, beta=options.smoothing_beta * 256.0 / size)
        self.last: np.ndarray | None = None
        self.analyzer = FaceAnalyzer(static_image_mode=True, max_faces=1)

    def update(self, frame: np.ndarray, t: float) -> np.ndarray | None:
        """Landmarks (crop pixels) of ``frame`` taken at ``t`` seconds; the last ones when this frame
        has no face; None before the first face."""
        dets = self.analyzer.detect(frame)
        if not dets:
            return self.last  # hold the last pose through a missed detection
        if self.crop is None:
            self.crop = CropTransform.from_landmarks(dets[0].landmarks, size=self.size)
        lm = self.crop.points_to_crop(dets[0].landmarks).astype(np.float32)
        if self.options.smooth_landmarks:
            lm = self.filter(lm, t).astype(np.float32)
        self.last = lm
        return lm

    def reset(self) -> None:
        """Forget the crop box and the smoothing state (a new person in front of the camera)."""
        self.crop, self.last = None, None
        self.filter.reset()

    def close(self) -> None:
        self.analyzer.close()

    def __enter__(self) -> LandmarkTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
