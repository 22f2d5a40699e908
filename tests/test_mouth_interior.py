"""The mouth-interior network in the render path (issue 14, part 1): strict loading, drawing only
inside the driving inner-lip polygon, nothing at all while the mouth is closed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from metaportrait.errors import WeightsError
from metaportrait.face.controls import set_mouth_opening
from metaportrait.face.regions import MOUTH_INNER
from metaportrait.models.mouth_interior import MouthInteriorConfig, MouthInteriorNetwork
from metaportrait.mouth import OPEN_THRESHOLD, MouthFiller, fill_strength, inner_mask, mouth_opening
from metaportrait.pipeline import MetaPortraitPipeline, draw

from conftest import REPO

SHIPPED = REPO / "weights" / "mouth_interior"


@pytest.fixture(scope="module")
def pipe():
    return MetaPortraitPipeline.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def source(pipe, mona_lisa):
    return pipe.prepare_source(mona_lisa)


def test_shipped_weights_load_strictly(tmp_path):
    net = MouthInteriorNetwork.from_pretrained(SHIPPED)
    assert net.num_parameters() < 2_000_000
    assert json.loads((SHIPPED / "config.json").read_text())["crop_size"] == net.config.crop_size
    # a weights file with one tensor missing is refused, not half-loaded
    (tmp_path / "config.json").write_text((SHIPPED / "config.json").read_text())
    tensors = load_file(str(SHIPPED / "model.safetensors"))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError):
        MouthInteriorNetwork.from_pretrained(tmp_path)


def test_pipeline_loads_the_mouth_network_when_shipped():
    assert MetaPortraitPipeline.from_pretrained(device="cpu").mouth is not None
    assert MetaPortraitPipeline.from_pretrained(device="cpu", mouth_interior=False).mouth is None


@pytest.mark.parametrize("paste_back", [False, True])
def test_draws_inside_the_inner_lips_only(pipe, source, paste_back):
    assert mouth_opening(source.landmarks) < OPEN_THRESHOLD  # the Mona Lisa's mouth is closed
    target = set_mouth_opening(source.landmarks, 0.8)
    grid = pipe.prior_grid(source, target)
    size = 256
    warp = draw(source, grid, None, paste_back, size)
    ours = draw(source, grid, None, paste_back, size, target=target, mouth=pipe.mouth)
    lm = target[:, :2].astype(np.float64)
    if paste_back:
        lm = source.crop.points_to_image(lm)
    width = float(np.linalg.norm(lm[61] - lm[291]))
    mask = inner_mask(lm[list(MOUTH_INNER)], width, *warp.shape[:2])
    outside = mask == 0
    assert np.array_equal(ours[outside], warp[outside])  # exactly the warp outside the mask
    inside = mask > 0.99
    assert inside.sum() > 50
    diff = np.abs(ours[inside].astype(np.float32) - warp[inside].astype(np.float32)).mean()
    assert diff > 5.0  # the smear of stretched lips is replaced by a drawn interior


def test_closed_driving_mouth_leaves_the_frame_unchanged(pipe, source):
    target = set_mouth_opening(source.landmarks, 0.0)
    grid = pipe.prior_grid(source, target)
    for paste_back in (False, True):
        warp = draw(source, grid, None, paste_back, 256)
        ours = draw(source, grid, None, paste_back, 256, target=target, mouth=pipe.mouth)
        assert np.array_equal(ours, warp)


def test_generate_uses_the_mouth_network(pipe, source):
    target = set_mouth_opening(source.landmarks, 0.8)
    plain = MetaPortraitPipeline(pipe.generator, pipe.identity_encoder)
    assert not np.array_equal(pipe.generate(source, [target]), plain.generate(source, [target]))


def test_untrained_network_gives_the_warp_back(source):
    # the output head starts at zero: a fresh network changes nothing, so training starts at the warp
    filler = MouthFiller(MouthInteriorNetwork(MouthInteriorConfig(base_channels=8, max_channels=16, levels=2)))
    frame = source.face.copy()
    target = set_mouth_opening(source.landmarks, 0.8)
    out = filler(frame, target, source.face, source.landmarks)
    mask = inner_mask(target[list(MOUTH_INNER), :2], float(np.linalg.norm(target[61, :2] - target[291, :2])), 256, 256)
    diff = np.abs(out.astype(np.float32) - frame.astype(np.float32))[mask > 0]
    assert diff.size and diff.mean() < 4.0  # the crop's bilinear resampling there and back only


def test_source_that_already_shows_the_mouth_is_left_to_the_warp(pipe, astronaut):
    # the astronaut smiles with her teeth showing: driven by her own landmarks, the warp carries her
    # real teeth and the network must not repaint them
    src = pipe.prepare_source(astronaut)
    assert mouth_opening(src.landmarks) > OPEN_THRESHOLD
    grid = pipe.prior_grid(src, src.landmarks)
    warp = draw(src, grid, None, False, 256)
    assert np.array_equal(draw(src, grid, None, False, 256, target=src.landmarks, mouth=pipe.mouth), warp)
    # opened well beyond her own opening, the network draws
    wide = set_mouth_opening(src.landmarks, 1.2)
    assert fill_strength(wide, src.landmarks) > 0
    grid = pipe.prior_grid(src, wide)
    assert not np.array_equal(draw(src, grid, None, False, 256, target=wide, mouth=pipe.mouth),
                              draw(src, grid, None, False, 256))


def test_every_open_mouth_policy_draws_over_the_photos_own_teeth(pipe, astronaut, tmp_path):
    """A personalized network's fill policy "every open mouth" (``source_margin`` None, from its
    folder's fill.json) draws where the shipped policy leaves the photo's own open mouth to the warp;
    a bad policy file is refused with its path."""
    from metaportrait.mouth import FILL_FILE, SOURCE_MARGIN, read_fill_policy

    src = pipe.prepare_source(astronaut)
    assert fill_strength(src.landmarks, src.landmarks) == 0.0
    assert fill_strength(src.landmarks, src.landmarks, source_margin=None) > 0.0
    every = MouthFiller(pipe.mouth.network, source_margin=None)
    grid = pipe.prior_grid(src, src.landmarks)
    warp = draw(src, grid, None, False, 256)
    assert not np.array_equal(draw(src, grid, None, False, 256, target=src.landmarks, mouth=every), warp)
    assert read_fill_policy(tmp_path) == SOURCE_MARGIN  # no file: the shipped policy
    (tmp_path / FILL_FILE).write_text(json.dumps({"source_margin": None}))
    assert read_fill_policy(tmp_path) is None
    (tmp_path / FILL_FILE).write_text(json.dumps({"source_margin": "always"}))
    with pytest.raises(ValueError, match="fill.json"):
        read_fill_policy(tmp_path)


def test_mouth_box_scores_on_a_real_face(source):
    import cv2

    from metaportrait.evaluation.reenactment import mouth_box, mouth_scores

    lm = set_mouth_opening(source.landmarks, 0.8)
    x0, y0, x1, y1 = mouth_box(lm, source.face.shape)
    inner = lm[list(MOUTH_INNER), :2]
    assert x0 < inner[:, 0].min() and inner[:, 0].max() < x1 and y0 < inner[:, 1].min() and inner[:, 1].max() < y1
    same = mouth_scores(source.face, source.face, lm)
    assert same["mouth_detail"] == pytest.approx(1.0) and same["mouth_ssim"] == pytest.approx(1.0)
    blurred = mouth_scores(cv2.GaussianBlur(source.face, (0, 0), 2.0), source.face, lm)
    assert blurred["mouth_detail"] < 0.8 and blurred["mouth_psnr"] < 60


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory):
    """The first 48 frames of examples/driving_speech.mp4 prepared at 256² (a man talking and laughing:
    closed, half-open and wide-open mouths) as (frames, landmarks)."""
    import shutil

    from metaportrait.training.prepare import prepare_data
    from metaportrait.training.prepared import PreparedData

    raw = tmp_path_factory.mktemp("raw_speech")
    (raw / "speech" / "clip").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "driving_speech.mp4", raw / "speech" / "clip" / "driving_speech.mp4")
    out = tmp_path_factory.mktemp("prepared_speech")
    prepare_data(raw, out, sizes=(256,), workers=1, max_frames_per_clip=48, progress=False)
    data = PreparedData(out)
    clip = data.clips[0]
    return np.asarray(data.frames(clip)), np.asarray(data.landmarks(clip))


def test_personalization_lowers_the_held_back_mouth_error(speech_clip):
    """Fine-tuning the shipped network on three quarters of a real clip's frames (fixed seed, 12
    steps) lowers its masked error on pairs among the held-back quarter (every 4th frame)."""
    import torch

    from metaportrait.models.mouth_interior import composite
    from metaportrait.training.train_mouth import MouthPairs, _masked_l1, finetune_mouth, person_pairs

    frames, lms = speech_clip
    held = np.arange(len(frames)) % 4 == 0
    net = MouthInteriorNetwork.from_pretrained(SHIPPED)
    cfg = net.config
    pairs = MouthPairs(person_pairs(frames[held], lms[held], cfg.mouth_width, max_pairs=8), cfg.crop_size,
                       cfg.mouth_width, augment=False)
    b = [pairs[i] for i in range(len(pairs))]
    w, lips, src, tgt, m = (torch.stack([x[k] for x in b]) for k in ("warped", "lips", "source", "target", "mask"))

    def held_error() -> float:
        with torch.no_grad():
            return float(_masked_l1(composite(w, net(w, lips, src).image, m), tgt, m))

    before = held_error()
    assert before < float(_masked_l1(w, tgt, m))  # the shipped network already beats the warp there
    torch.manual_seed(0)
    info = finetune_mouth(net, frames[~held], lms[~held], seconds=float("inf"), steps=12, lr=1e-4, max_pairs=24, seed=0)
    assert info["steps"] == 12
    assert held_error() < before
