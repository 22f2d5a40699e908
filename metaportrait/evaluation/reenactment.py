"""Evaluation of reenactment (issue "Train the base model", part 5; MetaPortrait §4.1, Table 1).

Two protocols on a prepared data folder (docs/DATA_FORMAT.md):

* **self-reenactment** — source = the first held-out frame of a clip (``--source-frame closed``:
  its most closed mouth, the case the mouth-interior network is for), driving = its later frames,
  ground truth = the driving frames (same crop box for the whole clip, as the paper crops);
  besides the whole crop, PSNR / SSIM / detail ratio in the mouth box (:func:`mouth_box`) of the
  frames whose mouth is open, and PSNR / detail ratio in the *stretch region* (:func:`stretch_mask`:
  where the full-head mesh warp magnifies the source — the opening mouth, opening eyes, the side a
  turning head uncovers; the same pixels for every method), where geometry fails and the gated
  refinement residual may draw;
  metrics PSNR, SSIM, L1 (full 256² crop), CSIM (SFace cosine of output vs source), landmark
  errors of the output against the driving landmarks (MediaPipe on the output, normalised by the
  driving inter-ocular distance) split into *expression* (residual after the best similarity
  fit, like AED) and *pose* (displacement explained by that similarity, like APD), and E_warp
  (temporal consistency, :mod:`metaportrait.evaluation.temporal`; docs/METHOD.md §11);
* **cross-identity** — source = a frame of one held-out person, driving = another person's clip
  in ``relative`` mode; no ground truth: CSIM to the source and landmark error against the
  transferred target landmarks.

Methods compared in the same table: "no motion" (output = source), the classical dense mesh warp
(piecewise-affine warp of the source over the MediaPipe mesh), the same warp blurred (σ = 1 px:
PSNR/SSIM reward blur where edges are uncertain, so this is the honest bar for a model trained on
L1/SSIM) and the trained model. FID and
LPIPS need ImageNet/Inception weights that do not ship offline; they are reported as missing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from metaportrait.evaluation.metrics import psnr, ssim  # the package's one PSNR / SSIM, re-exported here
from metaportrait.face import FaceAnalyzer, mesh_warp_image, transfer_landmarks
from metaportrait.face.regions import LEFT_EYE, MOUTH_INNER, RIGHT_EYE
from metaportrait.training.prepared import HELDOUT_FRAMES, HELDOUT_IDENTITY, ClipInfo, PreparedData

Method = Callable[["object", list[np.ndarray]], np.ndarray]


@dataclass
class MethodScores:
    method: str
    protocol: str
    psnr: float = float("nan")
    ssim: float = float("nan")
    l1: float = float("nan")
    csim: float = float("nan")
    landmark_error: float = float("nan")
    expression_error: float = float("nan")
    pose_error: float = float("nan")
    e_warp: float = float("nan")
    detail: float = float("nan")
    mouth_psnr: float = float("nan")
    mouth_ssim: float = float("nan")
    mouth_detail: float = float("nan")
    stretch_psnr: float = float("nan")
    stretch_detail: float = float("nan")
    eye_r: float = float("nan")
    mouth_r: float = float("nan")
    face_missed: float = float("nan")
    frames: int = 0
    ms_per_frame: float = float("nan")


@dataclass
class EvaluationReport:
    scores: list[MethodScores]
    clips: list[str]
    settings: dict = field(default_factory=dict)

    def to_json(self) -> str:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return json.dumps(
            {"settings": self.settings, "clips": self.clips,
             "scores": [{k: clean(v) for k, v in asdict(s).items()} for s in self.scores]},
            indent=2,
        )

    def to_markdown(self) -> str:
        head = ("| protocol | method | PSNR ↑ | SSIM ↑ | L1 ↓ | detail → 1 | mouth PSNR ↑ | mouth SSIM ↑ "
                "| mouth detail → 1 | stretch PSNR ↑ | stretch detail → 1 | CSIM ↑ | LMK err ↓ | expr err ↓ "
                "| pose err ↓ | eye r ↑ | mouth r ↑ | E_warp ↓ | no face ↓ | ms/frame | frames |")
        lines = [head, "|" + "---|" * 21]
        for s in self.scores:
            def f(v, p=4):
                return "–" if isinstance(v, float) and math.isnan(v) else f"{v:.{p}f}"

            lines.append(
                f"| {s.protocol} | {s.method} | {f(s.psnr, 2)} | {f(s.ssim)} | {f(s.l1)} | {f(s.detail, 3)} "
                f"| {f(s.mouth_psnr, 2)} | {f(s.mouth_ssim)} | {f(s.mouth_detail, 3)} "
                f"| {f(s.stretch_psnr, 2)} | {f(s.stretch_detail, 3)} | {f(s.csim)} "
                f"| {f(s.landmark_error)} | {f(s.expression_error)} | {f(s.pose_error)} | {f(s.eye_r, 3)} "
                f"| {f(s.mouth_r, 3)} | {f(s.e_warp)} "
                f"| {f(s.face_missed, 3)} | {f(s.ms_per_frame, 1)} | {s.frames} |"
            )
        lines.append("")
        lines.append("detail: mean Sobel gradient magnitude in the face box, output / truth (cross-identity: / source);")
        lines.append("mouth PSNR / SSIM / detail: in the true frame's inner-lip box enlarged by a quarter of the mouth")
        lines.append(f"width on every side, over the frames whose true mouth is open (inner-lip gap > {MOUTH_OPEN} × width);")
        lines.append("stretch PSNR / detail: over the pixels where the full-head mesh warp magnifies the source")
        lines.append(f"(area ratio < {STRETCH_AT}, specks dropped, the refinement gate's default region), frames with ≥ "
                     f"{STRETCH_MIN_PIXELS} such pixels;")
        lines.append("eye r / mouth r: Pearson correlation of the eye / mouth opening detected on the output with the")
        lines.append("target's, per clip, averaged over clips whose target opening varies (eye: a blink).")
        lines.append("FID and LPIPS: not computed (their Inception/AlexNet weights do not ship offline).")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- metrics
def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping ``src`` points onto ``dst``; returns src mapped."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / max(s0.var(0).sum(), 1e-12)
    return (scale * (rot @ s0.T)).T + mu_d


def face_box(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Integer box ``(x0, y0, x1, y1)`` of the landmarks' extent, clipped to an image of ``shape``."""
    lo = np.floor(np.asarray(landmarks)[:, :2].min(0)).astype(int)
    hi = np.ceil(np.asarray(landmarks)[:, :2].max(0)).astype(int)
    h, w = shape[:2]
    return (int(np.clip(lo[0], 0, w)), int(np.clip(lo[1], 0, h)), int(np.clip(hi[0], 0, w)), int(np.clip(hi[1], 0, h)))


def sobel_magnitude(image: np.ndarray) -> np.ndarray:
    """``H×W`` float32 Sobel gradient magnitude (3×3) of the grey image."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def sobel_detail(image: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Mean Sobel gradient magnitude of the grey image inside ``box`` (fine detail: skin texture,
    eyelashes, hair strands; blur lowers it)."""
    x0, y0, x1, y1 = box
    mag = sobel_magnitude(image)[y0:y1, x0:x1]
    return float(mag.mean()) if mag.size else float("nan")


def detail_ratio(output: np.ndarray, truth: np.ndarray, landmarks: np.ndarray) -> float:
    """Fine detail kept: ``sobel_detail(output) / sobel_detail(truth)`` in the face box of
    ``landmarks`` (1 = as sharp as the truth; a blurred face scores well below 1)."""
    if output.shape != truth.shape:
        raise ValueError(f"output and truth differ in shape: {output.shape} vs {truth.shape}")
    box = face_box(landmarks, output.shape)
    ref = sobel_detail(truth, box)
    return sobel_detail(output, box) / ref if ref > 0 else float("nan")


MOUTH_OPEN = 0.06
"""True inner-lip gap over mouth width above which a frame's mouth box is scored."""
MOUTH_BOX_GROW = 0.25


def mouth_box(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The inner-lip box of ``landmarks``, grown by :data:`MOUTH_BOX_GROW` × the mouth width
    (61-291) on every side, clipped to an image of ``shape``."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    pad = MOUTH_BOX_GROW * np.linalg.norm(lm[61] - lm[291])
    inner = lm[list(MOUTH_INNER)]
    return face_box(np.stack([inner.min(0) - pad, inner.max(0) + pad]), shape)


def mouth_scores(output: np.ndarray, truth: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM and detail ratio (output / truth Sobel) in the :func:`mouth_box` of ``landmarks``."""
    x0, y0, x1, y1 = mouth_box(landmarks, truth.shape)
    o, t = np.ascontiguousarray(output[y0:y1, x0:x1]), np.ascontiguousarray(truth[y0:y1, x0:x1])
    full = (0, 0, x1 - x0, y1 - y0)
    ref = sobel_detail(t, full)
    return {"mouth_psnr": psnr(o, t), "mouth_ssim": ssim(o, t),
            "mouth_detail": sobel_detail(o, full) / ref if ref > 0 else float("nan")}


STRETCH_AT = 0.5
"""Area ratio (source / output) below which the head mesh warp counts as magnifying (the upper end of
the refinement gate's default ramp)."""
STRETCH_MIN_PIXELS = 64


def stretch_mask(grid: np.ndarray) -> np.ndarray:
    """``S×S`` bool: where the sampling ``grid`` magnifies the source — the support of the refinement
    network's gate region (:func:`~metaportrait.models.refinement_network.stretch_regions`, default
    ramp and dilation)."""
    import torch

    from metaportrait.models.refinement_network import RefinementConfig, stretch_regions

    cfg = RefinementConfig()
    region = stretch_regions(torch.from_numpy(np.ascontiguousarray(grid, np.float32))[None], *cfg.gate_stretch,
                             round(cfg.gate_dilate * grid.shape[0] / 256))
    return region[0, 0].numpy() > 0


def stretch_scores(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """PSNR and detail ratio (output / truth mean Sobel magnitude) over the pixels of ``mask``."""
    if int(mask.sum()) < STRETCH_MIN_PIXELS:
        return {}
    ref = float(sobel_magnitude(truth)[mask].mean())
    return {"stretch_psnr": psnr(output[mask], truth[mask]),
            "stretch_detail": float(sobel_magnitude(output)[mask].mean()) / ref if ref > 0 else float("nan")}


def eye_opening(landmarks: np.ndarray) -> float:
    """Mean lid gap (159-145, 386-374) over eye width (33-133, 362-263) of both eyes."""
    lm = np.asarray(landmarks)[:, :2]
    left = np.linalg.norm(lm[159] - lm[145]) / max(np.linalg.norm(lm[33] - lm[133]), 1e-6)
    right = np.linalg.norm(lm[386] - lm[374]) / max(np.linalg.norm(lm[362] - lm[263]), 1e-6)
    return float((left + right) / 2)


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap (13-14) over mouth width (61-291)."""
    lm = np.asarray(landmarks)[:, :2]
    return float(np.linalg.norm(lm[13] - lm[14]) / max(np.linalg.norm(lm[61] - lm[291]), 1e-6))


def opening_correlation(target: Sequence[float], output: Sequence[float], min_range: float) -> float:
    """Pearson r of two opening series (NaN where the output had no face is dropped); NaN when the
    target varies by less than ``min_range`` × its median (nothing to follow)."""
    t = np.asarray(target, np.float64)
    o = np.asarray(output, np.float64)
    ok = np.isfinite(t) & np.isfinite(o)
    t, o = t[ok], o[ok]
    if len(t) < 3 or np.ptp(t) < min_range * max(np.median(t), 1e-6) or np.std(o) == 0:
        return float("nan")
    return float(np.corrcoef(t, o)[0, 1])


def interocular(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[list(LEFT_EYE)].mean(0) - landmarks[list(RIGHT_EYE)].mean(0)))


def landmark_errors(output: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """(total, expression, pose) mean point errors normalised by the target's inter-ocular distance."""
    iod = max(interocular(target), 1e-6)
    aligned = similarity_fit(output, target)
    total = np.linalg.norm(output - target, axis=1).mean() / iod
    expression = np.linalg.norm(aligned - target, axis=1).mean() / iod
    pose = np.linalg.norm(aligned - output, axis=1).mean() / iod
    return float(total), float(expression), float(pose)


# ---------------------------------------------------------------------------- methods
def no_motion(pipe, source, targets: list[np.ndarray]) -> np.ndarray:
    return np.repeat(source.face[None], len(targets), axis=0)


def mesh_warp(pipe, source, targets: list[np.ndarray]) -> np.ndarray:
    return np.stack([mesh_warp_image(source.face, source.landmarks, t) for t in targets])


MESH_BLUR_SIGMA = 1.0  # px at 256²


def mesh_warp_blurred(pipe, source, targets: list[np.ndarray]) -> np.ndarray:
    """The mesh warp followed by a Gaussian blur (σ = 1 px at 256²).

    PSNR and SSIM reward hedging: where an edge's position is uncertain, a blurred edge scores
    better than a sharp one in the wrong place (blurring the mesh warp raises its SSIM from 0.751
    to 0.762 on the held-out people; σ 0.7 / 1.0 / 1.5 give 0.759 / 0.762 / 0.760). A model trained
    with L1/SSIM can learn the same trick, so this row shows how much of its lead is only that.
    """
    import cv2

    sigma = MESH_BLUR_SIGMA * source.face.shape[0] / 256.0
    return np.stack([cv2.GaussianBlur(img, (0, 0), sigma) for img in mesh_warp(pipe, source, targets)])


def head_mesh_warp(pipe, source, targets: list[np.ndarray]) -> np.ndarray:
    """The full-head mesh (face + hair/ears/neck rings + still border) alone, no network: the
    geometry the model's warping network starts from."""
    from metaportrait.render import render_crop

    return np.stack([render_crop(source.face, pipe.prior_grid(source, t)) for t in targets])


def head_mesh_warp_mouth(pipe, source, targets: list[np.ndarray]) -> np.ndarray:
    """The full-head mesh warp with the mouth-interior network drawing inside opening mouths."""
    if pipe.mouth is None:
        raise ValueError("the pipeline has no mouth-interior network (weights/mouth_interior)")
    warped = head_mesh_warp(pipe, source, targets)
    return np.stack([pipe.mouth(img, t, source.face, source.landmarks) for img, t in zip(warped, targets)])


def model(pipe, source, targets: list[np.ndarray]) -> np.ndarray:
    return pipe.generate(source, targets)


METHODS: dict[str, Callable] = {"no motion": no_motion, "mesh warp": mesh_warp,
                                "mesh warp + blur": mesh_warp_blurred, "head mesh warp": head_mesh_warp,
                                "head mesh warp + mouth": head_mesh_warp_mouth, "model": model}


# ---------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class EvalSettings:
    split: str = HELDOUT_IDENTITY  # or HELDOUT_FRAMES
    max_clips: int = 8
    frames_per_clip: int = 48
    frame_stride: int = 2
    batch_size: int = 8
    cross_identity: bool = True
    methods: tuple[str, ...] = ("no motion", "mesh warp", "mesh warp + blur", "head mesh warp",
                                "head mesh warp + mouth", "model")
    source_frame: str = "first"  # or "closed": the clip's frame with the most closed mouth


def _clip_arrays(data: PreparedData, clip: ClipInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """256 frames and landmarks (read-only memory maps) and the valid mask of one clip."""
    frames = data.frames(clip, 256)
    return frames, data.landmarks(clip), data.valid(clip, num_frames=len(frames))


def _select_clips(data: PreparedData, split: str) -> list[tuple[ClipInfo, int]]:
    """(clip, first frame index) of the evaluation clips for a split (``heldout_identity`` or
    ``heldout_frames``; the latter only where at least 3 held-out frames remain)."""
    if split not in (HELDOUT_IDENTITY, HELDOUT_FRAMES):
        raise ValueError(f"split must be {HELDOUT_IDENTITY!r} or {HELDOUT_FRAMES!r}, got {split!r}")
    out = []
    for clip in data.clips_in(split):
        start, end = clip.split_range(split)
        if split == HELDOUT_IDENTITY or start < end - 2:
            out.append((clip, start))
    return out


class _Accumulator:
    def __init__(self, method: str, protocol: str) -> None:
        self.method, self.protocol = method, protocol
        self.values: dict[str, list[float]] = {}
        self.seconds = 0.0
        self.frames = 0

    def add(self, **kw: float) -> None:
        for k, v in kw.items():
            self.values.setdefault(k, []).append(float(v))

    def result(self) -> MethodScores:
        s = MethodScores(method=self.method, protocol=self.protocol, frames=self.frames)
        for k, v in self.values.items():
            arr = np.asarray([x for x in v if np.isfinite(x)])
            setattr(s, k, float(arr.mean()) if len(arr) else float("nan"))
        s.ms_per_frame = 1000 * self.seconds / max(self.frames, 1)
        return s


def _csim(pipe, source, outputs: np.ndarray, out_lms: list[np.ndarray | None]) -> list[float]:
    sims = []
    for img, lm in zip(outputs, out_lms):
        if lm is None:
            continue
        emb = pipe.embed_identity(img, lm)
        sims.append(float((emb * source.identity).sum()))
    return sims


def evaluate(pipe, data_dir: str | Path, settings: EvalSettings = EvalSettings(),
             log: Callable[[str], None] = print) -> EvaluationReport:
    """Run both protocols for every method in ``settings.methods`` on ``pipe``'s generator."""
    from metaportrait.evaluation.temporal import e_warp

    data_dir = Path(data_dir)
    data = PreparedData(data_dir)
    if pipe.mouth is None and "head mesh warp + mouth" in settings.methods:
        settings = EvalSettings(**{**asdict(settings), "methods": tuple(
            m for m in settings.methods if m != "head mesh warp + mouth")})
        log("no mouth-interior network: its row is left out")
    chosen = _select_clips(data, settings.split)[: settings.max_clips]
    if not chosen:
        raise ValueError(f"no clips for split {settings.split!r} in {data_dir}")
    accs = {m: _Accumulator(m, f"self ({settings.split})") for m in settings.methods}
    cross = {m: _Accumulator(m, "cross-identity") for m in settings.methods}
    analyzer = FaceAnalyzer(static_image_mode=True, max_faces=1)
    sources = []
    try:
        for clip, start in chosen:
            frames, lms, valid = _clip_arrays(data, clip)
            idx = [i for i in range(start, len(frames)) if valid[i]]
            if len(idx) < 3:
                continue
            if settings.source_frame == "closed":  # a closed-mouth photo driven by the clip's speech
                s_i = min(idx, key=lambda i: mouth_opening(lms[i]))
                idx = [s_i] + [i for i in idx if i != s_i]
            elif settings.source_frame != "first":
                raise ValueError(f"source_frame must be 'first' or 'closed', got {settings.source_frame!r}")
            s_i = idx[0]
            drive = idx[1:][:: settings.frame_stride][: settings.frames_per_clip]
            source = pipe.source_from_crop(np.ascontiguousarray(frames[s_i]), np.asarray(lms[s_i]))
            sources.append((clip, source, frames, lms, drive))
            targets = [np.asarray(lms[i], np.float32) for i in drive]
            gts = np.stack([frames[i] for i in drive])
            stretch = [stretch_mask(pipe.prior_grid(source, t)) for t in targets]
            for m in settings.methods:
                outs = _run(pipe, METHODS[m], source, targets, settings.batch_size, accs[m])
                _score(pipe, analyzer, accs[m], source, outs, targets, gts, stretch)
                accs[m].add(e_warp=e_warp(list(outs)))
            log(f"evaluated {clip.id}: {len(drive)} frames")
        if settings.cross_identity and len(sources) >= 2:
            for k, (clip, source, _, _, _) in enumerate(sources):
                _, _, d_frames, d_lms, drive = sources[(k + 1) % len(sources)]
                ref = np.asarray(d_lms[drive[0]], np.float32)
                targets = [transfer_landmarks(source.landmarks, np.asarray(d_lms[i], np.float32), ref, mode="relative")
                           .astype(np.float32) for i in drive]
                for m in settings.methods:
                    outs = _run(pipe, METHODS[m], source, targets, settings.batch_size, cross[m])
                    _score(pipe, analyzer, cross[m], source, outs, targets, None)
    finally:
        analyzer.close()
    scores = [a.result() for a in accs.values()]
    if settings.cross_identity and len(sources) >= 2:
        scores += [a.result() for a in cross.values()]
    return EvaluationReport(scores=scores, clips=[c.id for c, *_ in sources], settings=asdict(settings))


def _run(pipe, method, source, targets, batch_size, acc) -> np.ndarray:
    outs = []
    t0 = time.perf_counter()
    for i in range(0, len(targets), batch_size):
        outs.append(method(pipe, source, targets[i: i + batch_size]))
    acc.seconds += time.perf_counter() - t0
    acc.frames += len(targets)
    return np.concatenate(outs)


def _score(pipe, analyzer, acc, source, outs: np.ndarray, targets: Sequence[np.ndarray], gts: np.ndarray | None,
           stretch: Sequence[np.ndarray] | None = None) -> None:
    out_lms: list[np.ndarray | None] = []
    for img, tgt in zip(outs, targets):
        dets = analyzer.detect(np.ascontiguousarray(img))
        lm = dets[0].landmarks if dets else None
        out_lms.append(lm)
        acc.add(face_missed=0.0 if dets else 1.0)
        if lm is not None:
            total, expr, pose = landmark_errors(lm, tgt)
            acc.add(landmark_error=total, expression_error=expr, pose_error=pose)
    nan = float("nan")
    acc.add(
        eye_r=opening_correlation([eye_opening(t) for t in targets],
                                  [eye_opening(lm) if lm is not None else nan for lm in out_lms], 0.5),
        mouth_r=opening_correlation([mouth_opening(t) for t in targets],
                                    [mouth_opening(lm) if lm is not None else nan for lm in out_lms], 0.5),
    )
    if gts is not None:
        for k, (img, gt, tgt) in enumerate(zip(outs, gts, targets)):
            acc.add(psnr=psnr(img, gt), ssim=ssim(img, gt), detail=detail_ratio(img, gt, tgt),
                    l1=float(np.abs(img.astype(np.float32) - gt.astype(np.float32)).mean() / 255.0))
            if stretch is not None and stretch[k].shape == img.shape[:2]:
                acc.add(**stretch_scores(img, gt, stretch[k]))
            if mouth_opening(tgt) > MOUTH_OPEN:
                acc.add(**mouth_scores(img, gt, tgt))
    else:
        for img in outs:
            acc.add(detail=detail_ratio(img, source.face, source.landmarks))
    for c in _csim(pipe, source, outs, out_lms):
        acc.add(csim=c)


def main(argv: Sequence[str] | None = None) -> int:
    """``metaportrait evaluate --data DIR [--weights DIR_OR_REPO] [--output report]``."""
    import argparse

    from metaportrait.pipeline import MetaPortraitPipeline

    ap = argparse.ArgumentParser(prog="metaportrait evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared data folder (metaportrait prepare-data)")
    ap.add_argument("--weights", default=None, help="pipeline folder or Hub repo id (default: embedded weights)")
    ap.add_argument("--split", default=HELDOUT_IDENTITY, choices=[HELDOUT_IDENTITY, HELDOUT_FRAMES])
    ap.add_argument("--max-clips", type=int, default=8)
    ap.add_argument("--frames-per-clip", type=int, default=48)
    ap.add_argument("--no-cross-identity", action="store_true")
    ap.add_argument("--source-frame", choices=["first", "closed"], default="first",
                    help="the source of self-reenactment: the clip's first frame, or its most closed mouth")
    ap.add_argument("--methods", default=None, help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--output", default=None, help="write OUTPUT.md and OUTPUT.json")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    pipe = MetaPortraitPipeline.from_pretrained(args.weights, device=args.device)
    methods = EvalSettings.methods if args.methods is None else tuple(m.strip() for m in args.methods.split(","))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    settings = EvalSettings(split=args.split, max_clips=args.max_clips, frames_per_clip=args.frames_per_clip,
                            cross_identity=not args.no_cross_identity, methods=methods, source_frame=args.source_frame)
    report = evaluate(pipe, args.data, settings)
    gen = pipe.generator
    report.settings["generator_parameters"] = sum(p.numel() for p in gen.parameters())
    md = report.to_markdown()
    print(md)
    if args.output:
        Path(args.output).with_suffix(".md").write_text(md + "\n")
        Path(args.output).with_suffix(".json").write_text(report.to_json() + "\n")
    return 0
