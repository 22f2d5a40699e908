"""LoRA adapters for personalization: identity at init, adapter-only training, file round trip,
mismatch errors, merge (metaportrait/adapters.py)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import spectral_norm

from metaportrait.adapters import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    add_lora,
    base_fingerprint,
    has_lora,
    load_adapter,
    lora_modules,
    lora_state_dict,
    merge_adapter,
    read_adapter_config,
    save_adapter,
    select_lora_modules,
)
from metaportrait.errors import WeightsError
from metaportrait.models.generator import MetaPortraitGenerator, generator_config
from metaportrait.training.reptile import adapt


class SmallNet(nn.Module):
    """A small image-to-image conv net with the layer kinds a generator has."""

    def __init__(self, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.sn = spectral_norm(nn.Conv2d(2 * width, 2 * width, 3, padding=1))
        self.dw = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.refl = nn.Conv2d(width, width, 3, padding=1, padding_mode="reflect")
        self.fc = nn.Linear(width, width)
        self.norm = nn.BatchNorm2d(width)
        self.out = nn.Conv2d(width, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        h = F.leaky_relu(self.dw(self.sn(h)), 0.2)
        h = F.leaky_relu(self.refl(self.up(h)), 0.2)
        h = self.norm(h) * (1 + self.fc(h.mean((2, 3))))[:, :, None, None]
        return torch.tanh(self.out(h))


ADAPTABLE = ["conv1", "conv2", "fc", "out"]


@pytest.fixture(autouse=True)
def one_thread():
    """Small models: one intra-op thread is much faster than two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@pytest.fixture(scope="module")
def faces(astronaut, mona_lisa) -> torch.Tensor:
    """Two real portraits, 2×3×32×32 in [-1, 1]."""
    return torch.cat([to_tensor(astronaut, 32), to_tensor(mona_lisa, 32)])


def params_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def personalise(model: nn.Module, x: torch.Tensor, steps: int = 8) -> None:
    target = x.flip(-1)  # "the person": mirrored portraits
    adapt(model, lambda m, k: F.l1_loss(m(x), target), steps=steps, lr=1e-2)


def test_selection_skips_layers_peft_would_get_wrong():
    net = SmallNet()
    chosen, skipped = select_lora_modules(net, "all")
    assert chosen == ADAPTABLE
    assert set(skipped) == {"sn", "dw", "refl"}
    assert "spectral norm" in skipped["sn"] and "groups" in skipped["dw"] and "reflect" in skipped["refl"]
    assert select_lora_modules(net, "linear")[0] == ["fc"]
    assert select_lora_modules(net, "conv", exclude=("out", "conv*1"))[0] == ["conv2"]
    with pytest.raises(ValueError, match="target"):
        select_lora_modules(net, "attention")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        add_lora(SmallNet(), rank=0)


def test_adapter_starts_at_the_base_and_trains_alone(faces):
    net = SmallNet().eval()
    with torch.no_grad():
        before = net(faces)
    base = params_snapshot(net)
    add_lora(net, rank=4, alpha=8)
    assert lora_modules(net) == ADAPTABLE
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(net)) and trainable
    with torch.no_grad():
        assert torch.equal(net(faces), before)  # B is zero-initialised

    adapters_before = {k: v.clone() for k, v in lora_state_dict(net).items()}
    personalise(net, faces)
    with torch.no_grad():
        after = net(faces)
    assert (after - before).abs().max() > 1e-3
    now = dict(net.named_parameters())
    for name, value in base.items():  # base weights untouched (renamed .base_layer under adapters)
        key = name if name in now else name.replace(f"{name.split('.')[0]}.", f"{name.split('.')[0]}.base_layer.", 1)
        assert torch.equal(now[key], value), name
    changed = [k for k, v in lora_state_dict(net).items() if not torch.equal(v, adapters_before[k])]
    assert any(".lora_B." in k for k in changed)


def test_save_load_round_trip_and_size(faces, tmp_path):
    net = SmallNet().eval()
    base_path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(base_path))
    add_lora(net, rank=2)
    personalise(net, faces)
    with torch.no_grad():
        expected = net(faces)
    meta = {"person": "astronaut", "steps": 8}
    out = save_adapter(net, tmp_path / "adapter", base_id="test/smallnet@0", metadata=meta)
    assert (out / ADAPTER_WEIGHTS_NAME).is_file() and (out / ADAPTER_CONFIG_NAME).is_file()
    config = json.loads((out / ADAPTER_CONFIG_NAME).read_text())
    assert config["rank"] == 2 and config["alpha"] == 2.0 and config["target_modules"] == ADAPTABLE
    assert config["base_model_id"] == "test/smallnet@0" and config["metadata"]["person"] == "astronaut"
    assert config["base_weights_hash"] == base_fingerprint(SmallNet())["weights"]
    adapter_bytes = (out / ADAPTER_WEIGHTS_NAME).stat().st_size
    full_bytes = base_path.stat().st_size
    print(f"\nSmallNet adapter (rank 2): {adapter_bytes} B vs full model {full_bytes} B")
    assert adapter_bytes < 0.3 * full_bytes

    fresh = SmallNet().eval()
    load_adapter(fresh, out)
    with torch.no_grad():
        got = fresh(faces)
    assert (got - expected).abs().max() <= 1e-5
    assert read_adapter_config(out)["num_parameters"] == sum(v.numel() for v in lora_state_dict(fresh).values())

    load_adapter(fresh, out, base_id="test/smallnet@0")  # refill an existing adapter
    with pytest.raises(WeightsError, match="base id"):
        load_adapter(SmallNet(), out, base_id="test/other")


def test_load_into_mismatched_base_raises(faces, tmp_path):
    net = SmallNet()
    add_lora(net, rank=2)
    personalise(net, faces, steps=2)
    out = save_adapter(net, tmp_path / "a", base_id="test/smallnet@0")

    wider = SmallNet(width=8)
    with pytest.raises(WeightsError, match="weight shape"):
        load_adapter(wider, out)
    assert not has_lora(wider)  # untouched on failure

    other_weights = SmallNet(seed=1)
    with pytest.raises(WeightsError, match="base weights differ"):
        load_adapter(other_weights, out)
    assert not has_lora(other_weights)
    with pytest.warns(UserWarning, match="base weights differ"):
        load_adapter(other_weights, out, strict=False)
    assert lora_modules(other_weights) == ADAPTABLE

    with pytest.raises(WeightsError, match="No adapter_config.json"):
        load_adapter(SmallNet(), tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ADAPTER_CONFIG_NAME).write_text((out / ADAPTER_CONFIG_NAME).read_text())
    (broken / ADAPTER_WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="Cannot read"):
        load_adapter(SmallNet(), broken)


def test_merge_matches_and_removes_adapters(faces):
    net = SmallNet().eval()
    base_keys = list(net.state_dict())
    base_params = net.num_parameters() if hasattr(net, "num_parameters") else sum(p.numel() for p in net.parameters())
    add_lora(net, rank=4)
    personalise(net, faces)
    with torch.no_grad():
        adapted = net(faces)
    merge_adapter(net)
    assert not has_lora(net) and not hasattr(net, "peft_config")
    assert list(net.state_dict()) == base_keys
    assert sum(p.numel() for p in net.parameters()) == base_params
    with torch.no_grad():
        merged = net(faces)
    assert (merged - adapted).abs().max() <= 1e-4
    plain = SmallNet().eval()
    plain.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert (plain(faces) - adapted).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_adapter(net)


# ----------------------------------------------------------------------------- the real generator
def generator_inputs(astronaut, mona_lisa, size: int, identity_dim: int, use_prior: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    source = to_tensor(astronaut, size)
    identity = F.normalize(torch.randn(1, identity_dim, generator=g), dim=1)
    inputs = dict(
        source=source,
        source_landmarks=to_tensor(mona_lisa, size),
        driving_landmarks=to_tensor(mona_lisa, size).flip(-1),
        identity=identity,
    )
    if use_prior:
        theta = torch.tensor([[[1.0, 0.0, 0.02], [0.0, 1.0, -0.03]]])
        inputs["prior_grid"] = F.affine_grid(theta, (1, 3, size, size), align_corners=False)
    return inputs


def test_tiny_generator_adapter(astronaut, mona_lisa, tmp_path):
    config = generator_config("tiny")
    torch.manual_seed(0)
    gen = MetaPortraitGenerator(config).eval()
    inputs = generator_inputs(astronaut, mona_lisa, config.image_size, config.identity_dim, config.use_prior)
    with torch.no_grad():
        before = gen(**inputs).image
    gen.save_pretrained(tmp_path / "base")
    full_bytes = (tmp_path / "base" / "model.safetensors").stat().st_size

    layers = sum(type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) for m in gen.modules())
    add_lora(gen, rank=4)
    assert layers > 0 and len(lora_modules(gen)) == layers  # target "all": every Linear and Conv layer
    with torch.no_grad():
        assert torch.equal(gen(**inputs).image, before)
    base = {k: v.clone() for k, v in gen.state_dict().items() if ".lora_" not in k}
    target = inputs["source"].flip(-1)
    adapt(gen, lambda m, k: F.l1_loss(m(**inputs).image, target), steps=4, lr=1e-2)
    for k, v in gen.state_dict().items():
        if ".lora_" not in k:
            assert torch.equal(v, base[k]), k
    with torch.no_grad():
        adapted = gen(**inputs).image
    assert (adapted - before).abs().max() > 1e-4

    out = save_adapter(gen, tmp_path / "adapter", base_id=str(tmp_path / "base"))
    adapter_bytes = (out / ADAPTER_WEIGHTS_NAME).stat().st_size
    print(f"\ntiny generator adapter (rank 4, {len(lora_modules(gen))} layers): {adapter_bytes} B "
          f"vs full model {full_bytes} B")
    assert adapter_bytes < full_bytes

    fresh = MetaPortraitGenerator.from_pretrained(tmp_path / "base").eval()
    load_adapter(fresh, out, base_id=str(tmp_path / "base"))
    with torch.no_grad():
        assert (fresh(**inputs).image - adapted).abs().max() <= 1e-5

    merge_adapter(fresh)
    with torch.no_grad():
        assert (fresh(**inputs).image - adapted).abs().max() <= 1e-4
    fresh.save_pretrained(tmp_path / "merged")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = MetaPortraitGenerator.from_pretrained(tmp_path / "merged").eval()  # strict keys
    with torch.no_grad():
        assert (reloaded(**inputs).image - adapted).abs().max() <= 1e-4
