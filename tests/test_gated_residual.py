"""The gated residual of the refinement network ("refinement only where geometry fails"): on a real
portrait whose mouth is opened and head turned by the mesh warp, the residual is exactly zero
wherever the warp does not magnify the source, covers the opened mouth, and is zero everywhere when
nothing moves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from metaportrait.face.drawing import draw_landmark_image
from metaportrait.face.regions import MOUTH_INNER
from metaportrait.models.generator import MetaPortraitGenerator, generator_config
from metaportrait.models.refinement_network import RefinementConfig, stretch_regions
from metaportrait.pipeline import EditOptions, MetaPortraitPipeline
from metaportrait.tensors import to_tensor


@pytest.fixture(scope="module")
def pipe() -> MetaPortraitPipeline:
    return MetaPortraitPipeline.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def gated() -> MetaPortraitGenerator:
    """``demo-gated`` with its residual and gate heads set to non-zero values (as if trained)."""
    gen = MetaPortraitGenerator(generator_config("demo-gated")).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for head in (gen.refinement.head, gen.refinement.gate_head):
            head.weight.normal_(0.0, 0.05)
            head.bias.fill_(0.2)
    return gen


def _run(pipe, gen, source, target):
    size = pipe.size
    with torch.no_grad():
        return gen(
            to_tensor(source.face), to_tensor(draw_landmark_image(source.landmarks, size)),
            to_tensor(draw_landmark_image(target, size)), source.identity,
            prior_grid=torch.from_numpy(pipe.prior_grid(source, target))[None],
        )


def _gate_and_residual(out):
    gate = out.gate[0, 0].numpy()
    residual = out.residual[0].abs().amax(0).numpy()
    outside = gate == 0
    assert outside.mean() > 0.75  # the regions are the exception, not the face
    assert residual[outside].max() == 0.0  # exactly zero, not small
    assert residual[~outside].max() > 0.05  # and the heads do draw inside
    return gate, residual


def test_residual_is_zero_outside_the_magnified_regions(pipe, gated, astronaut):
    source = pipe.prepare_source(astronaut)
    target = pipe.edited_landmarks(source, EditOptions(lips=0.9))
    gate, residual = _gate_and_residual(_run(pipe, gated, source, target))
    # the opened mouth is a region: the warp stretches the closed lips' sliver over the cavity
    mouth = np.zeros(gate.shape, np.uint8)
    cv2.fillPoly(mouth, [np.round(target[list(MOUTH_INNER), :2]).astype(np.int32)], 1)
    assert mouth.sum() > 50
    assert (gate[mouth > 0] > 0).mean() > 0.8
    # the forehead between the brows and the eyes moves rigidly: no residual there
    x0, x1 = np.sort(target[[55, 285], 0])  # inner brow ends
    y1 = int(min(target[[55, 285], 1]))
    assert residual[max(0, y1 - 30):y1, int(x0):int(x1)].max() == 0.0


def test_turning_head_uncovers_its_far_side(pipe, gated, astronaut):
    """Turned by −20° (towards image left), the side of the face and the background beside it that
    the photo showed foreshortened are magnified far more than the other side (where only the
    lips and irises stretch a little)."""
    source = pipe.prepare_source(astronaut)
    target = pipe.edited_landmarks(source, EditOptions(yaw=-20.0))
    gate, _ = _gate_and_residual(_run(pipe, gated, source, target))
    nose_x = target[1, 0]
    left, right = gate[:, : int(nose_x)], gate[:, int(nose_x):]
    assert (left > 0).sum() > 2 * (right > 0).sum()


def test_no_motion_no_residual(pipe, gated, astronaut):
    source = pipe.prepare_source(astronaut)
    out = _run(pipe, gated, source, source.landmarks)
    assert float(out.gate.max()) == 0.0
    assert float(out.residual.abs().max()) == 0.0
    assert torch.equal(out.image, out.warped)


def test_stretch_regions_measures_magnification():
    s = 32
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / s, 1 - 1 / s, s), torch.linspace(-1 + 1 / s, 1 - 1 / s, s),
                            indexing="ij")
    identity = torch.stack([xs, ys], dim=-1)[None]
    assert float(stretch_regions(identity, dilate=0).max()) == 0.0
    # the right half magnifies the source 5× horizontally (area ratio 1/5): fully a region
    grid = identity.clone()
    grid[..., s // 2:, 0] = grid[..., s // 2:, 0] / 5.0
    region = stretch_regions(grid, dilate=0)[0, 0]
    assert float(region[:, : s // 2 - 1].max()) == 0.0
    assert float(region[:, s // 2 + 1:].min()) == 1.0
    # 3× (area ratio 1/3) is on the ramp between lo = 1/4 and hi = 1/2: (1/2 − 1/3) / (1/4) = 2/3
    ramp = identity.clone()
    ramp[..., s // 2:, 0] = ramp[..., s // 2:, 0] / 3.0
    assert float(stretch_regions(ramp, dilate=0)[0, 0, 4, -4]) == pytest.approx(2 / 3, abs=1e-3)
    # a fold (mirrored columns: negative area) counts as a region too
    folded = identity.flip(2)
    assert float(stretch_regions(folded, dilate=0).min()) == 1.0
    # dilation grows it by exactly that many pixels
    grown = stretch_regions(grid, dilate=2)[0, 0]
    assert float(grown[:, s // 2 - 2].min()) == 1.0 and float(grown[:, : s // 2 - 3].max()) == 0.0


def test_gate_config_is_checked():
    with pytest.raises(ValueError, match="gate_stretch"):
        RefinementConfig(residual_gate=True, output_mode="residual", gate_stretch=(0.8, 0.4))
    with pytest.raises(ValueError, match="residual head"):
        RefinementConfig(residual_gate=True, output_mode="direct")
    cfg = generator_config("tiny-gated")
    gen = MetaPortraitGenerator(cfg)
    assert gen.is_geometry_only()  # zero heads at initialisation: the pipeline may skip it
