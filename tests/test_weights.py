"""The embedded weights in `weights/` (what `make demo` serves): every component loads strictly and
the generator turns a real photo and a real driving clip into a face that moves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from metaportrait.face import FaceAnalyzer
from metaportrait.face.regions import region_mask
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.fixture(scope="module")
def pipe() -> MetaPortraitPipeline:
    return MetaPortraitPipeline.from_pretrained(WEIGHTS, device="cpu")


def test_model_index_names_existing_components():
    index = json.loads((WEIGHTS / "model_index.json").read_text())
    names = {k: v for k, v in index.items() if k != "format"}
    assert {"generator", "meta"} <= set(names)
    for component, folder in names.items():
        assert (WEIGHTS / folder).is_dir(), f"{component} -> {folder} is missing"
        assert list((WEIGHTS / folder).rglob("*.safetensors")), f"{folder} has no safetensors"
    assert not list(WEIGHTS.rglob("*.bin")) and not list(WEIGHTS.rglob("*.pt*")), "safetensors only"


def test_embedded_generator_animates_a_real_photo(pipe, astronaut, driving_frames):
    assert pipe.generator.config.image_size == 256
    src = pipe.prepare_source(astronaut)
    frames = list(pipe.animate(src, driving_frames[:16], ReenactOptions(mode="relative", visible_label=False)))
    assert len(frames) == 16 and frames[0].shape == (256, 256, 3)
    with FaceAnalyzer(static_image_mode=True) as fa:
        lms = [fa.largest(f).landmarks for f in (frames[0], frames[-1])]  # a face in the output
    # the face moves: the frames differ from each other around the mouth and eyes, not only by noise
    mask = region_mask(lms[0], 256, "mouth", dilate=6) + region_mask(lms[0], 256, "eyes", dilate=6) > 0
    stack = np.stack(frames).astype(np.float32)
    assert stack[:, mask].std(axis=0).mean() > 2.0
    assert np.isfinite(stack).all()


def test_embedded_meta_and_fewshot_components_load_strictly():
    from metaportrait.fewshot_pipeline import load_fewshot
    from metaportrait.models.generator import MetaPortraitGenerator

    index = json.loads((WEIGHTS / "model_index.json").read_text())
    meta = MetaPortraitGenerator.from_pretrained(WEIGHTS / index["meta"])
    base = MetaPortraitGenerator.from_pretrained(WEIGHTS / index["generator"])
    assert meta.config == base.config
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(meta.parameters(), base.parameters()))
    assert moved > 0, "the meta-learned initialisation must differ from the base weights"
    if "fewshot" in index:
        embedder, generator, discriminator = load_fewshot(WEIGHTS)
        assert embedder.config.image_size == generator.config.image_size


def test_embedded_sr_upscales_to_512(astronaut):
    from metaportrait.superres import load_sr_model, upscale_frames

    index = json.loads((WEIGHTS / "model_index.json").read_text())
    if "sr" not in index:
        pytest.skip("no super-resolution weights are embedded")
    model = load_sr_model(WEIGHTS).eval()
    face = np.ascontiguousarray(astronaut[:256, 128:384])
    out = list(upscale_frames(model, iter([face, face, face])))
    assert len(out) == 3 and out[0].shape == (512, 512, 3) and out[0].dtype == np.uint8


# -- where the default weights come from ----------------------------------------------------------
def test_without_a_source_tree_from_pretrained_says_how_to_name_the_weights(monkeypatch, tmp_path):
    """Installed from a wheel there is no weights/ folder beside the package: a clear WeightsError,
    raised before any model is loaded, that says what to do instead."""
    import metaportrait.weights as weights_module
    from metaportrait.errors import WeightsError

    missing = tmp_path / "site-packages" / "weights"  # what REPO_ROOT / "weights" is for a wheel
    monkeypatch.setattr(weights_module, "EMBEDDED_WEIGHTS", missing)
    monkeypatch.delenv("METAPORTRAIT_WEIGHTS", raising=False)
    with pytest.raises(WeightsError) as err:
        MetaPortraitPipeline.from_pretrained()
    message = str(err.value)
    assert str(missing) in message
    assert "pipeline folder" in message and "$METAPORTRAIT_WEIGHTS" in message and "Hub repo id" in message
    # the other ways of naming weights still work without the embedded folder
    monkeypatch.setenv("METAPORTRAIT_WEIGHTS", str(WEIGHTS))
    assert weights_module.resolve_pipeline_folder(None) == WEIGHTS
    monkeypatch.delenv("METAPORTRAIT_WEIGHTS")
    assert weights_module.resolve_pipeline_folder(WEIGHTS) == WEIGHTS


def test_in_a_source_checkout_the_embedded_folder_is_the_default(monkeypatch):
    from metaportrait.weights import EMBEDDED_WEIGHTS, resolve_pipeline_folder

    monkeypatch.delenv("METAPORTRAIT_WEIGHTS", raising=False)
    assert EMBEDDED_WEIGHTS.resolve() == WEIGHTS.resolve()
    assert resolve_pipeline_folder(None).resolve() == WEIGHTS.resolve()
