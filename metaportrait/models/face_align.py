"""Differentiable 5-point face alignment for the identity encoder E_id (paper §3.1, eqs. 1-2).

MetaPortrait's identity embedding ``z_id = E_id(I_s)`` and identity loss
``L_id = 1 - cos(E_id(Ĩ_y), E_id(I_s))`` (MetaPortrait §3.1; docs/METHOD.md §6.1, §7) run a
face-recognition network on faces aligned to the ArcFace 112×112 five-point template. This module
does that alignment in torch so that gradients flow from the identity loss back into the
generated image:

1. :func:`estimate_similarity` — least-squares similarity transform (Umeyama 1991) from the
   five detected points to the template, in closed form (no SVD: in 2D the rotation-and-scale
   part ``[[a, -b], [b, a]]`` is linear in ``(a, b)``, and the least-squares solution over it is
   exactly Umeyama's proper-rotation solution), differentiable w.r.t. the points;
2. :func:`align_faces` — warps the images with ``affine_grid``/``grid_sample`` (bilinear). It
   takes points in the package's landmark convention — continuous pixel coordinates, ``(0, 0)``
   the top-left corner of the image, pixel centres at ``i + 0.5`` (MediaPipe's normalised
   coordinates times the image size) — and converts them to the integer-centre convention of
   ``cv2.warpAffine`` and of the template, so that with the same points it reproduces OpenCV's
   ``FaceRecognizerSF.alignCrop`` given ``points - 0.5``.

Point order (the template's order): eye on the image's left, eye on the image's right, nose
tip, mouth corner on the image's left, mouth corner on the image's right — what
``metaportrait.face.regions.five_points`` returns from MediaPipe's 478 landmarks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

# The standard ArcFace / InsightFace 5-point template for 112×112 crops (pixel coordinates x, y,
# integer-centre convention of cv2.warpAffine), the same numbers OpenCV's FaceRecognizerSF.alignCrop uses.
ARCFACE_TEMPLATE_112 = torch.tensor(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=torch.float32,
)

PaddingMode = Literal["black", "border", "reflection"]


def _check_points(points: torch.Tensor, name: str, batched: bool) -> None:
    want = "B×N×2" if batched else "N×2"
    ndim = 3 if batched else 2
    if points.ndim != ndim or points.shape[-1] != 2 or points.shape[-2] < 2:
        raise ValueError(f"{name} must be {want} with N >= 2, got shape {tuple(points.shape)}")


def estimate_similarity(src_points: torch.Tensor, dst_points: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms taking ``src_points`` onto ``dst_points``.

    Args:
        src_points: ``B×N×2`` pixel coordinates (x, y), e.g. the five detected face points.
        dst_points: ``N×2`` (shared) or ``B×N×2`` target coordinates, e.g. ``ARCFACE_TEMPLATE_112``.

    Returns:
        ``B×2×3`` matrices ``M`` with ``dst ≈ M @ [x, y, 1]ᵀ``: uniform scale, proper rotation and
        translation (no reflection, no shear), the closed-form Umeyama solution. Differentiable.
    """
    _check_points(src_points, "src_points", batched=True)
    if not torch.is_floating_point(src_points):
        raise ValueError(f"src_points must be a float tensor, got dtype {src_points.dtype}")
    dst = dst_points.to(device=src_points.device, dtype=src_points.dtype)
    if dst.ndim == 2:
        _check_points(dst, "dst_points", batched=False)
        dst = dst.unsqueeze(0).expand(src_points.shape[0], -1, -1)
    else:
        _check_points(dst, "dst_points", batched=True)
    if dst.shape[-2] != src_points.shape[-2] or dst.shape[0] != src_points.shape[0]:
        raise ValueError(
            f"src_points {tuple(src_points.shape)} and dst_points {tuple(dst_points.shape)} do not match"
        )

    src_mean = src_points.mean(dim=1, keepdim=True)
    dst_mean = dst.mean(dim=1, keepdim=True)
    s = src_points - src_mean
    d = dst - dst_mean
    sx, sy = s[..., 0], s[..., 1]
    dx, dy = d[..., 0], d[..., 1]
    energy = (sx * sx + sy * sy).sum(dim=1)
    if bool((energy <= 1e-12).any()):
        raise ValueError("src_points are degenerate (all points coincide); cannot estimate a similarity")
    a = (sx * dx + sy * dy).sum(dim=1) / energy
    b = (sx * dy - sy * dx).sum(dim=1) / energy
    rot = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=-2)  # B×2×2
    t = dst_mean.squeeze(1) - (rot @ src_mean.squeeze(1).unsqueeze(-1)).squeeze(-1)  # B×2
    return torch.cat([rot, t.unsqueeze(-1)], dim=-1)


def _pixel_to_normalised(width: int, height: int, device: torch.device) -> torch.Tensor:
    """3×3 float32 matrix: pixel coords (centres at integers) -> grid_sample coords (align_corners=False)."""
    m = torch.zeros(3, 3, device=device, dtype=torch.float32)
    m[0, 0] = 2.0 / width
    m[0, 2] = 1.0 / width - 1.0
    m[1, 1] = 2.0 / height
    m[1, 2] = 1.0 / height - 1.0
    m[2, 2] = 1.0
    return m


def _affine_to_3x3(m: torch.Tensor) -> torch.Tensor:
    bottom = torch.zeros(m.shape[0], 1, 3, device=m.device, dtype=m.dtype)
    bottom[:, 0, 2] = 1.0
    return torch.cat([m, bottom], dim=1)


def align_faces(
    images: torch.Tensor,
    points: torch.Tensor,
    out_size: int = 112,
    *,
    template: torch.Tensor | None = None,
    padding: PaddingMode = "black",
) -> torch.Tensor:
    """Crop faces aligned to the ArcFace template, differentiably.

    Args:
        images: ``B×3×H×W`` RGB in [-1, 1].
        points: ``B×5×2`` pixel coordinates (x, y) in ``images``, template order, in the package's
            landmark convention (pixel centres at ``i + 0.5``; see the module doc).
        out_size: side of the square output; the template is scaled by ``out_size / 112``.
        template: ``5×2`` target points for a 112×112 crop; default ``ARCFACE_TEMPLATE_112``.
        padding: what is sampled outside the image: ``"black"`` (-1, like ``cv2.warpAffine``'s
            default border, which SFace and ArcFace were trained with), ``"border"`` (replicate),
            or ``"reflection"``.

    Returns:
        ``B×3×out_size×out_size`` aligned faces in [-1, 1], bilinear, differentiable w.r.t.
        ``images`` and ``points``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B×3×H×W, got shape {tuple(images.shape)}")
    _check_points(points, "points", batched=True)
    if points.shape[0] != images.shape[0]:
        raise ValueError(f"points batch {points.shape[0]} does not match images batch {images.shape[0]}")
    if not isinstance(out_size, int) or out_size < 8:
        raise ValueError(f"out_size must be an int >= 8, got {out_size!r}")
    if padding == "black":
        grid_padding, offset = "zeros", 1.0
    elif padding == "border":
        grid_padding, offset = "border", 0.0
    elif padding == "reflection":
        grid_padding, offset = "reflection", 0.0
    else:
        raise ValueError(f"padding must be 'black', 'border' or 'reflection', got {padding!r}")

    dtype = images.dtype if torch.is_floating_point(images) else torch.float32
    tmpl = ARCFACE_TEMPLATE_112 if template is None else template
    # Scale the template in continuous coordinates, then work in integer-centre coordinates.
    tmpl = (tmpl.to(device=images.device, dtype=torch.float32) + 0.5) * (out_size / 112.0) - 0.5
    pts = points.to(device=images.device, dtype=torch.float32) - 0.5
    forward = _affine_to_3x3(estimate_similarity(pts, tmpl))  # source pixels -> output pixels
    height, width = images.shape[-2:]
    # theta: normalised output coords -> output pixels -> source pixels -> normalised source coords.
    src_norm = _pixel_to_normalised(width, height, images.device)
    out_to_pixels = torch.linalg.inv(_pixel_to_normalised(out_size, out_size, images.device))
    theta = src_norm @ torch.linalg.inv(forward) @ out_to_pixels
    grid = F.affine_grid(theta[:, :2, :].to(dtype), [images.shape[0], 3, out_size, out_size], align_corners=False)
    sampled = F.grid_sample(
        images.to(dtype) + offset, grid, mode="bilinear", padding_mode=grid_padding, align_corners=False
    )
    return sampled - offset
