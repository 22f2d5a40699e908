"""Few-shot adversarial talking heads (Zakharov et al. 2019): E, G, D and their training.

Tiny configs of the real classes, real frames of examples/driving_franck.mp4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metaportrait.models.fewshot import (
    DiscriminatorOutput,
    Embedder,
    EmbedderConfig,
    FewShotGenerator,
    FewShotGeneratorConfig,
    ProjectionDiscriminator,
    ProjectionDiscriminatorConfig,
)
from metaportrait.models.fewshot.layers import has_spectral_norm
from metaportrait.training.fewshot import (
    ContentLoss,
    EpisodeDataset,
    FewShotLossWeights,
    FewShotTrainConfig,
    FewShotVideoData,
    build_models,
    finetune_fewshot,
    train_fewshot,
)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny networks gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    spin-waiting makes them up to 50× slower; restore the session's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PIXEL_WEIGHTS = FewShotLossWeights(vgg19=0.0, vggface=0.0, pixel=10.0)
REPO = Path(__file__).resolve().parents[1]


# -- prepared data from real frames ----------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory, driving_frames) -> Path:
    """A prepared-data folder (docs/DATA_FORMAT.md) from the first 24 frames of the driving clip:
    two training clips of 12 frames (one with a held-out tail) and one held-out identity."""
    import mediapipe as mp

    from metaportrait.face.crop import CropTransform

    root = tmp_path_factory.mktemp("prepared")
    frames = np.stack(driving_frames)
    h, w = frames.shape[1:3]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        res = mesh.process(frames[0])
        assert res.multi_face_landmarks, "no face in the first frame of the driving clip"
        lm0 = np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark], np.float32)
    crop = CropTransform.from_landmarks(lm0, size=256)
    crops = np.stack([crop.crop(f) for f in frames])
    landmarks = np.zeros((len(crops), 478, 2), np.float32)
    valid = np.zeros(len(crops), bool)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=True, max_num_faces=1) as mesh:
        for i, c in enumerate(crops):
            res = mesh.process(c)
            if res.multi_face_landmarks:
                landmarks[i] = [[p.x * 256, p.y * 256] for p in res.multi_face_landmarks[0].landmark]
                valid[i] = True
            elif i:
                landmarks[i] = landmarks[i - 1]
    assert valid.sum() >= 20
    clips = [("franck/a", slice(0, 12), "train", 10), ("franck/b", slice(12, 24), "train", 12),
             ("other/c", slice(0, 6), "heldout_identity", 6)]
    records = []
    for cid, sl, split, held in clips:
        d = root / "clips" / cid
        d.mkdir(parents=True)
        np.save(d / "frames_256.npy", crops[sl])
        np.save(d / "landmarks_256.npy", landmarks[sl])
        np.save(d / "valid.npy", valid[sl])
        records.append({"id": cid, "identity": cid.split("/")[0], "source_file": "examples/driving_franck.mp4",
                        "fps": 24.0, "num_frames": sl.stop - sl.start, "has_512": False, "split": split,
                        "heldout_frames_from": held})
    (root / "manifest.json").write_text(json.dumps({"format": "metaportrait-prepared-v1", "clips": records,
                                                    "skipped": []}))
    return root


def _tiny(num_videos: int = 3) -> tuple[Embedder, FewShotGenerator, ProjectionDiscriminator]:
    torch.manual_seed(0)
    return build_models("tiny", num_videos)


def _images(b: int, seed: int = 0, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


# -- models ------------------------------------------------------------------------------------
@pytest.mark.parametrize("personalized", [False, True])
def test_shapes_and_strict_round_trip(tmp_path, personalized):
    embedder, generator, discriminator = _tiny()
    x, y = _images(2, 0), _images(2, 1)
    with torch.no_grad():
        e = embedder(x, y)
        assert e.shape == (2, 32) and bool((e >= 0).all())
        if personalized:
            generator = generator.personalize(e[0])
            discriminator = discriminator.personalize(e[0])
    for model in (embedder, generator, discriminator):
        model.eval()

    def outputs(e_mod, g_mod, d_mod):
        with torch.no_grad():
            ee = e_mod(x, y)
            frames = e_mod.embed_frames(torch.stack([x, y], 1), torch.stack([y, x], 1))
            img = g_mod(y) if personalized else g_mod(y, ee)
            out = d_mod(img, y) if personalized else d_mod(img, y, video_index=torch.tensor([0, 2]))
        return [ee, frames, img, out.score, out.v, *out.features]

    before = outputs(embedder, generator, discriminator)
    assert before[1].shape == (2, 32)
    assert before[2].shape == (2, 3, 64, 64) and before[2].abs().max() <= 1
    assert before[3].shape == (2,) and before[4].shape == (2, 32)
    loaded = []
    for name, model in (("e", embedder), ("g", generator), ("d", discriminator)):
        model.save_pretrained(tmp_path / name)
        loaded.append(type(model).from_pretrained(tmp_path / name, strict=True).eval())
    assert loaded[1].config.personalized == personalized
    for a, b in zip(before, outputs(*loaded)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


def test_strict_loading_rejects_other_layout(tmp_path):
    from metaportrait.errors import WeightsError

    _, generator, _ = _tiny()
    generator.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["bottleneck_blocks"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError):
        FewShotGenerator.from_pretrained(tmp_path, strict=True)


def test_spectral_norm_everywhere_and_single_projection():
    embedder, generator, discriminator = _tiny()
    for model in (embedder, generator, discriminator):
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert layers and all(has_spectral_norm(m) for m in layers)
        assert any(k.endswith("parametrizations.weight.0._u") for k in model.state_dict())
    # ψ = P·e: P is one |ψ|×D matrix and the only route from e to the AdaIN parameters
    assert generator.P.shape == (generator.num_adain_params, 32)
    assert generator.num_adain_params == sum(generator.adain_sizes)
    y = _images(2, 3)
    e = torch.rand(2, 32)
    generator.eval()
    with torch.no_grad():
        via_e = generator(y, e)
        via_psi = generator(y, adain_params=e @ generator.P.T)
        other = generator(y, e * 3)
    assert torch.allclose(via_e, via_psi, atol=1e-6)
    assert not torch.allclose(via_e, other, atol=1e-3)
    with pytest.raises(ValueError):
        generator(y)
    with pytest.raises(ValueError):
        generator(y, adain_params=torch.zeros(2, generator.num_adain_params + 1))


def test_projection_score_is_v_dot_w_plus_w0_plus_b():
    _, _, d = _tiny(num_videos=3)
    d.eval().requires_grad_(False)
    dim = d.embed_dim
    with torch.no_grad():
        d.W.copy_(torch.arange(3 * dim, dtype=torch.float32).view(3, dim) / (3 * dim) - 0.5)
        d.w0.copy_(torch.linspace(-1, 1, dim))
        d.b.fill_(0.25)
    x, y = _images(3, 4), _images(3, 5)
    idx = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = d(x, y, video_index=idx)
        v, feats = d.features(x, y)
        override = d(x, y, w_override=torch.full((dim,), 0.5))
    assert isinstance(out, DiscriminatorOutput)
    assert torch.equal(out.v, v) and len(out.features) == len(feats)
    for n in range(3):
        expected = sum(float(v[n, j]) * (float(d.W[idx[n], j]) + float(d.w0[j])) for j in range(dim)) + 0.25
        assert out.score[n].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert override.score[n].item() == pytest.approx(0.5 * float(v[n].sum()) + 0.25, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError):
        d(x, y)
    with pytest.raises(ValueError):
        d(x, y, video_index=idx, w_override=d.w0)


def test_embed_frames_is_the_mean_over_k():
    embedder, _, _ = _tiny()
    embedder.eval()
    x = torch.stack([_images(3, 6), _images(3, 7)])  # B=2, K=3
    y = torch.stack([_images(3, 8), _images(3, 9)])
    with torch.no_grad():
        e = embedder.embed_frames(x, y)
        per_frame = torch.stack([embedder(x[b], y[b]) for b in range(2)])
    assert torch.allclose(e, per_frame.mean(1), atol=1e-6)


@pytest.mark.parametrize("cls", [EmbedderConfig, FewShotGeneratorConfig, ProjectionDiscriminatorConfig])
def test_configs_validate(cls):
    assert cls.preset("paper").image_size == 256
    with pytest.raises(ValueError):
        cls.preset("huge")
    bad = {"image_size": 100} if cls is not FewShotGeneratorConfig else {"attention_up_resolution": 7}
    with pytest.raises(ValueError):
        cls.preset("tiny").replace(**bad)


def test_paper_presets_match_the_paper():
    e = EmbedderConfig.preset("paper")
    g = FewShotGeneratorConfig.preset("paper")
    d = ProjectionDiscriminatorConfig.preset("paper", num_videos=5)
    assert e.embed_dim == g.embed_dim == d.embed_dim == 512
    assert e.attention_resolution == d.attention_resolution == g.attention_down_resolution == 32
    assert g.attention_up_resolution == 64


# -- training config ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fewshot_paper.json", "fewshot_demo.json"])
def test_shipped_configs_load(name):
    cfg = FewShotTrainConfig.from_json(REPO / "configs" / name)
    assert cfg.d_steps_per_g_step == 2
    assert cfg.loss_weights.feature_matching == 10 and cfg.loss_weights.embedding_match == 10
    if name == "fewshot_paper.json":
        assert (cfg.preset, cfg.frames_per_episode) == ("paper", 8)
        assert (cfg.lr_embedder_generator, cfg.lr_discriminator) == (5e-5, 2e-4)
        assert (cfg.loss_weights.vgg19, cfg.loss_weights.vggface) == (0.15, 0.025)
    with pytest.raises(ValueError):
        FewShotTrainConfig.from_dict({**cfg.to_dict(), "typo": 1})
    with pytest.raises(ValueError):
        cfg.replace(mixed_precision="fp8")


def test_episodes_use_only_training_frames(prepared):
    data = FewShotVideoData(prepared, image_size=64)
    assert [c.id for c in data.clips] == ["franck/a", "franck/b"]  # held-out identity excluded
    assert data.clips[0].frames.max() < 10  # held-out tail of clip a never sampled
    ds = EpisodeDataset(data, batch_size=2, k=3, seed=1, start_step=0, steps=4)
    ep = ds[1]
    assert ep.x_frames.shape == (2, 3, 3, 64, 64) and ep.y_target.shape == (2, 3, 64, 64)
    assert ep.x_target.min() >= -1 and ep.x_target.max() <= 1 and ep.x_target.std() > 0.1
    assert (ep.y_frames > -1).float().mean() > 0.01  # the mesh is drawn
    again = EpisodeDataset(data, batch_size=2, k=3, seed=1, start_step=1, steps=4)[0]
    assert torch.equal(ep.x_frames, again.x_frames) and torch.equal(ep.video_index, again.video_index)


# -- meta-learning -----------------------------------------------------------------------------
def test_meta_learning_smoke_checkpoint_and_exact_resume(prepared, tmp_path):
    cfg = FewShotTrainConfig(
        data_dir=str(prepared), output_dir=str(tmp_path / "run"), preset="tiny", frames_per_episode=2,
        batch_size=2, steps=3, checkpoint_every=2, log_every=1, seed=3, loss_weights=PIXEL_WEIGHTS,
    )
    first = train_fewshot(cfg)
    assert first.step == 3 and len(first.history) == 3
    for h in first.history:
        assert all(np.isfinite(v) for v in h.values())
        assert {"loss_g", "loss_d", "loss_mch", "loss_fm", "loss_adv", "loss_content"} <= set(h)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert (ckpt / "state.json").is_file()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    out = tmp_path / "run"
    e = Embedder.from_pretrained(out / "embedder", strict=True)
    g = FewShotGenerator.from_pretrained(out / "generator", strict=True)
    d = ProjectionDiscriminator.from_pretrained(out / "discriminator", strict=True)
    assert d.config.num_videos == 2 and e.embed_dim == g.config.embed_dim

    resumed = train_fewshot(cfg.replace(output_dir=str(tmp_path / "resumed")), resume=ckpt)
    assert resumed.step == 3 and len(resumed.history) == 1
    assert resumed.history[0] == first.history[2]  # bit-identical next step


# -- fine-tuning -------------------------------------------------------------------------------
def _person(prepared, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = FewShotVideoData(prepared, image_size=64)
    return data.load(1, data.clips[1].frames[:t].tolist())


def test_finetune_initialisation_is_p_e_and_w0_plus_e(prepared):
    embedder, generator, discriminator = _tiny(num_videos=2)
    frames, lms = _person(prepared, 8)
    res = finetune_fewshot(embedder, generator, discriminator, frames, lms, feed_forward=True,
                           loss_weights=PIXEL_WEIGHTS)
    assert res.losses == [] and res.content_loss_before == res.content_loss_after
    embedder.eval()
    with torch.no_grad():
        e = embedder.embed_frames(frames[None], lms[None])[0]
    assert torch.allclose(res.embedding, e, atol=1e-6)
    assert torch.equal(res.generator.adain_personal, (res.embedding @ generator.P.T))
    assert torch.equal(res.discriminator.w_personal, discriminator.w0 + res.embedding)
    # the FF generator is G(y, ê) with ψ = P·ê
    generator.eval()
    with torch.no_grad():
        assert torch.allclose(res.generator(lms), generator(lms, res.embedding[None].expand(8, -1)), atol=1e-5)
    assert not hasattr(generator, "adain_personal")  # the meta-learned model is left unchanged
    quick = finetune_fewshot(embedder, generator, discriminator, frames[:1], lms[:1], feed_forward=True,
                             loss_weights=PIXEL_WEIGHTS, evaluate=False)
    assert np.isnan(quick.content_loss_before)
    assert torch.equal(quick.generator.adain_personal, quick.embedding @ generator.P.T)


@pytest.mark.parametrize("t", [1, 8])
def test_finetune_reduces_the_loss_on_the_person(prepared, t):
    embedder, generator, discriminator = _tiny(num_videos=2)
    frames, lms = _person(prepared, t)
    p_before = generator.P.detach().clone()
    res = finetune_fewshot(embedder, generator, discriminator, frames, lms, steps=6, batch_size=4,
                           lr_generator=2e-3, lr_discriminator=2e-3, loss_weights=PIXEL_WEIGHTS)
    assert len(res.losses) == 6 and all(np.isfinite(v) for h in res.losses for v in h.values())
    assert res.content_loss_after < 0.95 * res.content_loss_before
    assert res.finetune_seconds > 0 and res.embed_seconds > 0
    assert torch.equal(generator.P, p_before)
    assert not torch.equal(res.generator.adain_personal, res.embedding @ generator.P.T)  # ψ' was optimised


def test_content_loss_uses_the_perceptual_networks():
    """The paper's content loss goes through PerceptualLoss (VGG19, or SFace offline) and SFace."""
    loss = ContentLoss(FewShotLossWeights())
    assert loss.vgg19 is not None and loss.vggface is not None
    x, y = _images(2, 10), _images(2, 11)
    terms = loss(x, y)
    assert terms.pixel is None and float(terms.total) > 0
    assert float(loss(y, y).total) == pytest.approx(0.0, abs=1e-6)


def test_finetune_schedule_lowers_the_held_back_error(prepared):
    """The CLI's FT schedule (bfloat16 autocast, its learning rates) on 8 frames of a real clip, a few
    steps at the tiny size: the error on 4 later frames it never saw goes down (fixed seed)."""
    from metaportrait.training.fewshot_finetune import FT_SCHEDULE

    embedder, generator, discriminator = _tiny(num_videos=2)
    data = FewShotVideoData(prepared, image_size=64)
    frames, lms = data.load(1, list(range(8)))
    held_x, held_y = data.load(1, list(range(8, 12)))

    def held_back_l1(g) -> float:
        with torch.no_grad():
            return float((g.eval()(held_y) - held_x).abs().mean())

    torch.manual_seed(0)
    ff = finetune_fewshot(embedder, generator, discriminator, frames, lms, feed_forward=True, evaluate=False,
                          loss_weights=PIXEL_WEIGHTS)
    ft = finetune_fewshot(embedder, generator, discriminator, frames, lms, evaluate=False, loss_weights=PIXEL_WEIGHTS,
                          seed=0, **FT_SCHEDULE.replace(steps=12, batch_size=4).kwargs())
    assert len(ft.losses) == 12 and all(np.isfinite(v) for h in ft.losses for v in h.values())
    before, after = held_back_l1(ff.generator), held_back_l1(ft.generator)
    assert after < 0.8 * before, (before, after)
