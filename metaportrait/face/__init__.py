"""Face utilities, numpy in / numpy out (docs/METHOD.md §2-4: landmarks, relative motion, mesh warp).

Images are ``uint8`` RGB ``H×W×3``; landmarks are ``float32`` ``478×2`` continuous pixel
coordinates ``(x, y)`` (``(0, 0)`` is the top-left corner of the image, pixel centres at
``i + 0.5``), the convention of MediaPipe's normalised coordinates and of ``grid_sample`` with
``align_corners=False``.
"""

from __future__ import annotations

from metaportrait.face.crop import CropTransform
from metaportrait.face.drawing import EDGE_PALETTE, FACEMESH_EDGES, draw_landmark_image
from metaportrait.face.landmarks import FaceAnalyzer, FaceDetection
from metaportrait.face.mesh_warp import mesh_warp_grid, mesh_warp_image
from metaportrait.face.motion import relative_landmarks, transfer_landmarks
from metaportrait.face.regions import (
    FACE_OVAL,
    LEFT_EYE,
    MOUTH_INNER,
    MOUTH_OUTER,
    RIGHT_EYE,
    RegionBoxes,
    five_points,
    region_boxes,
    region_mask,
)
from metaportrait.face.smoothing import OneEuroFilter, smooth_track

__all__ = [
    "FaceAnalyzer",
    "FaceDetection",
    "CropTransform",
    "FACEMESH_EDGES",
    "EDGE_PALETTE",
    "draw_landmark_image",
    "LEFT_EYE",
    "RIGHT_EYE",
    "MOUTH_OUTER",
    "MOUTH_INNER",
    "FACE_OVAL",
    "RegionBoxes",
    "five_points",
    "region_boxes",
    "region_mask",
    "OneEuroFilter",
    "smooth_track",
    "mesh_warp_grid",
    "mesh_warp_image",
    "relative_landmarks",
    "transfer_landmarks",
]
