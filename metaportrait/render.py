"""Rendering at the photo's own resolution (MetaPortrait §3.1 inference, sharp path).

The networks work at their working size (256²): the warping network predicts where every output
pixel samples the source (its grid: the full-head mesh warp plus a learned residual flow), and the
ID-preserving refinement network predicts what no warp of the source can show (its residual). Both
are smooth or sparse, so they are upsampled; the *pixels* come from the photo itself:

* ``render_crop``: the face crop at ``size`` (256, 512 or 1024) samples a crop of the photo at that
  size once (bilinear) along the upsampled motion — skin, hair and eyelashes keep the photo's
  detail instead of passing through a 256² bottleneck;
* ``render_into_photo``: paste-back at the photo's full resolution samples the photo itself along
  the motion mapped into photo pixels; where nothing moves (the background beyond the head's
  silhouette) the output *is* the photo, so there is no seam and no blurred square to hide;
* the refinement residual is added only where it has content (|residual| above a few grey levels,
  feathered), so it never softens the rest.

Grids follow ``grid_sample(align_corners=False)``: ``B×H×W×2`` ``(x, y)`` in [-1, 1]; images
uint8 RGB ``H×W×3``.
"""

from __future__ import annotations

import cv2
import numpy as np

from metaportrait.face.crop import CropTransform
from metaportrait.face.mesh_warp import identity_grid
from metaportrait.pipeline_types import SourceFace

RESIDUAL_THRESHOLD = 3.0 / 127.5
"""|residual| (in [-1, 1] units) below which the refinement network is taken to draw nothing."""
RESIDUAL_FULL = 9.0 / 127.5
"""|residual| from which the refinement network's content is applied fully."""


def displacement(grid: np.ndarray) -> np.ndarray:
    """``H×W×2`` float32 offset of a sampling grid from the identity grid (grid_sample units)."""
    g = np.asarray(grid, np.float32)
    if g.ndim != 3 or g.shape[2] != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"grid must be S×S×2, got shape {g.shape}")
    return g - identity_grid(g.shape[0])


def residual_layer(residual: np.ndarray | None) -> np.ndarray | None:
    """``S×S×4`` float32: the residual (×127.5, grey levels) and its content mask, or None when it
    has no content anywhere. ``residual``: ``S×S×3`` in [-1, 1] units."""
    if residual is None:
        return None
    r = np.asarray(residual, np.float32)
    mag = np.abs(r).max(axis=2)
    if float(mag.max(initial=0.0)) < RESIDUAL_THRESHOLD:
        return None
    mask = np.clip((mag - RESIDUAL_THRESHOLD) / (RESIDUAL_FULL - RESIDUAL_THRESHOLD), 0.0, 1.0)
    mask = cv2.GaussianBlur(cv2.dilate(mask, np.ones((3, 3), np.uint8)), (0, 0), 1.0)
    return np.concatenate([r * 127.5, mask[..., None]], axis=2)


def _apply_residual(out: np.ndarray, layer: np.ndarray | None) -> np.ndarray:
    if layer is None:
        return out
    res, mask = layer[..., :3], layer[..., 3:]
    return np.clip(np.rint(out.astype(np.float32) + res * mask), 0, 255).astype(np.uint8)


def render_crop(face: np.ndarray, grid: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """The face crop ``face`` (uint8 ``N×N×3``, the photo cropped at the output size) moved by a
    working-size ``grid`` (``S×S×2``) and ``residual`` (``S×S×3`` or None); uint8 ``N×N×3``."""
    face = np.asarray(face)
    if face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3 or face.shape[0] != face.shape[1]:
        raise ValueError(f"face must be uint8 N×N×3, got {face.dtype} {face.shape}")
    n = face.shape[0]
    disp = displacement(grid)
    if disp.shape[0] != n:
        disp = cv2.resize(disp, (n, n), interpolation=cv2.INTER_LINEAR)
    idx = np.arange(n, dtype=np.float32)
    # continuous output position (i + 0.5), moved by disp (×n/2 px), as a pixel index (−0.5)
    map_x = idx[None, :] + disp[..., 0] * (n / 2.0)
    map_y = idx[:, None] + disp[..., 1] * (n / 2.0)
    out = cv2.remap(face, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    layer = residual_layer(residual)
    if layer is not None and layer.shape[0] != n:
        layer = cv2.resize(layer, (n, n), interpolation=cv2.INTER_LINEAR)
    return _apply_residual(out, layer)


def render_into_photo(
    photo: np.ndarray, crop: CropTransform, grid: np.ndarray, residual: np.ndarray | None = None,
    canvas: np.ndarray | None = None,
) -> np.ndarray:
    """The whole ``photo`` (uint8 ``H×W×3``) with the crop ``crop``'s content moved by ``grid``
    (``S×S×2``, the crop's working-size sampling grid) and ``residual``, at the photo's resolution.

    Pixels outside the crop box, and inside it wherever the motion is zero, are the photo's own.
    ``canvas`` (same shape as the photo): draw onto it instead, changing only the pixels this face
    moves (several faces of one photo, each drawn in turn).
    """
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"photo must be uint8 H×W×3, got {photo.dtype} {photo.shape}")
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = crop.box
    ix0, iy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    ix1, iy1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    if canvas is not None and canvas.shape != photo.shape:
        raise ValueError(f"canvas must have the photo's shape {photo.shape}, got {canvas.shape}")
    out = (photo if canvas is None else canvas).copy()
    if ix1 <= ix0 or iy1 <= iy0:
        return out
    disp = displacement(grid)
    s = disp.shape[0]
    side = crop.side
    # working-size pixel index of each photo pixel centre in the box
    px = np.arange(ix0, ix1, dtype=np.float32) + 0.5
    py = np.arange(iy0, iy1, dtype=np.float32) + 0.5
    wx = (px - x0) * (s / side) - 0.5
    wy = (py - y0) * (s / side) - 0.5
    mx = np.broadcast_to(wx[None, :], (len(py), len(px))).astype(np.float32)
    my = np.broadcast_to(wy[:, None], (len(py), len(px))).astype(np.float32)
    d = cv2.remap(disp, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # source position in photo pixels (index coordinates for cv2)
    src_x = px[None, :] + d[..., 0] * (side / 2.0) - 0.5
    src_y = py[:, None] + d[..., 1] * (side / 2.0) - 0.5
    region = cv2.remap(photo, src_x.astype(np.float32), src_y.astype(np.float32),
                       interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    layer = residual_layer(residual)
    if layer is not None:
        layer = cv2.remap(layer, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    region = _apply_residual(region, layer)
    if canvas is None:
        out[iy0:iy1, ix0:ix1] = region
    else:
        moved = np.abs(d).max(axis=2) > 1e-7
        if layer is not None:
            moved |= layer[..., 3] > 0
        out[iy0:iy1, ix0:ix1] = np.where(moved[..., None], region, out[iy0:iy1, ix0:ix1])
    return out


def output_size(crop: CropTransform, requested: int | None, working_size: int) -> int:
    """The face-crop output side: ``requested`` (256, 512 or 1024) or, when None, 512 if the photo
    has at least 512 pixels across the crop box, else the working size."""
    if requested is None:
        return 512 if crop.side >= 512 else working_size
    if requested not in (256, 512, 1024):
        raise ValueError(f"size must be 256, 512 or 1024, got {requested!r}")
    return int(requested)


__all__ = ["displacement", "output_size", "render_crop", "render_into_photo", "residual_layer"]


def draw(source: SourceFace, grid: np.ndarray, residual: np.ndarray | None, paste_back: bool, size: int,
         canvas: np.ndarray | None = None, target: np.ndarray | None = None, mouth=None, eyes=None) -> np.ndarray:
    """One output frame of ``source`` moved by a working-size ``grid`` (+ ``residual``): the whole photo
    at its own resolution (``paste_back``; drawn onto ``canvas`` when given), else the face crop at
    ``size``². With the ``target`` landmarks (working-size crop pixels): ``mouth`` (a
    :class:`~metaportrait.mouth.MouthFiller`) draws the mouth interior where the target opens the
    mouth, ``eyes`` (an :class:`~metaportrait.eyes.EyeFiller`) the lids where it closes an eye
    further than the source's."""
    fillers = [f for f in (mouth, eyes) if f is not None] if target is not None else []
    if paste_back:
        out = render_into_photo(source.image, source.crop, grid, residual, canvas=canvas)
        if fillers:
            scaled = np.asarray(target, np.float64)[:, :2] * (source.crop.size / source.face.shape[0])
            lm = source.crop.points_to_image(scaled)
            for fill in fillers:
                out = fill(out, lm, source.face, source.landmarks)
        return out
    out = render_crop(source.face_at(size), grid, residual)
    for fill in fillers:
        out = fill(out, np.asarray(target, np.float64)[:, :2] * (size / source.face.shape[0]), source.face,
                   source.landmarks)
    return out
