"""Training-data preparation (docs/METHOD.md §2.2 "Crop" and §7 "Data"; docs/DATA_FORMAT.md).

The paper crops every VoxCeleb2 video with **one box around the first frame's landmarks** and
resizes it to 256×256. :func:`prepare_data` does the same for a folder of talking-face clips and
writes the prepared format the datasets read with memory maps:

* per clip: the first frame with a face (among the first ``FIRST_FRAMES_TO_SEARCH`` frames)
  gives the largest face's 478 landmarks → one ``CropTransform`` for the whole clip (slid
  inside the frame where it fits, see :func:`_fit_inside`) → every
  frame cropped to 256 (and 512, the same box, for super-resolution) as ``uint8`` ``.npy``
  arrays; MediaPipe in tracking mode on each 256 crop gives ``landmarks_256.npy``; frames
  without a face (or whose face left the box) are marked ``False`` in ``valid.npy`` and get
  interpolated landmarks; each contiguous run of valid frames is smoothed with the One-Euro
  filter (``smooth_track``), because raw per-frame landmarks jitter;
* ``manifest.json`` lists the clips with their split and the clips that were skipped, with the
  reason (not a decodable video, no face in the first frames, face too small).

Input layouts (found recursively, any mix):

* ``identity/video/clip.mp4`` (VoxCeleb2, HDTF) — identity = first folder, clip id = the path
  without extension;
* a flat folder of videos — identity = clip id = file stem;
* frame folders ``identity/video/*.jpg|png`` — identity = first folder, clip id = folder path.

Several people in one frame (e.g. a table conversation): the largest face of the first frame
with a face is the one kept; the others are ignored.

Splits: identities named in ``heldout_identities`` → ``"heldout_identity"`` (never trained on);
every other clip is ``"train"`` with its last ``heldout_fraction`` of frames held out in time
(``heldout_frames_from``).

Resumable: a clip's arrays are written under temporary names and renamed when complete, then a
``clip.json`` marker (with the source file's size/mtime and the preparation settings) is written
last; a clip whose marker matches is not processed again. Skipped clips leave a ``skipped.json``
marker, so a second run over the same input is a no-op apart from rewriting the manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from metaportrait.errors import InvalidVideoError, MetaPortraitError
from metaportrait.training.prepared import (
    CLIPS_DIR,
    HELDOUT_IDENTITY,
    LANDMARKS_FILE,
    MANIFEST_FILE,
    TRAIN,
    VALID_FILE,
    frames_file,
)

# Inputs and output files have their own modules; their names are re-exported here.
from metaportrait.training.clip_sources import (
    DEFAULT_FRAME_FOLDER_FPS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ClipSource,
    _open_source,
    discover_clips,
)
from metaportrait.training.prepare_files import (
    ClipRecord,
    Manifest,
    SkippedRecord,
    _atomic_save_npy,
    _atomic_write_text,
    _NpyStreamWriter,
)

logger = logging.getLogger(__name__)

FIRST_FRAMES_TO_SEARCH = 10
# A frame is valid when this fraction of its landmarks lies inside the crop.
MIN_INSIDE_FRACTION = 0.8


# -- landmark post-processing ------------------------------------------------------------------
def _fill_invalid(track: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation in time of the landmarks of invalid frames (edges: nearest valid)."""
    out = track.copy()
    idx = np.flatnonzero(valid)
    if idx.size == 0 or idx.size == len(valid):
        return out
    missing = np.flatnonzero(~valid)
    flat = track.reshape(len(track), -1)
    filled = np.empty((missing.size, flat.shape[1]), np.float32)
    for j in range(flat.shape[1]):
        filled[:, j] = np.interp(missing, idx, flat[idx, j])
    out.reshape(len(track), -1)[missing] = filled
    return out


def _smooth_valid_runs(track: np.ndarray, valid: np.ndarray, fps: float) -> np.ndarray:
    """One-Euro smoothing of each contiguous run of valid frames (a lost face resets the filter)."""
    from metaportrait.face import smooth_track

    out = track.copy()
    n = len(valid)
    i = 0
    while i < n:
        if not valid[i]:
            i += 1
            continue
        j = i
        while j < n and valid[j]:
            j += 1
        if j - i > 1:
            out[i:j] = smooth_track(track[i:j], fps)
        i = j
    return out


# -- one clip ----------------------------------------------------------------------------------
CROP_POLICY = "inside-v1"  # part of a clip's signature: changing it re-prepares the clips


def _fit_inside(crop: object, width: int, height: int) -> object:
    """The same square moved (not resized) to lie inside the frame where it fits.

    ``CropTransform.crop`` fills what lies outside the frame by reflection, which on a face near
    the top of a vlog frame paints a mirrored copy of the face; training crops avoid it by
    sliding the box inwards (the face, about half the box side, stays inside). A box larger than
    the frame is centred on the frame along that axis (reflection remains at both edges).
    """
    from metaportrait.face import CropTransform

    side = crop.side  # type: ignore[attr-defined]
    cx, cy = crop.center  # type: ignore[attr-defined]

    def fit(c: float, extent: int) -> float:
        if side >= extent:
            return extent / 2.0
        return min(max(c, side / 2.0), extent - side / 2.0)

    return CropTransform(center=(fit(cx, width), fit(cy, height)), side=side, size=crop.size)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Job:
    source: ClipSource
    output_dir: str
    sizes: tuple[int, ...]
    max_frames: int | None
    fps: float | None
    min_face_px: float


_STATIC_ANALYZER = None


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)
    global _STATIC_ANALYZER
    from metaportrait.face import FaceAnalyzer

    _STATIC_ANALYZER = FaceAnalyzer(static_image_mode=True, max_faces=4)


def _signature(job: _Job) -> dict:
    st = os.stat(job.source.path)
    if job.source.kind == "frames":
        files = sorted(p.name for p in Path(job.source.path).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        size, mtime = len(files), max((os.stat(Path(job.source.path) / f).st_mtime_ns for f in files), default=0)
    else:
        size, mtime = st.st_size, st.st_mtime_ns
    return {
        "source_size": int(size),
        "source_mtime_ns": int(mtime),
        "sizes": list(job.sizes),
        "max_frames": job.max_frames,
        "fps": job.fps,
        "crop_policy": CROP_POLICY,
    }


def _clip_dir(output_dir: str | Path, clip_id: str) -> Path:
    return Path(output_dir) / CLIPS_DIR / clip_id


def _npy_len(path: Path) -> int | None:
    """Length of the first axis of a complete .npy file, or None if unreadable/truncated."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return int(arr.shape[0])


def _cached_result(job: _Job, signature: dict) -> dict | None:
    out = _clip_dir(job.output_dir, job.source.id)
    done, skipped = out / "clip.json", out / "skipped.json"
    if done.is_file():
        meta = json.loads(done.read_text())
        if meta.get("signature") != signature:
            return None
        n = meta["record"]["num_frames"]
        files = [LANDMARKS_FILE, VALID_FILE] + [frames_file(s) for s in job.sizes]
        if all(_npy_len(out / f) == n for f in files):
            return {"clip": meta["record"], "cached": True}
        return None
    if skipped.is_file():
        meta = json.loads(skipped.read_text())
        if meta.get("signature") == signature:
            return {"skipped": meta["record"], "cached": True}
    return None


def _prepare_clip(job: _Job) -> dict:
    """Process one clip; returns ``{"clip": record}`` or ``{"skipped": record}`` (+ timing)."""
    t0 = time.perf_counter()
    src = job.source
    try:
        signature = _signature(job)
    except OSError as e:
        return {"skipped": asdict(SkippedRecord(src.path, f"cannot read the input: {e}")), "seconds": 0.0}
    cached = _cached_result(job, signature)
    if cached is not None:
        cached["seconds"] = time.perf_counter() - t0
        return cached

    out = _clip_dir(job.output_dir, src.id)
    out.mkdir(parents=True, exist_ok=True)
    for marker in ("clip.json", "skipped.json"):
        (out / marker).unlink(missing_ok=True)

    def skip(reason: str) -> dict:
        rec = asdict(SkippedRecord(src.path, reason))
        _atomic_write_text(out / "skipped.json", json.dumps({"record": rec, "signature": signature}))
        return {"skipped": rec, "seconds": time.perf_counter() - t0}

    try:
        result = _process_frames(job, out)
    except (MetaPortraitError, OSError) as e:
        # InvalidVideoError / InvalidImageError / OSError from the decoder, NoFaceError below.
        return skip(str(e).strip() or type(e).__name__)
    if isinstance(result, str):
        return skip(result)
    record = result
    _atomic_write_text(out / "clip.json", json.dumps({"record": asdict(record), "signature": signature}))
    return {"clip": asdict(record), "seconds": time.perf_counter() - t0}


def _process_frames(job: _Job, out: Path) -> ClipRecord | str:
    """Crop, track and write one clip; returns the record, or a skip reason."""
    from metaportrait.face import CropTransform, FaceAnalyzer

    global _STATIC_ANALYZER
    if _STATIC_ANALYZER is None:
        _init_worker()
    src = job.source
    frames, fps = _open_source(src, job.max_frames, job.fps)

    # 1. the first frame with a face (largest face) gives the clip's crop box
    head: list[np.ndarray] = []
    face = None
    for frame in frames:
        head.append(frame)
        faces = _STATIC_ANALYZER.detect(frame)
        if faces:
            face = faces[0]
            break
        if len(head) >= FIRST_FRAMES_TO_SEARCH:
            break
    if not head:
        raise InvalidVideoError(f"{src.path} has no frames")
    if face is None:
        return f"no face in the first {len(head)} frame(s)"
    x0, y0, x1, y1 = face.box
    face_px = max(x1 - x0, y1 - y0)
    if face_px < job.min_face_px:
        return f"face too small ({face_px:.0f} px, minimum {job.min_face_px:.0f} px)"
    crop256 = _fit_inside(CropTransform.from_landmarks(face.landmarks, size=256), head[0].shape[1], head[0].shape[0])
    crops = {s: (crop256 if s == 256 else crop256.rescaled(s)) for s in job.sizes}

    # 2. stream: crop every frame, track landmarks on the 256 crop
    writers = {s: _NpyStreamWriter(out / f"{frames_file(s)}.part", (s, s, 3), np.uint8) for s in job.sizes}
    landmarks: list[np.ndarray] = []
    valid: list[bool] = []
    tracker = FaceAnalyzer(static_image_mode=False, max_faces=1)
    try:

        def all_frames() -> Iterator[np.ndarray]:
            yield from head
            yield from frames

        for frame in all_frames():
            c256 = None
            for s, writer in writers.items():
                c = crops[s].crop(frame)
                writer.write(c)
                if s == 256:
                    c256 = c
            if c256 is None:
                c256 = crop256.crop(frame)
            dets = tracker.detect(c256)
            if dets:
                lm = np.asarray(dets[0].landmarks, np.float32)
                inside = np.mean((lm[:, 0] >= 0) & (lm[:, 0] <= 256) & (lm[:, 1] >= 0) & (lm[:, 1] <= 256))
                landmarks.append(lm)
                valid.append(bool(inside >= MIN_INSIDE_FRACTION))
            else:
                landmarks.append(np.zeros((478, 2), np.float32))
                valid.append(False)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        tracker.close()
    for w in writers.values():
        w.close()

    valid_arr = np.asarray(valid, bool)
    if not valid_arr.any():
        for s in job.sizes:
            (out / f"{frames_file(s)}.part").unlink(missing_ok=True)
        return "the face was lost in every frame of the crop"
    track = _fill_invalid(np.stack(landmarks).astype(np.float32), valid_arr)
    track = _smooth_valid_runs(track, valid_arr, fps).astype(np.float32)

    _atomic_save_npy(out / LANDMARKS_FILE, track)
    _atomic_save_npy(out / VALID_FILE, valid_arr)
    for s in job.sizes:
        os.replace(out / f"{frames_file(s)}.part", out / frames_file(s))
    for s in (256, 512):  # outputs of an earlier run with other sizes
        if s not in job.sizes:
            (out / frames_file(s)).unlink(missing_ok=True)
    box = tuple(float(v) for v in crop256.box)
    return ClipRecord(
        id=src.id,
        identity=src.identity,
        source_file=src.path,
        fps=float(fps),
        num_frames=len(valid),
        has_512=512 in job.sizes,
        num_valid=int(valid_arr.sum()),
        crop_box=box,
    )


# -- the whole folder --------------------------------------------------------------------------
def _default_workers() -> int:
    return max(1, (os.cpu_count() or 1))


def assign_splits(
    clips: list[ClipRecord], heldout_identities: Sequence[str], heldout_fraction: float
) -> list[ClipRecord]:
    """Set ``split`` and ``heldout_frames_from`` of every clip (in place; returns the list).

    Held-out identities: ``split="heldout_identity"``, ``heldout_frames_from=0`` (all frames are
    held out). Others: ``split="train"``, frames ``>= num_frames - round(num_frames * fraction)``
    held out in time (at least one frame stays for training).
    """
    held = set(heldout_identities)
    for c in clips:
        if c.identity in held:
            c.split = HELDOUT_IDENTITY
            c.heldout_frames_from = 0
        else:
            c.split = TRAIN
            n_held = int(round(c.num_frames * heldout_fraction))
            c.heldout_frames_from = max(1, c.num_frames - n_held)
    return clips


def prepare_data(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    sizes: Sequence[int] = (256, 512),
    workers: int | None = None,
    max_frames_per_clip: int | None = None,
    heldout_identities: Sequence[str] = (),
    heldout_fraction: float = 0.2,
    fps: float | None = None,
    min_face_px: float = 32.0,
    progress: bool = True,
) -> Manifest:
    """Prepare every clip under ``input_dir`` into ``output_dir`` (docs/DATA_FORMAT.md).

    Args:
        input_dir: folder of clips (layouts in the module docstring).
        output_dir: created if needed; ``manifest.json`` and ``clips/<id>/`` are written there.
        sizes: crop sizes to write; must contain 256 (landmarks live in the 256 crop); 512 adds
            ``frames_512.npy`` for super-resolution.
        workers: processes (each with its own ``FaceAnalyzer``); default ``os.cpu_count()``;
            ``1`` runs in this process.
        max_frames_per_clip: keep only the first N frames of each clip (long clips).
        heldout_identities: identities never trained on (``split="heldout_identity"``).
        heldout_fraction: for the other clips, the last fraction of frames held out in time.
        fps: resample videos in time to this frame rate (nearest frame); frame folders are given
            this rate (default 25). ``None`` keeps each video's rate.
        min_face_px: clips whose first face is smaller (box side in source pixels) are skipped.
        progress: show a tqdm progress bar.

    Returns:
        The :class:`Manifest`, also written to ``output_dir/manifest.json``.
    """
    sizes_t = tuple(sorted({int(s) for s in sizes}))
    if 256 not in sizes_t or not set(sizes_t) <= {256, 512}:
        raise ValueError(f"sizes must contain 256 and only 256/512, got {tuple(sizes)!r}")
    if not 0.0 <= float(heldout_fraction) < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    if max_frames_per_clip is not None and int(max_frames_per_clip) < 2:
        raise ValueError(f"max_frames_per_clip must be >= 2 or None, got {max_frames_per_clip!r}")
    if fps is not None and not float(fps) > 0:
        raise ValueError(f"fps must be positive or None, got {fps!r}")
    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")

    sources = discover_clips(input_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        _Job(s, str(out), sizes_t, None if max_frames_per_clip is None else int(max_frames_per_clip),
             None if fps is None else float(fps), float(min_face_px))
        for s in sources
    ]
    known = {s.identity for s in sources}
    unknown = sorted(set(heldout_identities) - known)
    if unknown:
        logger.warning("held-out identities not found in %s: %s", input_dir, unknown)

    from tqdm import tqdm

    results: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), unit="clip", desc="prepare-data", disable=not progress)
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(_prepare_clip(job))
            bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")  # MediaPipe graphs must not be forked
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
            # long clips first so the pool is not left waiting on one at the end
            order = sorted(jobs, key=lambda j: -_rough_cost(j))
            for r in pool.imap_unordered(_prepare_clip, order):
                results.append(r)
                bar.update(1)
    bar.close()

    clips = [ClipRecord(**{**r["clip"], "crop_box": tuple(r["clip"]["crop_box"]) if r["clip"].get("crop_box") else None})
             for r in results if "clip" in r]
    clips.sort(key=lambda c: c.id)
    assign_splits(clips, heldout_identities, float(heldout_fraction))
    skipped = sorted((SkippedRecord(**r["skipped"]) for r in results if "skipped" in r), key=lambda s: s.source_file)
    manifest = Manifest(
        clips=clips,
        skipped=skipped,
        heldout_identities=sorted(set(heldout_identities)),
        heldout_fraction=float(heldout_fraction),
        sizes=list(sizes_t),
    )
    manifest.save(out / MANIFEST_FILE)
    fresh = [r for r in results if not r.get("cached") and "clip" in r]
    new_frames = sum(r["clip"]["num_frames"] for r in fresh)
    new_seconds = sum(r["seconds"] for r in fresh)
    logger.info(
        "prepared %d clips (%d new: %d frames, %.1f worker-s, %.1f ms/frame; %d skipped) in %.1f s",
        len(clips), len(fresh), new_frames, new_seconds, 1000 * new_seconds / max(new_frames, 1),
        len(skipped), time.perf_counter() - t0,
    )
    return manifest


def _rough_cost(job: _Job) -> int:
    try:
        return os.stat(job.source.path).st_size
    except OSError:
        return 0


# -- CLI ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``prepare-data`` options (for ``metaportrait prepare-data``)."""
    p.add_argument("--input", required=True, help="folder of clips: identity/video/clip.mp4, flat videos, or frame folders")
    p.add_argument("--output", required=True, help="prepared-data folder (manifest.json, clips/)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="crop sizes (256 required; 512 for SR)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.add_argument("--max-frames-per-clip", type=int, default=None, help="keep only the first N frames of a clip")
    p.add_argument("--heldout-identities", default="", help="comma-separated identities never trained on")
    p.add_argument("--heldout-fraction", type=float, default=0.2, help="last fraction of each training clip held out in time")
    p.add_argument("--fps", type=float, default=None, help="resample videos to this frame rate (default: keep)")
    p.add_argument("--min-face-px", type=float, default=32.0, help="skip clips whose face is smaller than this")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    held = [s.strip() for s in args.heldout_identities.split(",") if s.strip()]
    t0 = time.perf_counter()
    m = prepare_data(
        args.input, args.output, sizes=args.sizes, workers=args.workers,
        max_frames_per_clip=args.max_frames_per_clip, heldout_identities=held,
        heldout_fraction=args.heldout_fraction, fps=args.fps, min_face_px=args.min_face_px,
        progress=not args.quiet,
    )
    frames = sum(c.num_frames for c in m.clips)
    held_clips = sum(c.split == HELDOUT_IDENTITY for c in m.clips)
    print(
        f"{len(m.clips)} clips ({held_clips} held-out identity), {len(m.identities)} identities, "
        f"{frames} frames, {len(m.skipped)} skipped, {time.perf_counter() - t0:.1f} s -> {Path(args.output) / MANIFEST_FILE}"
    )
    for s in m.skipped:
        print(f"  skipped {s.source_file}: {s.reason}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m metaportrait.training.prepare --input DIR --output DIR [...]``."""
    parser = argparse.ArgumentParser(prog="metaportrait prepare-data", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
