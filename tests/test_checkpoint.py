"""Training checkpoints hold only safetensors + JSON, restore exactly, and refuse pickles."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from metaportrait.errors import CheckpointError, UnsafeCheckpointError
from metaportrait.training.checkpoint import (
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_ema,
    rotate_checkpoints,
    save_checkpoint,
    truncate_log,
)


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.5, 0.999))
    sched = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=20)
    ema = EMAModel(model.parameters(), decay=0.9)
    return model, opt, sched, ema


def _train(model, opt, sched, ema, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(5, 4)  # draws from the global RNG: resume must restore it
        loss = model(x).pow(2).mean() + 0.01 * random.random() + 0.01 * float(np.random.rand())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.step(model.parameters())
        losses.append(float(loss.detach()))
    return losses


class Payload:
    """A pickle that runs code when loaded (writes a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_resumes_exactly(tmp_path):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    a = _parts()
    _train(*a, steps=3)
    save_checkpoint(tmp_path / "step_3", models={"m": a[0]}, optimizers={"m": a[1]}, schedulers={"m": a[2]},
                    ema=a[3], state={"step": 3, "note": "x"}, tensors={"extra": torch.arange(4)})
    assert {p.suffix for p in (tmp_path / "step_3").iterdir()} <= {".safetensors", ".json", ""}
    rest_a = _train(*a, steps=3)

    b = _parts(seed=99)  # different initial weights: everything must come from the checkpoint
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(5)
    state = load_checkpoint(tmp_path / "step_3", models={"m": b[0]}, optimizers={"m": b[1]}, schedulers={"m": b[2]},
                            ema=b[3])
    assert state["step"] == 3 and state["note"] == "x"
    assert torch.equal(state["tensors"]["extra"], torch.arange(4))
    rest_b = _train(*b, steps=3)
    assert rest_b == rest_a
    for p, q in zip(a[0].parameters(), b[0].parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a[3].shadow_params, b[3].shadow_params):
        assert torch.equal(p, q)
    assert a[2].get_last_lr() == b[2].get_last_lr()


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "reptile.pt", "nested/model.pth"])
def test_a_planted_pickle_is_refused_before_it_runs(tmp_path, name):
    model, opt, sched, ema = _parts()
    ckpt = save_checkpoint(tmp_path / "step_1", models={"m": model}, optimizers={"m": opt}, ema=ema, state={"step": 1})
    marker = tmp_path / "pwned"
    target = ckpt / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_checkpoint(ckpt, models={"m": model}, optimizers={"m": opt}, ema=ema)
    with pytest.raises(UnsafeCheckpointError):
        load_ema(ckpt, ema)
    assert not marker.exists()


def test_incomplete_and_mismatched_checkpoints(tmp_path):
    model, opt, sched, ema = _parts()
    ckpt = save_checkpoint(tmp_path / "step_2", models={"m": model}, optimizers={"m": opt}, state={"step": 2})
    (ckpt / "DONE").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(ckpt, models={"m": model})
    assert complete_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    (ckpt / "DONE").write_text("ok\n")
    other = torch.nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(ckpt, models={"m": other})
    with pytest.raises(CheckpointError, match="does not have"):
        load_checkpoint(ckpt, models={})
    (ckpt / "models.safetensors").write_bytes(pickle.dumps({"a": 1}))  # a pickle renamed .safetensors
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(ckpt, models={"m": model})
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "nowhere", models={})


def test_rotation_and_log_truncation(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path / f"step_{step:08d}", models={"m": model}, state={"step": step})
    (tmp_path / "step_00000009").mkdir()  # interrupted: no DONE, never counted or resumed
    rotate_checkpoints(tmp_path, 2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    log = tmp_path / "losses.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    truncate_log(log, 4)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    truncate_log(log, 0)
    assert log.read_text() == ""
