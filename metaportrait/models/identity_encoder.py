"""Identity encoder E_id of MetaPortrait (paper §3.1, eqs. 1-2; docs/METHOD.md §6.1).

``z_id = E_id(I_s)`` is a frozen, pretrained face-recognition embedding. It conditions the
ID-preserving refinement network (AdaIN in every fusion block) and defines the identity loss
``L_id = 1 - cos(E_id(Ĩ_y), E_id(I_s))``.

Two architectures, both taking 112×112 faces aligned to the ArcFace 5-point template
(:mod:`metaportrait.models.face_align`):

* ``"sface"`` (default, ships offline): OpenCV Zoo's SFace (MobileFaceNet-style network trained
  with the SFace loss, Apache-2.0), 128-d. :class:`SFaceNet` reproduces the ONNX graph
  ``face_recognition_sface_2021dec*.onnx`` layer for layer: ``(x - 127.5) / 128`` on RGB 0..255,
  a 3×3 conv, then 13 depthwise-3×3 + pointwise-1×1 pairs, each conv followed by BatchNorm
  (eps 1e-3) and PReLU, a BatchNorm (eps 2e-5), dropout, a 50176→128 linear layer and a final
  BatchNorm1d (eps 2e-5). Weights come from ``metaportrait.convert.sface``.
* ``"arcface_irse50"`` (the paper's choice): the IR-SE50 ArcFace backbone of facexlib
  (``facexlib.recognition.arcface_arch.Backbone(50, 0.6, "ir_se")``), 512-d, RGB in [-1, 1];
  weights from an ArcFace ``.pth`` via ``metaportrait.identity.from_arcface_checkpoint``.

The encoder is differentiable w.r.t. its input (the identity loss back-propagates through it)
but is meant to stay frozen: :meth:`IdentityEncoder.freeze` sets eval mode and
``requires_grad=False``, and a frozen encoder stays in eval mode when a parent calls ``.train()``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.models.hub import HubModel, ModelConfig

EMBEDDING_DIMS: dict[str, int] = {"sface": 128, "arcface_irse50": 512}
INPUT_SIZE = 112

# SFace's input normalisation, as in the ONNX graph (Sub scalar_op1, Mul scalar_op2) on RGB 0..255.
SFACE_MEAN = 127.5
SFACE_SCALE = 0.0078125  # 1 / 128

# (name, in_channels, out_channels, kernel, stride, groups) of every conv in SFace, graph order.
SFACE_LAYERS: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("conv_1", 3, 32, 3, 1, 1),
    ("conv_2_dw", 32, 32, 3, 1, 32),
    ("conv_2", 32, 64, 1, 1, 1),
    ("conv_3_dw", 64, 64, 3, 2, 64),
    ("conv_3", 64, 128, 1, 1, 1),
    ("conv_4_dw", 128, 128, 3, 1, 128),
    ("conv_4", 128, 128, 1, 1, 1),
    ("conv_5_dw", 128, 128, 3, 2, 128),
    ("conv_5", 128, 256, 1, 1, 1),
    ("conv_6_dw", 256, 256, 3, 1, 256),
    ("conv_6", 256, 256, 1, 1, 1),
    ("conv_7_dw", 256, 256, 3, 2, 256),
    ("conv_7", 256, 512, 1, 1, 1),
    ("conv_8_dw", 512, 512, 3, 1, 512),
    ("conv_8", 512, 512, 1, 1, 1),
    ("conv_9_dw", 512, 512, 3, 1, 512),
    ("conv_9", 512, 512, 1, 1, 1),
    ("conv_10_dw", 512, 512, 3, 1, 512),
    ("conv_10", 512, 512, 1, 1, 1),
    ("conv_11_dw", 512, 512, 3, 1, 512),
    ("conv_11", 512, 512, 1, 1, 1),
    ("conv_12_dw", 512, 512, 3, 1, 512),
    ("conv_12", 512, 512, 1, 1, 1),
    ("conv_13_dw", 512, 512, 3, 2, 512),
    ("conv_13", 512, 1024, 1, 1, 1),
    ("conv_14_dw", 1024, 1024, 3, 1, 1024),
    ("conv_14", 1024, 1024, 1, 1, 1),
)
SFACE_FEATURE_CHANNELS = 1024
SFACE_FEATURE_SIZE = 7  # 112 / 2**4


@dataclasses.dataclass(frozen=True)
class IdentityEncoderConfig(ModelConfig):
    """Config of :class:`IdentityEncoder`.

    Attributes:
        arch: ``"sface"`` (OpenCV Zoo SFace, 128-d) or ``"arcface_irse50"`` (IR-SE50 ArcFace, 512-d).
        embedding_dim: size of the embedding; ``None`` derives it from ``arch`` (128 or 512), any
            other value must equal that.
    """

    arch: Literal["sface", "arcface_irse50"] = "sface"
    embedding_dim: int | None = None

    def __post_init__(self) -> None:
        if self.embedding_dim is None and self.arch in EMBEDDING_DIMS:
            object.__setattr__(self, "embedding_dim", EMBEDDING_DIMS[self.arch])
        super().__post_init__()

    def validate(self) -> None:
        if self.arch not in EMBEDDING_DIMS:
            raise ValueError(f"arch must be one of {sorted(EMBEDDING_DIMS)}, got {self.arch!r}")
        if self.embedding_dim != EMBEDDING_DIMS[self.arch]:
            raise ValueError(
                f"embedding_dim of arch {self.arch!r} is {EMBEDDING_DIMS[self.arch]}, got {self.embedding_dim!r}"
            )


class ConvBNPReLU(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3, as in the SFace graph) → per-channel PReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SFaceNet(nn.Module):
    """The SFace network on ``B×3×112×112`` RGB 0..255 input; returns raw ``B×128`` features.

    Parameter names follow the ONNX initialisers (``conv_2_dw_conv2d_weight`` →
    ``features.conv_2_dw.conv.weight``), see ``metaportrait.convert.sface``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                (name, ConvBNPReLU(cin, cout, k, s, g)) for name, cin, cout, k, s, g in SFACE_LAYERS
            )
        )
        self.bn1 = nn.BatchNorm2d(SFACE_FEATURE_CHANNELS, eps=2e-5)
        self.dropout = nn.Dropout(p=0.4)
        self.pre_fc1 = nn.Linear(SFACE_FEATURE_CHANNELS * SFACE_FEATURE_SIZE**2, EMBEDDING_DIMS["sface"])
        self.fc1 = nn.BatchNorm1d(EMBEDDING_DIMS["sface"], eps=2e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - SFACE_MEAN) * SFACE_SCALE
        x = self.bn1(self.features(x))
        x = torch.flatten(self.dropout(x), 1)
        return self.fc1(self.pre_fc1(x))


def build_arcface_irse50() -> nn.Module:
    """facexlib's IR-SE50 ArcFace backbone (43.8M parameters), randomly initialised.

    Its ``state_dict`` keys are those of ArcFace checkpoints such as
    ``recognition_arcface_ir_se50.pth`` / ``model_ir_se50.pth``.
    """
    from facexlib.recognition.arcface_arch import Backbone

    return Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")


class IdentityEncoder(HubModel, tags=["face-recognition", "identity-embedding"]):
    """E_id: ``B×3×112×112`` aligned RGB faces in [-1, 1] → ``B×D`` L2-normalised embeddings.

    ``D`` is ``config.embedding_dim`` (128 for SFace, 512 for IR-SE50). Faces must be aligned to
    the ArcFace template first (:func:`metaportrait.models.face_align.align_faces`).
    """

    config_class = IdentityEncoderConfig

    def __init__(self, config: IdentityEncoderConfig) -> None:
        super().__init__(config)
        arch = self.config.arch
        if arch == "sface":
            self.backbone: nn.Module = SFaceNet()
        elif arch == "arcface_irse50":
            self.backbone = build_arcface_irse50()
        else:
            raise ValueError(f"unknown identity encoder arch {arch!r}")
        self._frozen = False

    def generate_model_card(self, *args, **kwargs):
        kwargs.setdefault("model_name", type(self).__name__)
        return super().generate_model_card(*args, **kwargs)

    @property
    def embedding_dim(self) -> int:
        return int(self.config.embedding_dim)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> IdentityEncoder:
        """Eval mode and ``requires_grad=False`` for every parameter; stays in eval on ``.train()``."""
        self._frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> IdentityEncoder:
        """Like ``nn.Module.train``, except that a frozen encoder always stays in eval mode."""
        return super().train(False if self._frozen else mode)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Embed aligned faces.

        Args:
            faces: ``B×3×112×112`` float RGB in [-1, 1], aligned to the ArcFace template.

        Returns:
            ``B×D`` float32 embeddings with unit L2 norm; cosine similarity is their dot product.
        """
        if faces.ndim != 4 or faces.shape[1] != 3 or tuple(faces.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"faces must be B×3×{INPUT_SIZE}×{INPUT_SIZE}, got shape {tuple(faces.shape)}")
        if not torch.is_floating_point(faces):
            raise ValueError(f"faces must be a float tensor in [-1, 1], got dtype {faces.dtype}")
        arch = self.config.arch
        if arch == "sface":
            # [-1, 1] RGB -> 0..255 RGB, what the ONNX graph takes (OpenCV's FaceRecognizerSF
            # feeds blobFromImage(bgr, swapRB=true), i.e. RGB 0..255).
            features = self.backbone((faces + 1.0) * 127.5)
        elif arch == "arcface_irse50":
            features = self.backbone(faces)  # IR-SE50 ArcFace takes RGB in [-1, 1] directly
        else:
            raise ValueError(f"unknown identity encoder arch {arch!r}")
        return F.normalize(features.float(), dim=1)

    @staticmethod
    def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise cosine similarity of two ``B×D`` embedding batches (``B``)."""
        return F.cosine_similarity(a, b, dim=1)
