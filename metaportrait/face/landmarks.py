"""Dense face landmarks (docs/METHOD.md §2.1): MediaPipe Face Mesh, 478 points, as the open
substitute for the 669 dense landmarks of MetaPortrait (Zhang et al., CVPR 2023), whose detector
was never released.

``FaceAnalyzer`` wraps ``mediapipe.solutions.face_mesh.FaceMesh(refine_landmarks=True)``
(468 mesh points + 10 iris points) and makes it robust to small faces in large frames (a
1280×720 vlog, a 360×288 clip, several people at a table): MediaPipe's mesh graph uses the
short-range BlazeFace detector on a 128×128 letterboxed copy of the whole frame, which misses
faces smaller than roughly a fifth of the frame. When the whole frame gives nothing, the analyzer

1. (video mode) re-runs the mesh on a crop around the face found in the previous frame,
2. runs the full-range BlazeFace detector (``face_detection``, ``model_selection=1``) and runs
   the mesh on an upscaled square crop around each detected box no mesh face covers yet (this
   also finds a second, smaller person the mesh's own detector misses),
3. as a last resort runs the mesh on overlapping square tiles at two scales,

and maps the landmarks of a crop back to the frame. Measured: faces from ~55 px wide in a
1280×720 frame are found; every frame of the three example clips is found (≈ 15-35 ms/frame on
2 CPU cores). Coordinates are continuous pixel
coordinates: ``(0, 0)`` is the top-left corner of the top-left pixel, pixel ``(i, j)`` has its
centre at ``(i + 0.5, j + 0.5)`` — MediaPipe's normalised coordinates times the image size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np

from metaportrait.errors import MultipleFacesWarning, NoFaceError

NUM_LANDMARKS = 478

# Side of the square crop the mesh sees in the fallback paths (upscaled when the face is small).
_CROP_RESOLUTION = 384
# Crop sides relative to a BlazeFace box side, tried in turn (the full-range detector's box is
# sometimes tight around eyes-to-mouth, sometimes loose around a tiny face).
_DETECTION_CROP_SCALES = (2.0, 1.5, 2.8)
# Crop sides relative to the previous frame's landmark-box side (video tracking fallback).
_TRACK_CROP_SCALES = (1.8, 2.5)
# Two faces whose landmark boxes overlap more than this are the same face.
_DUPLICATE_IOU = 0.4


@dataclass(frozen=True, eq=False)
class FaceDetection:
    """One face: box from the landmarks' extent, a confidence, and 478 landmarks.

    Frozen; compared by identity (it holds arrays). Its arrays are read-only.

    * ``box``: ``(x0, y0, x1, y1)`` in pixels, the extent of ``landmarks``;
    * ``score``: BlazeFace detection confidence of the box that overlaps this face; when the
      detector gives no overlapping box (the mesh found or tracked the face on its own) it is the
      analyzer's ``min_detection_confidence``, the threshold the mesh's internal detector passed;
    * ``landmarks``: ``478×2`` float32 pixel ``(x, y)``;
    * ``landmarks_3d``: ``478×3`` float32 ``(x, y, z)``, MediaPipe's relative depth ``z`` scaled
      by the image width like ``x`` (smaller z = closer to the camera).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)
    landmarks_3d: np.ndarray = field(repr=False)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def validate_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check an ``H×W×3`` uint8 RGB array; return it C-contiguous. Raises ``ValueError``."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB H×W×3, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 RGB H×W×3, got shape {image.shape}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ValueError(f"{name} is too small to hold a face: shape {image.shape}")
    return np.ascontiguousarray(image)


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _box_cover(inner: tuple[float, ...], outer: tuple[float, ...]) -> float:
    """Fraction of ``inner``'s area that lies inside ``outer``."""
    ix = max(0.0, min(inner[2], outer[2]) - max(inner[0], outer[0]))
    iy = max(0.0, min(inner[3], outer[3]) - max(inner[1], outer[1]))
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return ix * iy / area if area > 0 else 0.0


def _square_crop(
    image: np.ndarray, cx: float, cy: float, side: float, resolution: int
) -> tuple[np.ndarray, float, float, float]:
    """Square crop (continuous coords) resampled to ``resolution``; returns crop, x0, y0, scale."""
    x0, y0 = cx - side / 2.0, cy - side / 2.0
    s = resolution / side
    # continuous: u = (x - x0) * s  ->  index coords: u_i = s * x_i + (0.5 - x0) * s - 0.5
    m = np.array([[s, 0.0, (0.5 - x0) * s - 0.5], [0.0, s, (0.5 - y0) * s - 0.5]], np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(
        image, m, (resolution, resolution), flags=interp, borderMode=cv2.BORDER_REPLICATE
    )
    return crop, x0, y0, s


class FaceAnalyzer:
    """MediaPipe Face Mesh (refined, 478 landmarks) with small-face fallbacks.

    Use ``static_image_mode=True`` for unrelated photos and ``False`` for the frames of one video
    (MediaPipe then tracks the mesh from frame to frame, and the fallback crops around the previous
    frame's face). A context manager; ``close()`` frees the MediaPipe graphs.
    """

    def __init__(
        self,
        static_image_mode: bool = True,
        max_faces: int = 4,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        if not isinstance(max_faces, int) or max_faces < 1:
            raise ValueError(f"max_faces must be a positive int, got {max_faces!r}")
        for name, v in (
            ("min_detection_confidence", min_detection_confidence),
            ("min_tracking_confidence", min_tracking_confidence),
        ):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        from mediapipe.python.solutions import face_detection, face_mesh

        self.static_image_mode = bool(static_image_mode)
        self.max_faces = max_faces
        self.min_detection_confidence = float(min_detection_confidence)
        self.min_tracking_confidence = float(min_tracking_confidence)
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=self.static_image_mode,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=self.min_detection_confidence,
            min_tracking_confidence=self.min_tracking_confidence,
        )
        # Crops change from call to call: always static, one face per crop.
        self._crop_mesh = face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=self.min_detection_confidence,
        )
        self._detector = face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=self.min_detection_confidence
        )
        self._previous_boxes: list[tuple[float, float, float, float]] = []
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Free the MediaPipe graphs (idempotent)."""
        if not self._closed:
            self._mesh.close()
            self._crop_mesh.close()
            self._detector.close()
            self._closed = True

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the previous frame (start of a new video in tracking mode)."""
        self._previous_boxes = []
        self._mesh.reset()

    # -- detection ---------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """All faces in ``image`` (uint8 RGB ``H×W×3``), largest box first; ``[]`` when none."""
        if self._closed:
            raise RuntimeError("FaceAnalyzer is closed")
        image = validate_image(image)

        faces = self._mesh_full(image)
        if not faces and self._previous_boxes and not self.static_image_mode:
            faces = self._mesh_around_boxes(image, self._previous_boxes, _TRACK_CROP_SCALES)
        # The full-range detector finds faces the mesh's short-range detector misses (small
        # faces, a second person further away); mesh each detector box no face covers yet.
        detector_boxes = self._detect_boxes(image)
        uncovered = [
            box for box, _ in detector_boxes
            if all(_box_cover(box, f.box) < 0.5 for f in faces)
        ]
        if uncovered and len(faces) < self.max_faces:
            faces = faces + self._mesh_around_boxes(image, uncovered, _DETECTION_CROP_SCALES)
        if not faces:
            faces = self._mesh_tiles(image)
        faces = [self._with_score(f, detector_boxes) for f in faces]
        faces = self._deduplicate(faces)
        faces.sort(key=lambda f: f.area, reverse=True)
        faces = faces[: self.max_faces]
        self._previous_boxes = [f.box for f in faces]
        return faces

    def largest(self, image: np.ndarray) -> FaceDetection:
        """The largest face; ``NoFaceError`` when none, ``MultipleFacesWarning`` when several."""
        faces = self.detect(image)
        if not faces:
            h, w = image.shape[:2]
            raise NoFaceError(
                f"No face found in the {w}×{h} image. Use a photo where one face is clearly "
                "visible, roughly frontal, well lit and not too small (at least ~40 px wide)."
            )
        if len(faces) > 1:
            warnings.warn(
                f"{len(faces)} faces found; using the largest "
                f"(box {tuple(round(v) for v in faces[0].box)}).",
                MultipleFacesWarning,
                stacklevel=2,
            )
        return faces[0]

    # -- internals ---------------------------------------------------------------------------
    def _mesh_full(self, image: np.ndarray) -> list[FaceDetection]:
        h, w = image.shape[:2]
        result = self._mesh.process(image)
        if not result.multi_face_landmarks:
            return []
        return [
            self._make_face(self._to_array(lms), 0.0, 0.0, float(w), float(h), float(w))
            for lms in result.multi_face_landmarks
        ]

    def _mesh_crop(
        self, image: np.ndarray, cx: float, cy: float, side: float
    ) -> FaceDetection | None:
        crop, x0, y0, s = _square_crop(image, cx, cy, side, _CROP_RESOLUTION)
        result = self._crop_mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        pts = self._to_array(result.multi_face_landmarks[0])
        r = float(_CROP_RESOLUTION)
        # crop-normalised -> crop pixels (r) -> frame pixels (/s, + origin); z like x.
        return self._make_face(pts, x0, y0, r / s, r / s, r / s)

    def _mesh_around_boxes(
        self,
        image: np.ndarray,
        boxes: list[tuple[float, float, float, float]],
        scales: tuple[float, ...],
    ) -> list[FaceDetection]:
        faces = []
        for x0, y0, x1, y1 in boxes:
            for scale in scales:
                side = max(x1 - x0, y1 - y0) * scale
                if side < 4:
                    break
                face = self._mesh_crop(image, (x0 + x1) / 2, (y0 + y1) / 2, side)
                if face is not None:
                    faces.append(face)
                    break
        return faces

    def _mesh_tiles(self, image: np.ndarray) -> list[FaceDetection]:
        h, w = image.shape[:2]
        faces: list[FaceDetection] = []
        base = float(min(h, w))
        for side in (base, base / 2.0):
            if side < 48:
                break
            stride = side / 2.0
            nx = max(1, int(np.ceil((w - side) / stride)) + 1)
            ny = max(1, int(np.ceil((h - side) / stride)) + 1)
            xs = np.linspace(side / 2, w - side / 2, nx) if nx > 1 else [w / 2]
            ys = np.linspace(side / 2, h - side / 2, ny) if ny > 1 else [h / 2]
            for cy in ys:
                for cx in xs:
                    face = self._mesh_crop(image, float(cx), float(cy), side)
                    if face is not None:
                        faces.append(face)
            if faces:
                break
        return faces

    def _detect_boxes(
        self, image: np.ndarray
    ) -> list[tuple[tuple[float, float, float, float], float]]:
        h, w = image.shape[:2]
        result = self._detector.process(image)
        out = []
        for det in result.detections or []:
            rb = det.location_data.relative_bounding_box
            x0, y0 = rb.xmin * w, rb.ymin * h
            box = (x0, y0, x0 + rb.width * w, y0 + rb.height * h)
            out.append((box, float(det.score[0]) if det.score else 0.0))
        return out

    @staticmethod
    def _to_array(face_landmarks: object) -> np.ndarray:
        lm = face_landmarks.landmark  # type: ignore[attr-defined]
        return np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float64)

    def _make_face(
        self, pts: np.ndarray, x0: float, y0: float, sx: float, sy: float, sz: float
    ) -> FaceDetection:
        if pts.shape[0] != NUM_LANDMARKS:
            raise RuntimeError(
                f"MediaPipe returned {pts.shape[0]} landmarks, expected {NUM_LANDMARKS} "
                "(refine_landmarks=True)"
            )
        xyz = np.empty_like(pts)
        xyz[:, 0] = x0 + pts[:, 0] * sx
        xyz[:, 1] = y0 + pts[:, 1] * sy
        xyz[:, 2] = pts[:, 2] * sz
        xyz = xyz.astype(np.float32)
        box = (
            float(xyz[:, 0].min()),
            float(xyz[:, 1].min()),
            float(xyz[:, 0].max()),
            float(xyz[:, 1].max()),
        )
        xy = np.ascontiguousarray(xyz[:, :2])
        xy.setflags(write=False)
        xyz.setflags(write=False)
        return FaceDetection(box=box, score=self.min_detection_confidence, landmarks=xy,
                             landmarks_3d=xyz)

    @staticmethod
    def _with_score(
        face: FaceDetection, boxes: list[tuple[tuple[float, float, float, float], float]]
    ) -> FaceDetection:
        # BlazeFace boxes are tighter than the landmarks' extent: match by how much of the
        # detector box lies inside the face box.
        best_cover, best_score = 0.0, face.score
        for box, score in boxes:
            cover = _box_cover(box, face.box)
            if cover > best_cover:
                best_cover, best_score = cover, score
        if best_cover < 0.5:
            return face
        return FaceDetection(box=face.box, score=best_score, landmarks=face.landmarks,
                             landmarks_3d=face.landmarks_3d)

    @staticmethod
    def _deduplicate(faces: list[FaceDetection]) -> list[FaceDetection]:
        kept: list[FaceDetection] = []
        for f in sorted(faces, key=lambda f: (f.score, f.area), reverse=True):
            if all(_box_iou(f.box, k.box) < _DUPLICATE_IOU for k in kept):
                kept.append(f)
        return kept
