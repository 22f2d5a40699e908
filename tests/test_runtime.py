"""The generator's inference runtimes (metaportrait/runtime.py): the ONNX Runtime export gives what
eager PyTorch gives, for tiny configs of the real generator and for the embedded demo weights with
non-zero heads (as a personalized adapter has) driven by real landmarks on a real face."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaportrait.models.generator import MetaPortraitGenerator, generator_config
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions
from metaportrait.runtime import GeneratorRuntime, onnxruntime_available, resolve_backend

needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")


def _drawing_generator(preset: str) -> MetaPortraitGenerator:
    """A real generator whose flow and residual heads draw something (seeded)."""
    torch.manual_seed(0)
    gen = MetaPortraitGenerator(generator_config(preset)).eval()
    with torch.no_grad():
        gen.warping.flow_head.weight.normal_(0, 0.05)
        if gen.refinement.head is not None:
            gen.refinement.head.weight.normal_(0, 0.05)
    assert not gen.is_geometry_only()
    return gen


def _inputs(gen: MetaPortraitGenerator, batch: int):
    s = gen.config.image_size
    g = torch.Generator().manual_seed(batch)
    imgs = [torch.rand(batch, 3, s, s, generator=g) * 2 - 1 for _ in range(3)]
    prior = torch.rand(batch, s, s, 2, generator=g) * 2 - 1 if gen.config.use_prior else None
    return (*imgs, torch.randn(batch, gen.config.identity_dim, generator=g), prior)


@needs_ort
@pytest.mark.parametrize("preset", ["tiny", "tiny-blend", "tiny-direct", "tiny-gated"])
def test_onnx_matches_eager(preset):
    gen = _drawing_generator(preset)
    eager = GeneratorRuntime(gen, "eager")
    onnx = GeneratorRuntime(gen, "onnx")
    for batch in (1, 3, 1):  # a session per batch size; the second batch-1 call reuses the first
        x = _inputs(gen, batch)
        (g0, r0), (g1, r1) = eager(*x), onnx(*x)
        assert g1.shape == g0.shape and r1.shape == r0.shape
        assert float((g0 - g1).abs().max()) < 1e-4
        assert float((r0 - r1).abs().max()) < 1e-4
        if gen.refinement.head is not None:  # the heads really draw: a comparison of zeros proves nothing
            assert float(r0.abs().max()) > 0
        assert float((g0 - x[4]).abs().max() if x[4] is not None else g0.abs().max()) > 0
    assert sorted(onnx._sessions) == [1, 3]


def test_backend_choices():
    cpu = torch.device("cpu")
    assert resolve_backend("eager", cpu) == "eager"
    assert resolve_backend("auto", cpu) == ("onnx" if onnxruntime_available() else "eager")
    assert resolve_backend("auto", torch.device("cuda")) == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tensorrt", cpu)
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("onnx", torch.device("cuda"))


@needs_ort
def test_pipeline_frames_equal_across_backends(astronaut, driving_frames):
    """The embedded demo generator with drawing heads: the same frames through ONNX Runtime as eager."""
    ref = MetaPortraitPipeline.from_pretrained(device="cpu", backend="eager")
    torch.manual_seed(1)
    with torch.no_grad():
        ref.generator.warping.flow_head.weight.normal_(0, 1e-3)
        ref.generator.refinement.head.weight.normal_(0, 1e-2)
    ref.geometry_only = ref.generator.is_geometry_only()
    assert not ref.geometry_only
    fast = MetaPortraitPipeline(ref.generator, ref.identity_encoder, device="cpu", backend="onnx")
    opts = ReenactOptions(visible_label=False, size=256)
    src = ref.prepare_source(astronaut)
    a = np.stack(list(ref.animate(src, driving_frames[:3], opts)))
    b = np.stack(list(fast.animate(src, driving_frames[:3], opts)))
    diff = np.abs(a.astype(int) - b.astype(int))
    # equal but for rounding: float differences of ~1e-7 can tip a uint8 value or a pixel across the
    # residual layer's 3/255 threshold (render.residual_layer), nowhere more
    assert (diff > 1).mean() < 1e-4 and diff.max() <= 4, (diff.max(), (diff > 1).mean())
    geometry = MetaPortraitPipeline.from_pretrained(device="cpu")
    c = np.stack(list(geometry.animate(geometry.prepare_source(astronaut), driving_frames[:3], opts)))
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 0.05  # the heads changed the output

