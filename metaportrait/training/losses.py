"""The training objective of the base model (MetaPortrait §3.1; docs/METHOD.md §7).

``L = L_w^VGG + λ_r L_r^VGG + λ_id L_id + λ_eye L_eye + λ_mouth L_mouth + λ_adv L_adv (+ λ_fm L_fm)``
with the paper's weights λ_r = 10, λ_id = 20, λ_eye = λ_mouth = 50, λ_adv = 1 and the official
code's feature-matching weight 10 (:class:`LossWeights`).

* :class:`PerceptualLoss` — L1 between the features of a frozen network over an image pyramid
  (1, 1/2, 1/4, 1/8), as the official code (FOMM-style). VGG19 relu1_1..relu5_1 with weights
  1/32, 1/16, 1/8, 1/4, 1 when its ImageNet weights load; offline (no VGG weights ship in any
  package; torchvision downloads them) the fallback is the frozen SFace face-recognition network of
  :class:`metaportrait.models.identity_encoder.IdentityEncoder`, tapped after five of its
  conv blocks (``conv_1, conv_3, conv_5, conv_7, conv_8``: strides 1, 2, 4, 8, 8; same weights). Which network is in use is logged once.
* :class:`IdentityLoss` — ``1 - cos(E_id(align(Ĩ_y)), E_id(align(I_s)))`` with the
  differentiable five-point alignment.
* :func:`region_l1` — L1 over eye/mouth boxes (``roi_align`` crops, so only the regions count).
* :func:`discriminator_loss`, :func:`generator_adversarial_loss` (LSGAN or hinge, multi-scale)
  and :func:`feature_matching_loss`.
* :class:`BaseLoss` — the weighted sum, returning :class:`BaseLossTerms`.

All images are ``B×3×H×W`` float RGB in [-1, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

PerceptualNetwork = Literal["auto", "vgg19", "sface"]
GanKind = Literal["lsgan", "hinge"]

# ImageNet statistics for VGG19 (inputs in [0, 1]).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision vgg19().features indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
_VGG19_TAPS = (1, 6, 11, 20, 29)
# SFace (MobileFaceNet) blocks tapped for the fallback, like VGG's relu*_1 (the first conv at each
# resolution): strides 1, 2, 4, 8, then one deeper 512-channel block. Stopping at conv_8 skips
# conv_9..conv_14, more than half of SFace's FLOPs at 256² (≈2.9 instead of ≈6 GFLOPs per image).
_SFACE_TAPS = ("conv_1", "conv_3", "conv_5", "conv_7", "conv_8")
_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

_logged_networks: set[str] = set()


def _log_once(key: str, level: int, message: str, *args: object) -> None:
    if key not in _logged_networks:
        _logged_networks.add(key)
        logger.log(level, message, *args)


def _check_images(name: str, x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be B×3×H×W, got shape {tuple(x.shape)}")


# -- feature extractors ------------------------------------------------------------------------
class _VGG19Features(nn.Module):
    """Frozen VGG19 up to relu5_1; returns the five relu*_1 maps. Input [-1, 1]."""

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.slices = nn.ModuleList()
        prev = 0
        for tap in _VGG19_TAPS:
            self.slices.append(nn.Sequential(*[vgg.features[i] for i in range(prev, tap + 1)]))
            prev = tap + 1
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x + 1.0) / 2.0 - self.mean) / self.std
        out = []
        for s in self.slices:
            h = s(h)
            out.append(h)
        return out


class _SFaceFeatures(nn.Module):
    """Frozen SFace conv blocks; returns the maps after ``_SFACE_TAPS``. Input [-1, 1].

    Fully convolutional up to ``conv_14``, so it runs at any resolution (the pyramid levels).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        from metaportrait.models.identity_encoder import SFACE_MEAN, SFACE_SCALE, SFaceNet

        backbone = getattr(encoder, "backbone", None)
        if not isinstance(backbone, SFaceNet):
            raise ValueError(
                f"the SFace perceptual fallback needs an IdentityEncoder with arch 'sface', got backbone "
                f"{type(backbone).__name__}"
            )
        names = list(backbone.features._modules.keys())
        self.blocks = nn.ModuleList()
        prev = 0
        for tap in _SFACE_TAPS:
            end = names.index(tap) + 1
            self.blocks.append(nn.Sequential(*[backbone.features._modules[n] for n in names[prev:end]]))
            prev = end
        self.mean = SFACE_MEAN
        self.scale = SFACE_SCALE

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x + 1.0) * 127.5 - self.mean) * self.scale
        out = []
        for b in self.blocks:
            h = b(h)
            out.append(h)
        return out


def _load_vgg19() -> nn.Module | None:
    """torchvision's ImageNet VGG19, loaded the normal way (download or cache); None if it fails."""
    try:
        from torchvision.models import VGG19_Weights, vgg19

        return vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        _log_once("vgg19-failed", logging.WARNING, "VGG19 ImageNet weights unavailable (%s)", e)
        return None


def _load_sface(encoder: nn.Module | None) -> nn.Module:
    if encoder is None:
        from metaportrait.identity import load_identity_encoder

        encoder = load_identity_encoder()
    return _SFaceFeatures(encoder)


class PerceptualLoss(nn.Module):
    """Multi-scale perceptual loss (official MetaPortrait/FOMM form).

    ``sum_scales sum_layers w_l * mean|φ_l(down_s(x)) - φ_l(down_s(y))|`` with layer weights
    1/32, 1/16, 1/8, 1/4, 1 and pyramid scales ``pyramid`` (area down-sampling). ``y`` (the
    target) is not differentiated.

    Args:
        pyramid: image scales (1 = full size).
        network: ``"vgg19"`` (raises ``WeightsError`` if its weights cannot be loaded), ``"sface"``
            (frozen SFace features), or ``"auto"`` (VGG19 when it loads, else SFace).
        identity_encoder: the SFace ``IdentityEncoder`` to reuse for ``"sface"`` (default: the
            package's ``load_identity_encoder()``).
    """

    def __init__(
        self,
        pyramid: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
        network: PerceptualNetwork = "auto",
        identity_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not pyramid or any(not 0 < float(s) <= 1 for s in pyramid):
            raise ValueError(f"pyramid scales must be in (0, 1], got {tuple(pyramid)!r}")
        self.pyramid = tuple(float(s) for s in pyramid)
        if network == "vgg19":
            vgg = _load_vgg19()
            if vgg is None:
                from metaportrait.errors import WeightsError

                raise WeightsError(
                    "VGG19 ImageNet weights could not be loaded (torchvision downloads them on first use; "
                    "offline use network='sface' or 'auto')"
                )
            self.features: nn.Module = _VGG19Features(vgg)
            self.network = "vgg19"
        elif network == "sface":
            self.features = _load_sface(identity_encoder)
            self.network = "sface"
        elif network == "auto":
            vgg = _load_vgg19()
            if vgg is not None:
                self.features = _VGG19Features(vgg)
                self.network = "vgg19"
            else:
                self.features = _load_sface(identity_encoder)
                self.network = "sface"
        else:
            raise ValueError(f"network must be 'auto', 'vgg19' or 'sface', got {network!r}")
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.features.eval()
        level = logging.WARNING if self.network != "vgg19" else logging.INFO
        _log_once(
            f"perceptual-{self.network}", level,
            "PerceptualLoss uses %s features%s", self.network,
            "" if self.network == "vgg19" else
            " (offline fallback: VGG19 ImageNet weights unavailable; losses are not comparable to VGG-based numbers)",
        )
        self.layer_weights = _LAYER_WEIGHTS

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()  # frozen BatchNorm statistics
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar loss between ``x`` (prediction) and ``y`` (target), both ``B×3×H×W`` in [-1, 1]."""
        _check_images("x", x)
        _check_images("y", y)
        if x.shape != y.shape:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
        total = x.new_zeros(())
        for s in self.pyramid:
            if s == 1.0:
                xs, ys = x, y
            else:
                size = (max(8, round(x.shape[-2] * s)), max(8, round(x.shape[-1] * s)))
                xs = F.interpolate(x, size=size, mode="area")
                ys = F.interpolate(y, size=size, mode="area")
            fx = self.features(xs)
            with torch.no_grad():
                fy = self.features(ys)
            for w, a, b in zip(self.layer_weights, fx, fy):
                total = total + w * (a - b).abs().mean()
        return total


# -- identity ----------------------------------------------------------------------------------
class IdentityLoss(nn.Module):
    """``L_id = mean(1 - cos(E_id(align(pred, pred_points)), E_id(align(source, source_points))))``.

    ``encoder`` is an :class:`IdentityEncoder` (frozen here). Points are ``B×5×2`` pixel
    coordinates in template order (``metaportrait.face.five_points``). The prediction shows the
    driving pose, so its points are the driving frame's.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        if hasattr(encoder, "freeze"):
            encoder.freeze()
        else:
            for p in encoder.parameters():
                p.requires_grad_(False)
            encoder.eval()

    def embed(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        from metaportrait.models.face_align import align_faces

        _check_images("images", images)
        return self.encoder(align_faces(images, points, out_size=112))

    def forward(
        self,
        pred: torch.Tensor,
        source: torch.Tensor,
        pred_points: torch.Tensor,
        source_points: torch.Tensor,
    ) -> torch.Tensor:
        e_pred = self.embed(pred, pred_points)
        with torch.no_grad():
            e_src = self.embed(source, source_points)
        return (1.0 - F.cosine_similarity(e_pred, e_src, dim=1)).mean()


# -- regions -----------------------------------------------------------------------------------
def region_l1(pred: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor, output_size: int = 32) -> torch.Tensor:
    """Mean L1 between ``pred`` and ``target`` inside boxes (L_eye / L_mouth, MetaPortrait §3.1).

    Args:
        pred, target: ``B×3×H×W``.
        boxes: ``B×K×4`` (or ``B×4``) pixel boxes ``(x0, y0, x1, y1)`` (continuous coordinates,
            ``(0, 0)`` the top-left corner), e.g. ``PairSample.driving_boxes[:, :2]`` for the eyes.
        output_size: side of the ``roi_align`` resampling of each box.

    Returns:
        Scalar: mean over boxes and pixels of ``|pred - target|`` resampled in each box; pixels
        outside every box do not contribute.
    """
    from torchvision.ops import roi_align

    _check_images("pred", pred)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match")
    if boxes.ndim == 2:
        boxes = boxes.unsqueeze(1)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != pred.shape[0]:
        raise ValueError(f"boxes must be B×K×4 with B={pred.shape[0]}, got shape {tuple(boxes.shape)}")
    b, k = boxes.shape[:2]
    idx = torch.arange(b, device=pred.device, dtype=pred.dtype).repeat_interleave(k).unsqueeze(1)
    rois = torch.cat([idx, boxes.reshape(-1, 4).to(pred.device, pred.dtype)], dim=1)
    # aligned=True: box coordinates are continuous (pixel centres at i + 0.5), as our landmarks.
    p = roi_align(pred, rois, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    t = roi_align(target.to(pred.dtype), rois, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return (p - t).abs().mean()


# -- structural similarity ---------------------------------------------------------------------
def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of ``B×C×H×W`` images in [-1, 1], differentiable.

    Matches ``skimage.metrics.structural_similarity(..., channel_axis=2, data_range=255)`` — the
    metric ``metaportrait evaluate`` reports — on the same images: a uniform ``window×window``
    window, sample covariances (``N / (N - 1)``), K1 = 0.01, K2 = 0.03, and the mean over the
    valid (unpadded) window positions of every channel.
    """
    _check_images("pred", pred)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match")
    x = (pred.float() + 1.0) * 0.5  # data range 1
    y = (target.float() + 1.0) * 0.5
    c1, c2 = 0.01**2, 0.03**2
    n = window * window
    cov_norm = n / (n - 1)

    def mean(z: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(z, window, stride=1)

    mx, my = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - mx * mx)
    vy = cov_norm * (mean(y * y) - my * my)
    vxy = cov_norm * (mean(x * y) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


# -- adversarial -------------------------------------------------------------------------------
def _as_list(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)


def discriminator_loss(
    real_logits: torch.Tensor | Sequence[torch.Tensor],
    fake_logits: torch.Tensor | Sequence[torch.Tensor],
    kind: GanKind = "lsgan",
) -> torch.Tensor:
    """Discriminator loss, averaged over scales (a tensor or a list of per-scale patch maps).

    LSGAN: ``mean((D(real) - 1)²) + mean(D(fake)²)``; hinge: ``mean(relu(1 - D(real))) +
    mean(relu(1 + D(fake)))``.
    """
    reals, fakes = _as_list(real_logits), _as_list(fake_logits)
    if len(reals) != len(fakes) or not reals:
        raise ValueError(f"need the same non-zero number of real and fake scales, got {len(reals)} and {len(fakes)}")
    total = reals[0].new_zeros(())
    for r, f in zip(reals, fakes):
        if kind == "lsgan":
            total = total + ((r - 1.0) ** 2).mean() + (f**2).mean()
        elif kind == "hinge":
            total = total + F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
        else:
            raise ValueError(f"kind must be 'lsgan' or 'hinge', got {kind!r}")
    return total / len(reals)


def generator_adversarial_loss(
    fake_logits: torch.Tensor | Sequence[torch.Tensor], kind: GanKind = "lsgan"
) -> torch.Tensor:
    """Generator loss, averaged over scales. LSGAN: ``mean((D(fake) - 1)²)``; hinge: ``-mean(D(fake))``."""
    fakes = _as_list(fake_logits)
    if not fakes:
        raise ValueError("need at least one scale of fake logits")
    total = fakes[0].new_zeros(())
    for f in fakes:
        if kind == "lsgan":
            total = total + ((f - 1.0) ** 2).mean()
        elif kind == "hinge":
            total = total - f.mean()
        else:
            raise ValueError(f"kind must be 'lsgan' or 'hinge', got {kind!r}")
    return total / len(fakes)


def feature_matching_loss(
    real_feats: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]],
    fake_feats: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]],
) -> torch.Tensor:
    """Mean L1 between discriminator features of fake and (detached) real images.

    Accepts per-layer lists or per-scale lists of per-layer lists; averaged over all maps.
    """

    def flat(x: Sequence) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for item in x:
            out.extend(flat(item) if isinstance(item, (list, tuple)) else [item])
        return out

    reals, fakes = flat(real_feats), flat(fake_feats)
    if len(reals) != len(fakes) or not reals:
        raise ValueError(f"need the same non-zero number of feature maps, got {len(reals)} and {len(fakes)}")
    total = fakes[0].new_zeros(())
    for r, f in zip(reals, fakes):
        if r.shape != f.shape:
            raise ValueError(f"feature shapes differ: {tuple(r.shape)} vs {tuple(f.shape)}")
        total = total + (f - r.detach()).abs().mean()
    return total / len(reals)


# -- the combined objective ----------------------------------------------------------------------
@dataclass(frozen=True)
class LossWeights:
    """λ of each term (MetaPortrait §3.1; official code for feature matching)."""

    warp_vgg: float = 1.0
    refine_vgg: float = 10.0
    identity: float = 20.0
    eye: float = 50.0
    mouth: float = 50.0
    adv: float = 1.0
    feature_matching: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"loss weight {f.name} must be a non-negative number, got {v!r}")


@dataclass
class BaseLossTerms:
    """Unweighted scalar terms and the weighted ``total`` (0-d tensors; absent terms are 0)."""

    warp_vgg: torch.Tensor
    refine_vgg: torch.Tensor
    identity: torch.Tensor
    eye: torch.Tensor
    mouth: torch.Tensor
    adv: torch.Tensor
    feature_matching: torch.Tensor
    total: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """``{name: float}`` for logging."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


class BaseLoss(nn.Module):
    """The generator objective of the base model (MetaPortrait §3.1; docs/METHOD.md §7).

    Args:
        weights: the λs.
        perceptual: a :class:`PerceptualLoss` (shared by the warp and refinement terms).
        identity: an :class:`IdentityLoss`, or ``None`` to drop ``L_id``.
        gan_kind: ``"lsgan"`` (official) or ``"hinge"`` for ``L_adv``.

    Stage 1 (warping network alone) passes ``refined=None``: the refinement, identity, region and
    adversarial terms are then zero and the eye/mouth L1 is applied to the warped source instead
    (the only output). Stage 2 passes both.
    """

    def __init__(
        self,
        weights: LossWeights = LossWeights(),
        perceptual: PerceptualLoss | None = None,
        identity: IdentityLoss | None = None,
        gan_kind: GanKind = "lsgan",
    ) -> None:
        super().__init__()
        if gan_kind not in ("lsgan", "hinge"):
            raise ValueError(f"gan_kind must be 'lsgan' or 'hinge', got {gan_kind!r}")
        self.weights = weights
        self.perceptual = perceptual if perceptual is not None else PerceptualLoss()
        self.identity = identity
        self.gan_kind = gan_kind

    def forward(
        self,
        warped: torch.Tensor,
        driving: torch.Tensor,
        *,
        refined: torch.Tensor | None = None,
        source: torch.Tensor | None = None,
        driving_boxes: torch.Tensor | None = None,
        source_points: torch.Tensor | None = None,
        driving_points: torch.Tensor | None = None,
        fake_logits: torch.Tensor | Sequence[torch.Tensor] | None = None,
        real_feats: Sequence | None = None,
        fake_feats: Sequence | None = None,
    ) -> BaseLossTerms:
        """Terms and total.

        Args:
            warped: Ĩ_s, the warped source ``B×3×H×W``.
            driving: the target frame.
            refined: Ĩ_y (stage 2) or ``None`` (stage 1).
            source: I_s (needed for ``L_id``).
            driving_boxes: ``B×3×4`` boxes (left eye, right eye, mouth) in the driving frame.
            source_points, driving_points: ``B×5×2`` five points (for ``L_id``).
            fake_logits: discriminator outputs on the generated image (for ``L_adv``).
            real_feats, fake_feats: discriminator features (for feature matching).
        """
        w = self.weights
        zero = warped.new_zeros(())
        warp_vgg = self.perceptual(warped, driving) if w.warp_vgg > 0 else zero
        out = refined if refined is not None else warped
        refine_vgg = self.perceptual(refined, driving) if refined is not None and w.refine_vgg > 0 else zero
        identity = zero
        if refined is not None and self.identity is not None and w.identity > 0:
            if source is None or source_points is None or driving_points is None:
                raise ValueError("the identity loss needs source, source_points and driving_points")
            identity = self.identity(refined, source, driving_points, source_points)
        eye = mouth = zero
        if driving_boxes is not None:
            if driving_boxes.ndim != 3 or driving_boxes.shape[1:] != (3, 4):
                raise ValueError(f"driving_boxes must be B×3×4 (left eye, right eye, mouth), got {tuple(driving_boxes.shape)}")
            if w.eye > 0:
                eye = region_l1(out, driving, driving_boxes[:, :2])
            if w.mouth > 0:
                mouth = region_l1(out, driving, driving_boxes[:, 2:3])
        adv = generator_adversarial_loss(fake_logits, self.gan_kind) if fake_logits is not None and w.adv > 0 else zero
        fm = (
            feature_matching_loss(real_feats, fake_feats)
            if real_feats is not None and fake_feats is not None and w.feature_matching > 0
            else zero
        )
        total = (
            w.warp_vgg * warp_vgg + w.refine_vgg * refine_vgg + w.identity * identity + w.eye * eye
            + w.mouth * mouth + w.adv * adv + w.feature_matching * fm
        )
        return BaseLossTerms(warp_vgg, refine_vgg, identity, eye, mouth, adv, fm, total)
