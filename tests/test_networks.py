"""Tests of the MetaPortrait networks: layers, warping/refinement networks, generator presets,
multi-scale discriminator, Hub save/load (strict, safetensors, model card), configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from metaportrait.errors import WeightsError
from metaportrait.models import (
    PRESETS,
    AdaIN,
    DiscriminatorConfig,
    FiLM,
    FusionBlock,
    FusionNorm,
    GeneratorConfig,
    MetaPortraitGenerator,
    MultiScalePatchDiscriminator,
    RefinementConfig,
    WarpingConfig,
    discriminator_config,
    generator_config,
    gaussian_blur,
    make_identity_grid,
)

TINY = ["tiny", "tiny-direct", "tiny-blend"]


def _to_tensor(img: np.ndarray, size: int) -> torch.Tensor:
    """uint8 H×W×3 -> 1×3×size×size in [-1, 1]."""
    t = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1
    return F.interpolate(t, size=(size, size), mode="area")


def _edges(img: torch.Tensor) -> torch.Tensor:
    """A line drawing of an image (gradient magnitude), like a landmark image: black + bright lines."""
    gray = img.mean(1, keepdim=True)
    gx = F.pad(gray[..., :, 1:] - gray[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(gray[..., 1:, :] - gray[..., :-1, :], (0, 0, 0, 1))
    mag = (gx.abs() + gy.abs()).clamp(0, 0.5) * 4 - 1
    return mag.expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="module")
def inputs(astronaut, mona_lisa):
    """Real faces: source = astronaut, driving = Mona Lisa; landmark-like line drawings of both."""

    def make(size: int, b: int = 2) -> dict[str, torch.Tensor]:
        src = torch.cat([_to_tensor(astronaut, size), _to_tensor(mona_lisa, size)])[:b]
        drv = torch.cat([_to_tensor(mona_lisa, size), _to_tensor(astronaut, size)])[:b]
        gen = torch.Generator().manual_seed(0)
        prior = make_identity_grid(b, size, size) + 0.03 * torch.randn(b, size, size, 2, generator=gen)
        return {
            "source": src,
            "source_landmarks": _edges(src),
            "driving_landmarks": _edges(drv),
            "identity": torch.randn(b, 128, generator=gen),
            "prior": prior,
        }

    return make


def _run(model: MetaPortraitGenerator, x: dict[str, torch.Tensor], stage: str = "full"):
    prior = x["prior"] if model.config.use_prior else None
    return model(x["source"], x["source_landmarks"], x["driving_landmarks"], x["identity"], prior_grid=prior, stage=stage)


def _model(name: str, seed: int = 0) -> MetaPortraitGenerator:
    torch.manual_seed(seed)
    return MetaPortraitGenerator(generator_config(name))


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------


def test_identity_grid_reproduces_image(astronaut):
    img = _to_tensor(astronaut, 48)
    grid = make_identity_grid(1, 48, 48)
    assert grid.shape == (1, 48, 48, 2)
    assert grid[0, 0, 0].tolist() == pytest.approx([-1 + 1 / 48, -1 + 1 / 48])
    out = F.grid_sample(img, grid, align_corners=False)
    assert torch.allclose(out, img, atol=1e-5)
    with pytest.raises(ValueError, match="-1"):
        make_identity_grid(-1, 4, 4)


def test_adain_uses_code_and_checks_shapes():
    torch.manual_seed(0)
    layer = AdaIN(8, 5)
    x = torch.randn(2, 8, 6, 6) * 3 + 1
    out_a = layer(x, torch.randn(2, 5))
    out_b = layer(x, torch.randn(2, 5))
    assert out_a.shape == x.shape and not torch.allclose(out_a, out_b)
    with torch.no_grad():
        layer.affine.weight.zero_()
    plain = layer(x, torch.randn(2, 5))  # zero affine -> plain instance norm
    assert torch.allclose(plain.mean((2, 3)), torch.zeros(2, 8), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        layer(x, torch.randn(2, 4))
    with pytest.raises(ValueError, match="channels"):
        layer(torch.randn(2, 7, 6, 6), torch.randn(2, 5))


def test_film_resizes_condition_and_checks_channels():
    film = FiLM(4, 3, 8)
    h = torch.randn(2, 4, 8, 8)
    assert film(h, torch.randn(2, 3, 32, 32)).shape == h.shape
    with pytest.raises(ValueError, match="3 channels"):
        film(h, torch.randn(2, 2, 8, 8))


@pytest.mark.parametrize("mask_bias, expect", [(40.0, "motion"), (-40.0, "id")])
def test_fusion_norm_follows_eqs_1_2(mask_bias, expect):
    """h_out = M·h_motion + (1−M)·h_id: a saturated mask selects one branch exactly."""
    torch.manual_seed(0)
    fuse = FusionNorm(6, 10, 5, 8)
    with torch.no_grad():
        fuse.mask.weight.zero_()
        fuse.mask.bias.fill_(mask_bias)
        fuse.film.gamma_beta.weight.normal_(std=0.5)
    h, z, cond = torch.randn(2, 6, 8, 8), torch.randn(2, 10), torch.randn(2, 5, 8, 8)
    out, m = fuse(h, z, cond)
    h_id = fuse.adain(h, z)
    h_motion = fuse.film(h_id, cond)
    assert m.shape == (2, 1, 8, 8)
    assert torch.allclose(out, h_motion if expect == "motion" else h_id, atol=1e-6)
    assert not torch.allclose(h_motion, h_id, atol=1e-3)


def test_fusion_block_shapes():
    block = FusionBlock(16, 8, 12, 7, 8)
    out, masks = block(torch.randn(2, 16, 8, 8), torch.randn(2, 12), torch.randn(2, 7, 16, 16))
    assert out.shape == (2, 8, 8, 8)
    assert len(masks) == 2 and all(((m >= 0) & (m <= 1)).all() for m in masks)
    with pytest.raises(ValueError, match="16 channels"):
        block(torch.randn(2, 8, 8, 8), torch.randn(2, 12), torch.randn(2, 7, 8, 8))


# ---------------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["warp", "full"])
@pytest.mark.parametrize("name", TINY)
def test_generator_shapes(name, stage, inputs):
    model = _model(name)
    cfg = model.config
    s = cfg.image_size
    x = inputs(s)
    out = _run(model, x, stage)
    fs = cfg.warping.flow_size
    assert out.image.shape == (2, 3, s, s)
    assert out.warped.shape == (2, 3, s, s)
    assert out.grid.shape == (2, s, s, 2)
    assert out.flow.shape == (2, 2, fs, fs)
    assert out.occlusion.shape == (2, 1, s, s)
    assert out.motion_code.shape == (2, cfg.warping.motion_dim)
    assert torch.allclose(out.motion_code.norm(dim=1), torch.ones(2), atol=1e-5)
    assert out.image.min() >= -1 and out.image.max() <= 1
    if stage == "warp":
        assert out.image is out.warped and out.masks == []
    else:
        assert len(out.masks) > 0 and all(m.shape[:2] == (2, 1) for m in out.masks)


@pytest.mark.parametrize("stage", ["warp", "full"])
@pytest.mark.parametrize("name", TINY)
def test_generator_at_init_starts_from_the_prior(name, stage, inputs):
    """Zero-initialised flow head: grid == prior (or identity); residual output == warped source."""
    model = _model(name).eval()
    cfg = model.config
    x = inputs(cfg.image_size)
    with torch.no_grad():
        out = _run(model, x, stage)
    assert (out.flow == 0).all()
    assert out.occlusion.min() > 0.95
    if cfg.use_prior:
        assert torch.equal(out.grid, x["prior"])
        expected = F.grid_sample(x["source"], x["prior"], padding_mode=cfg.warping.padding_mode, align_corners=False)
        assert torch.equal(out.warped, expected)
    else:
        assert torch.equal(out.grid, make_identity_grid(2, cfg.image_size, cfg.image_size))
        assert torch.allclose(out.warped, x["source"], atol=1e-5)
    if cfg.refinement.output_mode == "residual" or stage == "warp":
        assert torch.equal(out.image, out.warped)
    elif cfg.refinement.output_mode == "blend":  # the mean of the warp and its blurs, no residual yet
        stack = [out.warped] + [gaussian_blur(out.warped, s * cfg.image_size / 256) for s in cfg.refinement.blur_sigmas]
        assert torch.allclose(out.image, torch.stack(stack).mean(0).clamp(-1, 1), atol=1e-6)
        assert not torch.allclose(out.image, out.warped, atol=1e-2)
    else:
        assert not torch.allclose(out.image, out.warped, atol=1e-2)


@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_every_parameter_in_full_stage(name, inputs):
    model = _model(name)
    # Zero-initialised output layers block gradients upstream at step 0 by design; perturb them
    # to check that every parameter is wired into the output.
    with torch.no_grad():
        heads = [model.warping.flow_head, model.refinement.head, getattr(model.refinement, "blend_head", None)]
        for layer in filter(None, heads):
            layer.weight.normal_(std=1e-2)
            layer.bias.normal_(std=1e-2)
    x = inputs(model.config.image_size)
    out = _run(model, x, "full")
    target = torch.flip(x["source"], dims=[-1])
    (out.image - target).abs().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_gaussian_blur_matches_opencv(astronaut):
    import cv2

    img = np.ascontiguousarray(astronaut[::4, ::4][:, :100]).astype(np.float32) / 255.0  # 128×100: H ≠ W
    for sigma in (0.5, 1.0, 2.0):
        r = int(np.ceil(3 * sigma))
        ref = cv2.GaussianBlur(img, (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REFLECT_101)
        out = gaussian_blur(torch.from_numpy(img).permute(2, 0, 1)[None], sigma)[0].permute(1, 2, 0).numpy()
        assert np.abs(out - ref).max() < 1e-5, sigma
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    assert gaussian_blur(x, 0.0) is x
    with pytest.raises(ValueError, match="too large"):
        gaussian_blur(x[..., :8, :8], 3.0)


@pytest.mark.parametrize("residual", [False, True])
def test_blend_output_follows_its_weights(residual, inputs, tmp_path):
    """Forcing the blend logits to one image selects it exactly: the warp, or one blur of it (the
    residual head starts at zero); with ``blend_residual`` the residual head exists and round-trips."""
    cfg = generator_config("tiny-blend")
    cfg = cfg.replace(refinement=cfg.refinement.replace(blend_residual=residual))
    torch.manual_seed(0)
    model = MetaPortraitGenerator(cfg).eval()
    assert (model.refinement.head is not None) == residual
    model.save_pretrained(tmp_path)
    assert MetaPortraitGenerator.from_pretrained(tmp_path).config == cfg
    x = inputs(cfg.image_size)
    for k in range(1 + len(cfg.refinement.blur_sigmas)):
        with torch.no_grad():
            model.refinement.blend_head.bias.fill_(-50.0)
            model.refinement.blend_head.bias[k] = 50.0
            out = _run(model, x)
        sigma = ([0.0] + list(cfg.refinement.blur_sigmas))[k] * cfg.image_size / 256
        expected = gaussian_blur(out.warped, sigma) if sigma else out.warped
        assert torch.allclose(out.image, expected.clamp(-1, 1), atol=1e-5), k
        weights = model.refinement(x["source"], model.warping(x["source"], x["source_landmarks"],
                                   x["driving_landmarks"], x["prior"]), x["identity"], x["driving_landmarks"]).blend_weights
        assert weights.shape == (2, 1 + len(cfg.refinement.blur_sigmas), 64, 64)
        assert torch.allclose(weights[:, k], torch.ones(1))


def test_warp_stage_leaves_refinement_untouched(inputs):
    model = _model("tiny")
    x = inputs(model.config.image_size)
    out = _run(model, x, "warp")
    (out.image - x["source"].flip(-1)).abs().mean().backward()
    assert all(p.grad is None for p in model.refinement.parameters())
    assert model.warping.flow_head.weight.grad.abs().sum() > 0


def test_generator_input_validation(inputs):
    prior_model, plain_model = _model("tiny"), _model("tiny-direct")
    x = inputs(64)
    args = (x["source"], x["source_landmarks"], x["driving_landmarks"], x["identity"])
    with pytest.raises(ValueError, match="prior_grid"):
        prior_model(*args)
    with pytest.raises(ValueError, match="prior_grid"):
        plain_model(*args, prior_grid=x["prior"])
    with pytest.raises(ValueError, match=r"\(2, 64, 64, 2\)"):
        prior_model(*args, prior_grid=x["prior"][:, :32])
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\)"):
        plain_model(x["source"][..., :32, :32], *args[1:])
    with pytest.raises(ValueError, match="'refine'"):
        plain_model(*args, stage="refine")
    with pytest.raises(ValueError, match=r"\(2, 128\)"):
        plain_model(*args[:3], x["identity"][:, :16])
    with pytest.raises(ValueError, match="identity"):
        plain_model(*args[:3], None, stage="full")
    assert plain_model(*args[:3], None, stage="warp").image.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("name", ["tiny", "tiny-blend"])
def test_bf16_autocast_forward(name, inputs):
    model = _model(name).eval()
    x = inputs(64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(model, x, "full")
    assert torch.isfinite(out.image.float()).all() and out.image.shape == (2, 3, 64, 64)


# ---------------------------------------------------------------------------------------------
# Hub round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_save_and_load_pretrained(name, inputs, tmp_path):
    model = _model(name, seed=1)
    with torch.no_grad():  # non-trivial weights everywhere, the zero-initialised heads included
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    card = (tmp_path / "README.md").read_text()
    for needle in ("library_name: metaportrait", "license: apache-2.0", "talking-head", "generator",
                   "https://arxiv.org/abs/2212.08062", "MetaPortraitGenerator"):
        assert needle in card, needle
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["warping"]["use_prior"] == model.config.use_prior
    assert saved["refinement"]["output_mode"] == model.config.refinement.output_mode

    loaded = MetaPortraitGenerator.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    assert isinstance(loaded.config.warping, WarpingConfig)
    x = inputs(model.config.image_size)
    with torch.no_grad():
        a, b = _run(model, x), _run(loaded, x)
    assert (a.image - b.image).abs().max() <= 1e-5
    assert (a.grid - b.grid).abs().max() <= 1e-5


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_from_pretrained_is_strict(change, tmp_path):
    model = _model("tiny")
    model.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if change == "missing":
        state.pop("refinement.head.weight")
    else:
        state["refinement.extra.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="head.weight" if change == "missing" else "extra"):
        MetaPortraitGenerator.from_pretrained(tmp_path)


def test_paper_preset_parameter_count():
    with torch.device("meta"):
        model = MetaPortraitGenerator(generator_config("paper"))
    n = model.num_parameters()
    assert n == 130_861_459, n  # the paper preset, pinned: a changed layer shows up here
    cfg = model.config
    assert not cfg.use_prior and cfg.refinement.output_mode == "direct"
    assert cfg.image_size == 256 and cfg.warping.flow_size == 64 and cfg.warping.motion_dim == 512


def test_demo_preset_choices():
    cfg = generator_config("demo")
    assert cfg.use_prior and cfg.refinement.output_mode == "residual"
    assert cfg.image_size == 256 and cfg.warping.flow_size == 64
    with torch.device("meta"):
        assert MetaPortraitGenerator(cfg).num_parameters() < 5e6
    blend = generator_config("demo-blend")  # the embedded weights: demo + blend head (residual kept)
    assert blend.refinement.output_mode == "blend" and blend.refinement.blend_residual
    assert blend.warping == cfg.warping and blend.refinement.blur_sigmas == (1.0, 2.0)


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(name):
    cfg = generator_config(name)
    restored = GeneratorConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    assert isinstance(restored.warping, WarpingConfig) and isinstance(restored.refinement, RefinementConfig)


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match="tiny-direct"):
        generator_config("huge")
    with pytest.raises(ValueError, match="demo"):
        discriminator_config("huge")


@pytest.mark.parametrize(
    "make, shown",
    [
        (lambda: WarpingConfig(padding_mode="wrap"), "wrap"),
        (lambda: WarpingConfig(flow_size=48, hourglass_depth=5), "48"),
        (lambda: WarpingConfig(encoder_size=100), "100"),
        (lambda: WarpingConfig(motion_dim=0), "0"),
        (lambda: WarpingConfig(flow_size=512), "512"),
        (lambda: RefinementConfig(output_mode="sigmoid"), "sigmoid"),
        (lambda: RefinementConfig(num_down=9), "9"),
        (lambda: RefinementConfig(blur_sigmas=()), "blur_sigmas"),
        (lambda: RefinementConfig(blur_sigmas=(1.0, -2.0)), "-2.0"),
        (lambda: RefinementConfig(blend_residual="no"), "'no'"),
        (lambda: RefinementConfig(fusion_min_level=5, num_down=3), "5"),
        (lambda: GeneratorConfig(identity_dim=512), "512"),
        (lambda: GeneratorConfig(refinement=RefinementConfig(image_size=128)), "128"),
        (lambda: GeneratorConfig.from_dict({"warping": {"bogus": 1}}), "bogus"),
        (lambda: DiscriminatorConfig(num_scales=0), "0"),
        (lambda: DiscriminatorConfig(norm="batch"), "batch"),
    ],
)
def test_invalid_config_raises(make, shown):
    with pytest.raises(ValueError, match=shown):
        make()


# ---------------------------------------------------------------------------------------------
# discriminator
# ---------------------------------------------------------------------------------------------


def test_discriminator_outputs_and_round_trip(inputs, tmp_path):
    torch.manual_seed(0)
    disc = MultiScalePatchDiscriminator(discriminator_config("tiny"))
    cfg = disc.config
    x = inputs(64)
    out = disc(x["source"], x["driving_landmarks"])
    assert len(out.logits) == len(out.features) == cfg.num_scales
    assert all(lg.shape[:2] == (2, 1) for lg in out.logits)
    assert out.logits[1].shape[-1] < out.logits[0].shape[-1]
    assert all(len(f) == cfg.num_layers + 1 for f in out.features)
    out.logits[0].mean().backward()
    assert all(p.grad is not None for p in disc.discriminators[0].parameters())

    disc.eval()
    disc.save_pretrained(tmp_path)
    assert "discriminator" in (tmp_path / "README.md").read_text()
    loaded = MultiScalePatchDiscriminator.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a = disc(x["source"], x["driving_landmarks"])
        b = loaded(x["source"], x["driving_landmarks"])
    assert all((p - q).abs().max() <= 1e-5 for p, q in zip(a.logits, b.logits))

    with pytest.raises(ValueError, match="condition"):
        disc(x["source"])
    plain = MultiScalePatchDiscriminator(DiscriminatorConfig(condition_channels=0, base_channels=8, spectral_norm=False, num_layers=2))
    assert len(plain(x["source"]).logits) == 2
    with pytest.raises(ValueError, match="condition"):
        plain(x["source"], x["driving_landmarks"])
