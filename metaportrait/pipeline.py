"""The one-shot reenactment pipeline: a portrait photo + a driving video -> a talking-head video.

MetaPortrait §3.1 at inference time (docs/METHOD.md §1):

1. the source face is detected (largest face, MediaPipe), cropped square with margin to 256² and
   its 478 dense landmarks, landmark image and identity embedding (SFace) are computed once;
2. driving frames stream from the video; each gets landmarks (tracking mode), One-Euro
   smoothing, and one crop box fixed on the first driving frame with a face (as the paper crops);
3. motion transfer: ``absolute`` uses the driving landmarks as they are (same person),
   ``relative`` moves the source's own landmarks by the driving expression and head-pose change
   relative to the first driving frame (cross-identity; the driver's face shape does not leak);
4. the generator (warping + ID-preserving refinement) runs in batches under
   ``torch.inference_mode`` (autocast on CUDA);
5. frames are optionally pasted back into the photo, labelled, and encoded to H.264 with the
   driving audio; nothing is written unless the whole video succeeds.

Memory does not grow with the video length: frames stream through fixed-size batches.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from metaportrait import dubbing
from metaportrait.errors import MetaPortraitError, NoFaceError, WeightsError
from metaportrait.face import (
    CropTransform,
    FaceAnalyzer,
    draw_landmark_image,
    five_points,
    mesh_warp_grid,
    transfer_landmarks,
)
from metaportrait.face.controls import (
    add_smile,
    apply_parts,
    move_gaze,
    raise_brows,
    rotate_head,
    set_eye_opening,
    set_mouth_opening,
)
from metaportrait.face.head_mesh import head_rig, head_warp_grid, silhouette_factors
from metaportrait.face.motion import STABLE_POINTS, irises_inside_eyelids
from metaportrait.face.segmentation import person_mask
from metaportrait.io import DEFAULT_LIMITS, InputLimits, load_image
from metaportrait.models.face_align import align_faces
from metaportrait.models.generator import MetaPortraitGenerator
from metaportrait.runtime import Backend, GeneratorRuntime, resolve_backend
from metaportrait.models.identity_encoder import IdentityEncoder
from metaportrait.models.eye_interior import EyeInteriorNetwork
from metaportrait.models.mouth_interior import MouthInteriorNetwork
from metaportrait.eyes import EyeFiller
from metaportrait.mouth import SOURCE_MARGIN, MouthFiller, read_fill_policy
from metaportrait.render import output_size
from metaportrait.tensors import to_tensor, to_uint8
from metaportrait.video import VideoWriter, add_visible_label, check_output_path, iter_frames, write_frames
from metaportrait.video_reader import probe_driving
from metaportrait.weights import component_folder, read_model_index, resolve_pipeline_folder

# The option, source and result dataclasses, the landmark tracker and the live session live in their
# own modules; they are re-exported here, where they have always been imported from.
from metaportrait.live_session import LiveSession
from metaportrait.pipeline_types import (
    VIDEO_SUFFIXES,
    EditOptions,
    ProgressCallback,
    ReenactOptions,
    ReenactResult,
    SourceFace,
    is_video_path,
)
from metaportrait.render import draw
from metaportrait.tracking import LandmarkTracker

logger = logging.getLogger(__name__)


def _retarget(lm: np.ndarray, eyes: float | None, lips: float | None, smile: float) -> np.ndarray:
    """Eye opening, mouth opening and smile set on landmarks (None / 0: left as they are)."""
    if eyes is not None:
        lm = set_eye_opening(lm, eyes)
    if lips is not None:
        lm = set_mouth_opening(lm, lips)
    if smile:
        lm = add_smile(lm, smile)
    return lm


class MetaPortraitPipeline:
    """Reenact a portrait photo with the motion of a driving video.

    >>> pipe = MetaPortraitPipeline.from_pretrained()          # embedded weights
    >>> pipe.reenact("photo.jpg", "driving.mp4", "out.mp4")    # doctest: +SKIP
    """

    def __init__(
        self,
        generator: MetaPortraitGenerator,
        identity_encoder: IdentityEncoder,
        *,
        device: str | torch.device = "cpu",
        limits: InputLimits = DEFAULT_LIMITS,
        backend: Backend = "auto",
        mouth_interior: MouthInteriorNetwork | None = None,
        eye_interior: EyeInteriorNetwork | None = None,
        mouth_source_margin: float | None = SOURCE_MARGIN,
    ) -> None:
        self.device = torch.device(device)
        # draws the inside of an opening mouth (teeth, tongue) over the warp; None: the warp alone.
        # ``mouth_source_margin``: it draws where the mouth opens this much beyond the source's own
        # (None: every open mouth; a personalized network's fill policy, chosen on held-back frames)
        self.mouth = None if mouth_interior is None else MouthFiller(mouth_interior, self.device,
                                                                      source_margin=mouth_source_margin)
        # draws the lids of an eye that closes further than the source's; None: the warp alone
        self.eyes = None if eye_interior is None else EyeFiller(eye_interior, self.device)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.identity_encoder = identity_encoder.to(self.device).eval().requires_grad_(False)
        self.limits = limits
        self.size = int(generator.config.warping.image_size)
        self.use_prior = bool(generator.config.warping.use_prior)
        # networks that provably add nothing to the mesh-warp prior (zero flow and residual heads, as
        # the embedded weights ship) are skipped: same output, ~3× faster on a CPU
        self.geometry_only = bool(generator.is_geometry_only())
        # how the networks run when they do (metaportrait/runtime.py: ONNX Runtime on the CPU); the
        # runtime is built on first use (the ONNX export takes about half a second)
        self.backend = resolve_backend(backend, self.device)
        self._runtime: GeneratorRuntime | None = None
        # the temporal super-resolution network (ReenactOptions.super_resolution), loaded on first use
        # from the pipeline folder's 'sr' component (from_pretrained sets the folder)
        self.weights_folder: Path | None = None
        self._sr = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        weights: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        identity_encoder: str | Path | None = None,
        adapter: str | Path | None = None,
        limits: InputLimits = DEFAULT_LIMITS,
        backend: Backend = "auto",
        mouth_interior: bool = True,
        eye_interior: bool = True,
    ) -> MetaPortraitPipeline:
        """Load from a pipeline folder, a single generator folder or a Hub repo id (strict).

        ``weights=None`` uses ``$METAPORTRAIT_WEIGHTS`` when set, else the embedded ``weights/`` folder
        of a source checkout (a wheel has none: then pass a folder or a Hub repo id);
        ``adapter`` is a personalization adapter folder (``metaportrait personalize``); ``backend``
        chooses how the networks run (:mod:`metaportrait.runtime`: ``"auto"`` = ONNX Runtime on the CPU);
        ``mouth_interior``: load the folder's mouth-interior network when it has one (strict), or
        the adapter's personalized one when the adapter folder has a ``mouth_interior/``;
        ``eye_interior``: likewise the folder's eye-interior (closing eyelid) network.
        """
        from metaportrait.identity import load_identity_encoder

        component = "generator"
        if adapter is not None:
            from metaportrait.adapters import read_adapter_config

            # an adapter is trained on one component (the meta-learned weights when there are any)
            component = read_adapter_config(adapter).get("metadata", {}).get("component", "generator")
        folder = resolve_pipeline_folder(weights, components=(("base", "meta") if component == "meta" else ("base",))
                                         + (("mouth_interior",) if mouth_interior else ())
                                         + (("eye_interior",) if eye_interior else ()))
        index = read_model_index(folder)
        gen_dir = component_folder(folder, index, component)
        if gen_dir is None:
            raise WeightsError(f"{folder}: model_index.json names no {component} component")
        generator = MetaPortraitGenerator.from_pretrained(gen_dir)
        if adapter is not None:
            from metaportrait.adapters import load_adapter, merge_adapter

            load_adapter(generator, adapter, base_id=component)
            generator = merge_adapter(generator)
        encoder = load_identity_encoder(identity_encoder)
        mouth_dir = component_folder(folder, index, "mouth_interior") if mouth_interior else None
        if mouth_interior and adapter is not None and (Path(adapter) / "mouth_interior").is_dir():
            mouth_dir = Path(adapter) / "mouth_interior"  # personalized on the person's own frames
        mouth = None if mouth_dir is None else MouthInteriorNetwork.from_pretrained(mouth_dir)
        fill_margin = SOURCE_MARGIN if mouth_dir is None else read_fill_policy(mouth_dir)
        eyes_dir = component_folder(folder, index, "eye_interior") if eye_interior else None
        eyes = None if eyes_dir is None else EyeInteriorNetwork.from_pretrained(eyes_dir)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = cls(generator, encoder, device=device, limits=limits, backend=backend, mouth_interior=mouth,
                   eye_interior=eyes, mouth_source_margin=fill_margin)
        pipe.weights_folder = Path(folder)
        return pipe

    def super_resolution_model(self):
        """The temporal SR network of the pipeline folder (loaded once, strictly)."""
        if self._sr is None:
            from metaportrait.superres import load_sr_model

            if self.weights_folder is None:
                raise WeightsError("super-resolution needs a pipeline folder with an 'sr' component "
                                   "(load the pipeline with from_pretrained)")
            self._sr = load_sr_model(self.weights_folder).to(self.device).eval()
        return self._sr

    # ------------------------------------------------------------------ source
    def prepare_source(self, image: str | Path | np.ndarray, analyzer: FaceAnalyzer | None = None) -> SourceFace:
        """Detect, crop and embed the source face (largest face; warns if several)."""
        img = load_image(image, self.limits)
        own = analyzer is None
        analyzer = analyzer or FaceAnalyzer(static_image_mode=True)
        try:
            try:
                det = analyzer.largest(img)
            except NoFaceError as exc:
                raise NoFaceError(f"no face found in the source image ({img.shape[1]}×{img.shape[0]}): {exc}") from exc
        finally:
            if own:
                analyzer.close()
        crop = CropTransform.from_landmarks(det.landmarks, size=self.size)
        return self.source_from_crop(crop.crop(img), crop.points_to_crop(det.landmarks), image=img, crop=crop,
                                     landmarks_3d=crop.points_to_crop(det.landmarks_3d))

    def prepare_sources(self, image: str | Path | np.ndarray) -> list[SourceFace]:
        """Every face of a photo (up to 8), numbered left to right (by the centre of its box)."""
        img = load_image(image, self.limits)
        with FaceAnalyzer(static_image_mode=True, max_faces=8) as analyzer:
            dets = analyzer.detect(img)
        if not dets:
            raise NoFaceError(f"no face found in the source image ({img.shape[1]}×{img.shape[0]})")
        dets = sorted(dets, key=lambda d: (d.box[0] + d.box[2]) / 2)
        out = []
        for det in dets:
            crop = CropTransform.from_landmarks(det.landmarks, size=self.size)
            out.append(self.source_from_crop(crop.crop(img), crop.points_to_crop(det.landmarks), image=img, crop=crop,
                                             landmarks_3d=crop.points_to_crop(det.landmarks_3d)))
        return out

    def source_from_crop(
        self, face: np.ndarray, landmarks: np.ndarray, *, image: np.ndarray | None = None, crop: CropTransform | None = None,
        landmarks_3d: np.ndarray | None = None,
    ) -> SourceFace:
        """A :class:`SourceFace` from an already cropped ``size×size`` face and its landmarks (crop pixels)."""
        if face.shape != (self.size, self.size, 3):
            raise ValueError(f"face crop must be {self.size}×{self.size}×3, got {face.shape}")
        landmarks = np.asarray(landmarks, dtype=np.float32)
        identity = self.embed_identity(face, landmarks)
        if crop is None:
            crop = CropTransform(center=(self.size / 2, self.size / 2), side=float(self.size), size=self.size)
        silhouette = silhouette_factors(landmarks, person_mask(face))
        rings, triangles = head_rig(landmarks, self.size, silhouette)
        return SourceFace(image=face if image is None else image, crop=crop, face=face, landmarks=landmarks,
                          identity=identity, rings=rings, triangles=triangles,
                          landmarks_3d=None if landmarks_3d is None else np.asarray(landmarks_3d, np.float32))

    @torch.inference_mode()
    def embed_identity(self, face: np.ndarray, landmarks: np.ndarray) -> torch.Tensor:
        x = to_tensor(face, self.device)
        pts = torch.from_numpy(five_points(landmarks)).to(self.device)[None]
        return self.identity_encoder(align_faces(x, pts)).float()

    # ------------------------------------------------------------------ driving
    def driving_landmarks(
        self, frames: Iterable[np.ndarray], options: ReenactOptions, stats: dict[str, float], fps: float = 25.0
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield (frame, landmarks in the driving crop or None) for each frame, streaming."""
        for frame, lm, _crop in self.track(frames, options, stats, fps):
            yield frame, lm

    def track(
        self, frames: Iterable[np.ndarray], options: ReenactOptions, stats: dict[str, float], fps: float = 25.0
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, CropTransform | None]]:
        """Yield (frame, smoothed landmarks in the crop or None, the crop) per frame; the crop box is
        fixed on the first frame with a face (as the paper crops its videos)."""
        with LandmarkTracker(self.size, options) as tracker:
            for i, frame in enumerate(frames):
                t0 = time.perf_counter()
                lm = tracker.update(frame, i / fps)
                stats["landmarks"] = stats.get("landmarks", 0.0) + time.perf_counter() - t0
                yield frame, lm, tracker.crop

    def live(self, source: SourceFace, options: ReenactOptions = ReenactOptions()) -> LiveSession:
        """A per-frame session for live use: ``session(camera_frame) -> output frame``."""
        return LiveSession(self, source, options)

    # ------------------------------------------------------------------ generation
    def prior_grid(self, source: SourceFace, target: np.ndarray, full_head: bool = True) -> np.ndarray:
        """Working-size mesh-warp grid ``S×S×2`` moving the source onto ``target`` landmarks: the
        full-head mesh (face + hair/ears/neck rings + still border) or the face mesh alone."""
        if full_head and source.rings is not None:
            return head_warp_grid(source.landmarks, target, source.rings, self.size, triangles=source.triangles)
        return mesh_warp_grid(source.landmarks, target, self.size)

    @torch.inference_mode()
    def motion(
        self, source: SourceFace, driving_landmarks: list[np.ndarray], full_head: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The networks at the working size: sampling grids ``B×S×S×2`` (prior + learned flow) and
        the refinement residual ``B×S×S×3`` in [-1, 1] units (None when it draws nothing)."""
        n = len(driving_landmarks)
        if self.geometry_only:
            return np.stack([self.prior_grid(source, lm, full_head) for lm in driving_landmarks]), None
        src = to_tensor(source.face, self.device).expand(n, -1, -1, -1)
        ls = to_tensor(draw_landmark_image(source.landmarks, self.size), self.device).expand(n, -1, -1, -1)
        ld = to_tensor([draw_landmark_image(lm, self.size) for lm in driving_landmarks], self.device)
        prior = None
        if self.use_prior:
            grids = [self.prior_grid(source, lm, full_head) for lm in driving_landmarks]
            prior = torch.from_numpy(np.stack(grids)).to(self.device)
        if self._runtime is None:
            self._runtime = GeneratorRuntime(self.generator, self.backend)
        grid, res = self._runtime(src, ls, ld, source.identity.expand(n, -1), prior)
        residual = res.permute(0, 2, 3, 1).cpu().numpy() if float(res.abs().max()) > 0 else None
        return grid.cpu().numpy(), residual

    def generate(
        self, source: SourceFace, driving_landmarks: list[np.ndarray], size: int | None = None, full_head: bool = True
    ) -> np.ndarray:
        """Generate ``len(driving_landmarks)`` face crops (uint8 ``B×N×N×3``, N = ``size`` or the
        working size) for landmarks in working-size crop pixels, sampled from the photo at N²."""
        grids, residuals = self.motion(source, driving_landmarks, full_head)
        n = size or self.size
        return np.stack([
            draw(source, g, None if residuals is None else residuals[i], False, n, target=driving_landmarks[i],
                 mouth=self.mouth, eyes=self.eyes) for i, g in enumerate(grids)
        ])

    @staticmethod
    def control(source: SourceFace, target: np.ndarray, options: ReenactOptions) -> np.ndarray:
        """Motion parts, scales and retargeting applied to a transferred target (crop pixels)."""
        if options.parts != ("all",) or options.motion_scale != 1.0 or options.pose_scale != 1.0:
            target = apply_parts(source.landmarks, target, options.parts, options.motion_scale, options.pose_scale)
        return irises_inside_eyelids(_retarget(target, options.eyes, options.lips, options.smile))

    def edited_landmarks(self, source: SourceFace, options: EditOptions) -> np.ndarray:
        """The source's landmarks with ``options``' edits (crop pixels); the source's own when all are default."""
        lm = source.landmarks.copy()
        if options.yaw or options.pitch or options.roll:
            if source.landmarks_3d is None:
                raise ValueError("head rotation needs the source's 3-D landmarks (prepare_source gives them)")
            lm = rotate_head(source.landmarks_3d, options.yaw, options.pitch, options.roll)
            lm = lm + (source.landmarks[list(STABLE_POINTS)].mean(0) - lm[list(STABLE_POINTS)].mean(0))
        lm = _retarget(lm, options.eyes, options.lips, options.smile)
        if options.brows:
            lm = raise_brows(lm, options.brows)
        if options.gaze_x or options.gaze_y:
            lm = move_gaze(lm, options.gaze_x, options.gaze_y)
        return np.asarray(lm, np.float32)

    def edit(self, source: SourceFace, options: EditOptions = EditOptions()) -> np.ndarray:
        """The source photo edited without a driving video (uint8): the face crop at ``options.size``
        or, with ``options.paste_back``, the whole photo at its own resolution. Defaults return the
        photo unchanged."""
        target = self.edited_landmarks(source, options)
        grids, residuals = self.motion(source, [target], options.full_head)
        frame = draw(source, grids[0], None if residuals is None else residuals[0], options.paste_back,
                     output_size(source.crop, options.size, self.size), target=target, mouth=self.mouth, eyes=self.eyes)
        return add_visible_label(frame) if options.visible_label else frame

    def animate(
        self,
        source: SourceFace | Sequence[SourceFace],
        driving_frames: Iterable[np.ndarray],
        options: ReenactOptions = ReenactOptions(),
        stats: dict[str, float] | None = None,
        on_frame: Callable[[int], None] | None = None,
        fps: float = 25.0,
    ) -> Iterator[np.ndarray]:
        """Stream output frames (uint8): the face crop at ``options.size`` (default: 512² when the photo
        has the pixels), or the whole photo at its own resolution with the head moved. Several
        ``source`` faces of one photo (:meth:`prepare_sources`) all follow the driver; they need
        ``options.paste_back`` (the output is the whole photo)."""
        stats = {} if stats is None else stats
        if options.super_resolution:
            yield from self._animate_super_resolved(source, driving_frames, options, stats, on_frame, fps)
            return
        sources = [source] if isinstance(source, SourceFace) else list(source)
        if not sources:
            raise ValueError("animate needs at least one source face")
        if len(sources) > 1 and not options.paste_back:
            raise ValueError("several faces are animated in the whole photo: set paste_back=True")
        first = sources[0]
        reference: np.ndarray | None = None
        pending: list[np.ndarray | None] = []  # driving landmarks (None: no face in that frame)
        missed = 0

        size = output_size(first.crop, options.size, self.size)

        def flush() -> Iterator[np.ndarray]:
            driven = [lm for lm in pending if lm is not None]
            t0 = time.perf_counter()
            motions = []
            for src in sources:
                targets = [self.control(src, transfer_landmarks(src.landmarks, lm, reference, mode=options.mode,
                                                                neutral_mouth=options.neutral_mouth), options)
                           for lm in driven]
                motions.append((self.motion(src, targets, options.full_head) if targets else (None, None), targets))
            stats["generation"] = stats.get("generation", 0.0) + time.perf_counter() - t0
            k = 0
            for lm in pending:
                t1 = time.perf_counter()
                if lm is None:
                    frame = first.image if options.paste_back else first.face_at(size)
                else:
                    frame = None  # several faces draw in turn onto one photo
                    for src, ((grids, residuals), targets) in zip(sources, motions):
                        frame = draw(src, grids[k], None if residuals is None else residuals[k], options.paste_back,
                                     size, canvas=frame, target=targets[k], mouth=self.mouth, eyes=self.eyes)
                    k += 1
                if options.visible_label:
                    frame = add_visible_label(frame)
                stats["render"] = stats.get("render", 0.0) + time.perf_counter() - t1
                yield frame
            pending.clear()

        count = 0
        for _frame, lm in self.driving_landmarks(driving_frames, options, stats, fps=fps):
            if lm is None:
                missed += 1
                pending.append(None)
            else:
                if reference is None:
                    reference = lm
                pending.append(lm)
            if len(pending) >= options.batch_size:
                for frame in flush():
                    count += 1
                    if on_frame:
                        on_frame(count)
                    yield frame
        if pending:
            for frame in flush():
                count += 1
                if on_frame:
                    on_frame(count)
                yield frame
        if reference is None:
            raise NoFaceError("no face was found in any frame of the driving video")
        stats["frames_without_face"] = float(missed)

    def _animate_super_resolved(self, source, driving_frames, options, stats, on_frame, fps) -> Iterator[np.ndarray]:
        """``options.super_resolution``: the face crop at 256² through the temporal SR network (with
        the motion stabilizer) to 512², or at 512² directly when the photo already has the pixels."""
        from metaportrait.superres import StabilizerConfig, upscale_frames

        first = source if isinstance(source, SourceFace) else list(source)[0]
        sr = self.super_resolution_model()
        out = int(sr.config.out_size)
        if first.crop.side >= out:
            warnings.warn(f"super-resolution skipped: the face is {first.crop.side:.0f} px across in the photo, "
                          f"already at least the {out} px SR would give; it is rendered at {out}² from the photo "
                          "itself", stacklevel=3)
            yield from self.animate(source, driving_frames, replace(options, super_resolution=False, size=out),
                                    stats, on_frame, fps)
            return
        small = replace(options, super_resolution=False, size=int(sr.config.in_size), visible_label=False)
        frames = upscale_frames(sr, self.animate(source, driving_frames, small, stats, on_frame, fps),
                                device=self.device, stabilize=StabilizerConfig())
        stats["super_resolution"] = 0.0
        while True:
            t0, before = time.perf_counter(), sum(stats.get(k, 0.0) for k in ("landmarks", "generation", "render"))
            try:
                frame = next(frames)
            except StopIteration:
                break
            after = sum(stats.get(k, 0.0) for k in ("landmarks", "generation", "render"))
            stats["super_resolution"] += time.perf_counter() - t0 - (after - before)
            yield add_visible_label(frame) if options.visible_label else frame

    def animate_video_source(
        self,
        source_frames: Iterable[np.ndarray],
        driving_frames: Iterable[np.ndarray],
        options: ReenactOptions = ReenactOptions(),
        stats: dict[str, float] | None = None,
        fps: float = 25.0,
    ) -> Iterator[np.ndarray]:
        """Dubbing: stream the source video's frames (whole frames) with its face taking the driver's
        mouth and eye motion (``options.parts``: add ``expression`` for the whole expression), while the
        source's own head motion and background stay.

        Per source frame: the face is tracked in one crop box (the first frame's); the frame's own
        landmarks, with the mouth taken to neutral (closed) and the chosen parts moved by the driver's
        change since its first frame, are the target, so the frame keeps its own pose and shape. When
        the driver is shorter, its last expression is held; source frames without a face pass unchanged.
        """
        return dubbing.animate_video_source(self, source_frames, driving_frames, options, stats, fps)

    def reenact(
        self,
        source: str | Path | np.ndarray,
        driving: str | Path,
        output: str | Path,
        options: ReenactOptions = ReenactOptions(),
        progress: ProgressCallback | None = None,
    ) -> ReenactResult:
        """Write the reenacted video to ``output`` (H.264 mp4 with the driving audio).

        Raises a :class:`~metaportrait.errors.MetaPortraitError` subclass on bad input; no
        output file is left behind on failure.
        """
        output = check_output_path(output)  # before any work: a bad output path fails in a second
        info, limits, max_frames = probe_driving(driving, self.limits, options.max_seconds)
        if is_video_path(source):
            if options.super_resolution:
                raise ValueError("super_resolution upscales the face crop of a photo; a video source (dubbing) keeps "
                                 "its whole frames at their own resolution")
            return dubbing.reenact_video_source(self, Path(source), driving, output, options, limits, progress)
        stats: dict[str, float] = {}
        t0 = time.perf_counter()
        if options.face is None:
            src = self.prepare_source(source)
        else:
            faces = self.prepare_sources(source)
            if options.face == "all":
                src = faces
            elif not 1 <= options.face <= len(faces):
                raise NoFaceError(f"face {options.face} was asked for, but the photo has {len(faces)} "
                                  f"face{'s' if len(faces) != 1 else ''} (numbered 1 to {len(faces)} from the left)")
            else:
                src = faces[options.face - 1]
        stats["source"] = time.perf_counter() - t0
        if progress:
            progress(0, max_frames, "frames")
        frames = iter_frames(driving, max_frames=max_frames, limits=limits)
        with VideoWriter(output, fps=info.fps, audio_from=driving if info.has_audio else None,
                         metadata={"title": "metaportrait reenactment", "source_mode": options.mode}) as writer:
            written = write_frames(writer, self.animate(src, frames, options, stats, fps=info.fps), stats, progress,
                                   max_frames)
            t1 = time.perf_counter()
        stats["encoding"] = stats.get("encoding", 0.0) + time.perf_counter() - t1
        missed = int(stats.pop("frames_without_face", 0))
        if missed:
            warnings.warn(f"{missed} of {written} driving frames had no detectable face; the previous pose was held", stacklevel=2)
        return ReenactResult(
            output_path=output, num_frames=written, fps=info.fps, has_audio=info.has_audio,
            frames_without_face=missed, timings=stats,
        )


__all__ = [
    "VIDEO_SUFFIXES",
    "EditOptions",
    "ProgressCallback",
    "draw",
    "is_video_path",
    "LandmarkTracker",
    "LiveSession",
    "MetaPortraitPipeline",
    "ReenactOptions",
    "ReenactResult",
    "SourceFace",
    "MetaPortraitError",
    "to_tensor",
    "to_uint8",
]
