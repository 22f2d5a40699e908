"""Losses of the base objective (MetaPortrait §3.1; docs/METHOD.md §7) on real faces."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaportrait.training.losses import (
    BaseLoss,
    IdentityLoss,
    LossWeights,
    PerceptualLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    region_l1,
    ssim,
)


def _to_t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


@pytest.fixture(scope="module")
def encoder():
    from metaportrait.identity import load_identity_encoder

    return load_identity_encoder()


@pytest.fixture(scope="module")
def faces(astronaut, driving_frames):
    """128 crops (small: the CPU test budget) + five points: astronaut, and two frames of the same man (franck)."""
    from metaportrait.face import CropTransform, FaceAnalyzer, five_points

    out = []
    with FaceAnalyzer(static_image_mode=True, max_faces=1) as fa:
        for img in (astronaut, driving_frames[0], driving_frames[20]):
            lm = fa.largest(img).landmarks
            crop = CropTransform.from_landmarks(lm, size=128)
            out.append((_to_t(crop.crop(img)), torch.from_numpy(five_points(crop.points_to_crop(lm)))[None]))
    return out


@pytest.fixture(scope="module")
def perceptual(encoder):
    return PerceptualLoss(pyramid=(1.0, 0.5), network="sface", identity_encoder=encoder)


def test_perceptual_zero_for_identical_and_grows_with_blur(perceptual, faces):
    x = faces[0][0]
    assert perceptual.network == "sface"
    assert float(perceptual(x, x.clone())) == pytest.approx(0.0, abs=1e-7)
    l1 = float(perceptual(_blur(x, 1.0), x))
    l3 = float(perceptual(_blur(x, 3.0), x))
    assert 0 < l1 < l3


def test_perceptual_gradient_and_frozen_network(perceptual, faces):
    x = faces[0][0].clone().requires_grad_(True)
    loss = perceptual(x, _blur(faces[0][0], 2.0))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in perceptual.features.parameters())
    perceptual.train()
    assert not perceptual.features.training  # BatchNorm statistics stay frozen


def test_perceptual_auto_falls_back_offline_and_says_so(encoder, caplog, monkeypatch):
    import metaportrait.training.losses as losses

    monkeypatch.setattr(losses, "_logged_networks", set())
    with caplog.at_level(logging.WARNING, logger="metaportrait.training.losses"):
        p = PerceptualLoss(network="auto", identity_encoder=encoder, pyramid=(1.0,))
    if p.network == "vgg19":
        pytest.skip("VGG19 ImageNet weights are available here (online or cached)")
    assert p.network == "sface"
    assert any("sface" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        PerceptualLoss(network="alexnet")  # type: ignore[arg-type]


def test_identity_loss_same_person_lower_than_other_person(encoder, faces):
    loss = IdentityLoss(encoder)
    (ast, ast_p), (fr0, fr0_p), (fr20, fr20_p) = faces
    same = float(loss(fr20, fr0, fr20_p, fr0_p))
    other = float(loss(ast, fr0, ast_p, fr0_p))
    self_ = float(loss(fr0, fr0, fr0_p, fr0_p))
    assert self_ == pytest.approx(0.0, abs=1e-5)
    assert same < other
    assert 0 <= same < 0.6 and other > 0.6
    x = fr20.clone().requires_grad_(True)
    loss(x, fr0, fr20_p, fr0_p).backward()
    assert x.grad.abs().sum() > 0


def test_region_l1_only_sees_the_region():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    boxes = torch.tensor([[[8.0, 8.0, 24.0, 20.0]], [[30.0, 40.0, 50.0, 60.0]]])
    pred = target.clone()
    pred[0, :, 30:, 30:] = 1.0  # outside image 0's box
    pred[1, :, :20, :20] = -1.0  # outside image 1's box
    assert float(region_l1(pred, target, boxes)) == pytest.approx(0.0, abs=1e-6)
    pred[0, :, 10:18, 10:22] += 0.5  # inside image 0's box
    assert float(region_l1(pred, target, boxes)) > 0.05
    with pytest.raises(ValueError):
        region_l1(pred, target, torch.zeros(3, 1, 4))


def test_ssim_loss_matches_the_evaluation_metric(faces):
    """The training SSIM equals skimage's (what `metaportrait evaluate` reports) on real faces, is 1 for
    identical images, falls with blur, and has a gradient."""
    from skimage.metrics import structural_similarity

    a = faces[0][0]
    b = _blur(a, 1.5)
    to_u8 = lambda t: ((t[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)  # noqa: E731
    ua, ub = to_u8(a), to_u8(b)
    ref = structural_similarity(ua, ub, channel_axis=2, data_range=255)
    ours = float(ssim(_to_t(ub), _to_t(ua)))
    assert abs(ours - ref) < 1e-4, (ours, ref)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(_blur(a, 3.0), a)) < float(ssim(b, a)) < 1.0
    x = b.clone().requires_grad_(True)
    (1 - ssim(x, a)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="must match"):
        ssim(a, a[..., :64])


def test_gan_losses_known_values():
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert float(discriminator_loss(ones, zeros, "lsgan")) == 0.0
    assert float(discriminator_loss(zeros, ones, "lsgan")) == 2.0
    assert float(generator_adversarial_loss(ones, "lsgan")) == 0.0
    assert float(generator_adversarial_loss(zeros, "lsgan")) == 1.0
    assert float(discriminator_loss(2 * ones, -2 * ones, "hinge")) == 0.0
    assert float(discriminator_loss(zeros, zeros, "hinge")) == 2.0
    assert float(generator_adversarial_loss(3 * ones, "hinge")) == -3.0
    # multi-scale lists are averaged over scales
    assert float(discriminator_loss([ones, zeros], [zeros, zeros], "lsgan")) == pytest.approx(0.5)
    assert float(generator_adversarial_loss([ones, zeros], "lsgan")) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        discriminator_loss(ones, zeros, "wgan")  # type: ignore[arg-type]


def test_feature_matching_loss():
    real = [[torch.zeros(1, 4, 8, 8), torch.ones(1, 8, 4, 4)], [torch.zeros(1, 4, 4, 4)]]
    fake = [[torch.zeros(1, 4, 8, 8), torch.ones(1, 8, 4, 4)], [torch.full((1, 4, 4, 4), 3.0)]]
    assert float(feature_matching_loss(real, real)) == 0.0
    assert float(feature_matching_loss(real, fake)) == pytest.approx(1.0)  # (0 + 0 + 3) / 3
    f = fake[1][0].clone().requires_grad_(True)
    r = real[1][0].clone().requires_grad_(True)
    feature_matching_loss([r], [f]).backward()
    assert r.grad is None and f.grad.abs().sum() > 0  # real features are detached


def test_loss_weights_defaults_and_validation():
    w = LossWeights()
    assert (w.warp_vgg, w.refine_vgg, w.identity, w.eye, w.mouth, w.adv, w.feature_matching) == (1, 10, 20, 50, 50, 1, 10)
    with pytest.raises(ValueError):
        LossWeights(eye=-1.0)


def test_base_loss_total_is_the_weighted_sum(encoder, perceptual, faces):
    (ast, ast_p), (fr0, fr0_p), (fr20, fr20_p) = faces
    source, driving = fr0, fr20
    boxes = torch.tensor([[[40.0, 50.0, 60.0, 63.0], [68.0, 50.0, 88.0, 63.0], [48.0, 75.0, 80.0, 95.0]]])
    loss = BaseLoss(LossWeights(), perceptual, IdentityLoss(encoder), gan_kind="lsgan")
    warped = _blur(driving, 2.0)
    refined = _blur(driving, 1.0).requires_grad_(True)
    d_fake = [torch.full((1, 1, 8, 8), 0.5)]
    real_f = [[torch.zeros(1, 4, 8, 8)]]
    fake_f = [[torch.full((1, 4, 8, 8), 0.25)]]
    t = loss(warped, driving, refined=refined, source=source, driving_boxes=boxes, source_points=fr0_p,
             driving_points=fr20_p, fake_logits=d_fake, real_feats=real_f, fake_feats=fake_f)
    w = LossWeights()
    expected = (w.warp_vgg * t.warp_vgg + w.refine_vgg * t.refine_vgg + w.identity * t.identity + w.eye * t.eye
                + w.mouth * t.mouth + w.adv * t.adv + w.feature_matching * t.feature_matching)
    assert float(t.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert float(t.adv) == pytest.approx(0.25) and float(t.feature_matching) == pytest.approx(0.25)
    assert all(v >= 0 for v in t.as_floats().values()) and t.eye > 0 and t.identity > 0
    t.total.backward()
    assert refined.grad.abs().sum() > 0
    # stage 1: warp only
    t1 = loss(warped, driving, driving_boxes=boxes)
    assert float(t1.refine_vgg) == float(t1.identity) == float(t1.adv) == 0.0
    assert float(t1.total) == pytest.approx(float(t1.warp_vgg + 50 * t1.eye + 50 * t1.mouth), rel=1e-6)
