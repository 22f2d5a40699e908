"""Frames of one person, the input of fast personalization in both model families.

:func:`collect_frames` turns a short video and/or a few photos of one person into square face
crops and their 478 dense landmarks (:class:`PersonFrames`). It is shared by MetaPortrait's
personalization (:mod:`metaportrait.training.personalize`, fine-tuning from the meta-learned weights) and
by the few-shot family (:mod:`metaportrait.training.fewshot_finetune`, Zakharov et al. 2019: an embedding
of T frames, optionally fine-tuned), so it lives below both of them.

Video frames are cropped with one box, fixed on the first frame with a face (as MetaPortrait,
Zhang et al., CVPR 2023, crops its training videos); each photo gets its own box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaportrait.errors import NoFaceError
from metaportrait.face import CropTransform, FaceAnalyzer
from metaportrait.io import DEFAULT_LIMITS, InputLimits, load_image
from metaportrait.video import iter_frames, probe_video

__all__ = ["PersonFrames", "collect_frames"]


@dataclass
class PersonFrames:
    """Cropped frames of one person (uint8 N×S×S×3) and their landmarks (N×478×2, crop pixels)."""

    frames: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def collect_frames(video: str | Path | None = None, images: Sequence[str | Path | np.ndarray] = (), *,
                   size: int = 256, max_frames: int = 64, limits: InputLimits = DEFAULT_LIMITS) -> PersonFrames:
    """Frames of one person from a video (one crop box, fixed on its first face, as the paper) and/or photos.

    Video frames are sampled evenly over the clip. Raises :class:`NoFaceError` when fewer than two
    frames with a face are found.
    """
    frames: list[np.ndarray] = []
    lms: list[np.ndarray] = []
    if video is not None:
        info = probe_video(video, limits)
        stride = max(1, info.num_frames // max_frames)
        crop: CropTransform | None = None
        with FaceAnalyzer(static_image_mode=False, max_faces=1) as fa:
            for i, frame in enumerate(iter_frames(video, limits=limits)):
                if i % stride or len(frames) >= max_frames:
                    continue
                dets = fa.detect(frame)
                if not dets:
                    continue
                if crop is None:
                    crop = CropTransform.from_landmarks(dets[0].landmarks, size=size)
                frames.append(crop.crop(frame))
                lms.append(crop.points_to_crop(dets[0].landmarks).astype(np.float32))
    with FaceAnalyzer(static_image_mode=True) as fa:
        for img in images:
            arr = load_image(img, limits)
            det = fa.largest(arr)
            c = CropTransform.from_landmarks(det.landmarks, size=size)
            frames.append(c.crop(arr))
            lms.append(c.points_to_crop(det.landmarks).astype(np.float32))
    if len(frames) < 2:
        raise NoFaceError(f"personalization needs at least 2 frames with a face, found {len(frames)}")
    return PersonFrames(np.stack(frames), np.stack(lms))
