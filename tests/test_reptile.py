"""Reptile (MetaPortrait Algorithm 1) and budgeted adaptation: known-answer tests.

* sine-wave regression (Reptile paper, Nichol et al. 2018, Sec. 6.1 / MAML Sec. 5.1): the K-step
  loss on new tasks from the meta-learned init beats random and jointly pretrained inits;
* linear regression with an orthonormal design: one outer step has a closed form;
* the outer update moves phi toward phi_K (the sign the paper prints is the opposite);
* checkpoint round trip, buffers, Accelerate equivalence, budgets of ``adapt``.
"""

from __future__ import annotations

import copy
import io
import math
import time

import pytest
import torch
from torch import nn

from metaportrait.training.reptile import AdaptResult, Reptile, ReptileConfig, Task, adapt


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is several times faster than two on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- sine waves
SINE_X = torch.linspace(-5.0, 5.0, 50).unsqueeze(1)


def sine_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 1))


def sample_sines(g: torch.Generator, n: int) -> list[torch.Tensor]:
    """Targets A sin(x + p), A ~ U[0.1, 5], p ~ U[0, pi] (the Reptile/MAML sine family)."""
    out = []
    for _ in range(n):
        amplitude = 0.1 + 4.9 * torch.rand((), generator=g)
        phase = math.pi * torch.rand((), generator=g)
        out.append(amplitude * torch.sin(SINE_X + phase))
    return out


def mse_task(x: torch.Tensor, y: torch.Tensor) -> Task:
    return Task(lambda model, step: ((model(x) - y) ** 2).mean())


SINE_K = 5
SINE_INNER = dict(inner_lr=0.01, inner_optimizer="adam", inner_betas=(0.0, 0.999))


def k_step_loss(init: nn.Module, targets: list[torch.Tensor]) -> float:
    """Mean MSE on each task after K inner-optimiser steps from ``init`` (the meta-test metric)."""
    losses = []
    for y in targets:
        model = copy.deepcopy(init)
        loss_fn = lambda m, k, y=y: ((m(SINE_X) - y) ** 2).mean()  # noqa: E731
        adapt(model, loss_fn, steps=SINE_K, lr=SINE_INNER["inner_lr"], optimizer="adam", betas=(0.0, 0.999))
        with torch.no_grad():
            losses.append(float(((model(SINE_X) - y) ** 2).mean()))
    return sum(losses) / len(losses)


def test_sine_wave_meta_init_adapts_faster_than_plain_inits():
    outer_steps = 500
    cfg = ReptileConfig(
        inner_steps=SINE_K, outer_lr=3e-3, outer_optimizer="adam", outer_betas=(0.9, 0.999),
        tasks_per_step=1, seed=0, **SINE_INNER,
    )
    meta = sine_mlp(0)
    reptile = Reptile(meta, cfg)
    start = time.perf_counter()
    outputs = reptile.fit(lambda g, m: [mse_task(SINE_X, y) for y in sample_sines(g, m)], outer_steps)
    meta_seconds = time.perf_counter() - start
    assert len(outputs) == outer_steps and reptile.step == outer_steps

    # Fair "plain pretrained" baseline: the same net trained jointly on all tasks with as many
    # task-gradient evaluations (outer_steps * K) as meta-training used.
    joint = sine_mlp(0)
    opt = torch.optim.Adam(joint.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(outer_steps * SINE_K // 4):
        loss = sum(((joint(SINE_X) - y) ** 2).mean() for y in sample_sines(g, 4)) / 4
        opt.zero_grad()
        loss.backward()
        opt.step()

    held_out = sample_sines(torch.Generator().manual_seed(1234), 20)  # new tasks
    meta_loss = k_step_loss(meta, held_out)
    joint_loss = k_step_loss(joint, held_out)
    random_loss = k_step_loss(sine_mlp(0), held_out)
    print(
        f"\nsine K={SINE_K}: meta {meta_loss:.3f}  joint-pretrained {joint_loss:.3f}  random {random_loss:.3f}"
        f"  ({outer_steps} outer steps in {meta_seconds:.1f}s)"
    )
    assert meta_loss < 0.7 * joint_loss
    assert meta_loss < 0.7 * random_loss


# ----------------------------------------------------------------------------- linear regression
def orthonormal_design(n: int, d: int, seed: int) -> torch.Tensor:
    """X (n x d) with X^T X / n = I, so 0.5 * mean((Xw - y)^2) has gradient w - w_task."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    return (q * math.sqrt(n)).float()


def linear_task(x: torch.Tensor, w: torch.Tensor) -> Task:
    y = x @ w
    return Task(lambda model, step: 0.5 * ((model(x).squeeze(1) - y) ** 2).mean())


def test_linear_regression_outer_step_has_closed_form():
    """Inner SGD(a) for K steps on a unit-Hessian quadratic: phi_K = w + (1-a)^K (phi - w).

    With outer SGD(lr=1), one outer step over M tasks gives phi + c (mean_j w_j - phi),
    c = 1 - (1-a)^K; repeated over fresh tasks, phi converges to the task mean mu.
    """
    d, alpha, k = 4, 0.1, 5
    x = orthonormal_design(64, d, seed=0)
    model = nn.Linear(d, 1, bias=False)
    cfg = ReptileConfig(inner_steps=k, inner_lr=alpha, inner_optimizer="sgd", outer_lr=1.0,
                        outer_optimizer="sgd", tasks_per_step=3)
    reptile = Reptile(model, cfg)
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -2.0, 0.5, 3.0])
    ws = [mu + 0.3 * torch.randn(d, generator=g) for _ in range(3)]
    phi0 = model.weight.detach().clone().squeeze(0)
    reptile.outer_step([linear_task(x, w) for w in ws])
    c = 1 - (1 - alpha) ** k
    expected = phi0 + c * (torch.stack(ws).mean(0) - phi0)
    torch.testing.assert_close(model.weight.detach().squeeze(0), expected, atol=1e-5, rtol=0)

    reptile.fit(lambda gen, m: [linear_task(x, mu + 0.3 * torch.randn(d, generator=gen)) for _ in range(m)], 150)
    err = (model.weight.detach().squeeze(0) - mu).norm().item()
    assert err < 0.1, f"fixed point should be the task mean {mu.tolist()}, off by {err:.3f}"


# ----------------------------------------------------------------------------- sign of the update
def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))


def regression_task(seed: int) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=g)
    y = torch.randn(32, 2, generator=g)
    return Task(lambda model, step: ((model(x) - y) ** 2).mean())


def reference_phi_k(model: nn.Module, task: Task, cfg: ReptileConfig) -> list[torch.Tensor]:
    """phi_K computed independently: a copy of phi, a fresh inner Adam, K steps."""
    clone = copy.deepcopy(model)
    opt = torch.optim.Adam(clone.parameters(), lr=cfg.inner_lr, betas=cfg.inner_betas)
    for k in range(cfg.inner_steps):
        loss = task.loss_fn(clone, k)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in clone.parameters()]


def test_outer_sgd_lr1_lands_on_phi_k():
    cfg = ReptileConfig(inner_steps=6, inner_lr=1e-2, outer_optimizer="sgd", outer_lr=1.0)
    model = tiny_net()
    task = regression_task(1)
    phi_k = reference_phi_k(model, task, cfg)
    Reptile(model, cfg).outer_step([task])
    for p, q in zip(model.parameters(), phi_k):
        torch.testing.assert_close(p.detach(), q, atol=1e-6, rtol=0)


def test_outer_adam_moves_toward_phi_k():
    """Single task: the outer Adam step is elementwise along (phi_K - phi), size ~ beta."""
    cfg = ReptileConfig(inner_steps=4, inner_lr=1e-2, outer_lr=1e-3)  # outer Adam
    model = tiny_net()
    task = regression_task(2)
    phi = [p.detach().clone() for p in model.parameters()]
    phi_k = reference_phi_k(model, task, cfg)
    out = Reptile(model, cfg).outer_step([task])
    toward = torch.cat([(q - p).flatten() for p, q in zip(phi, phi_k)])
    moved = torch.cat([(n.detach() - p).flatten() for p, n in zip(phi, model.parameters())])
    big = toward.abs() > 1e-5
    assert big.sum() > 0.9 * toward.numel()
    assert torch.equal(torch.sign(moved[big]), torch.sign(toward[big])), "phi must move toward phi_K"
    torch.testing.assert_close(moved[big].abs(), torch.full_like(moved[big], 1e-3), rtol=0.05, atol=0)
    assert torch.dot(moved, toward) > 0
    assert out.update_norm == pytest.approx(toward.norm().item(), rel=1e-5)
    assert len(out.first_losses) == 1 and len(out.inner_losses[0]) == cfg.inner_steps
    assert out.last_losses[0] < out.first_losses[0]


# ----------------------------------------------------------------------------- checkpoint / resume
def sample_regression_tasks(g: torch.Generator, m: int) -> list[Task]:
    return [regression_task(int(torch.randint(0, 10_000, (), generator=g))) for _ in range(m)]


def test_state_dict_round_trip_gives_identical_next_step():
    cfg = ReptileConfig(inner_steps=3, inner_lr=1e-2, outer_lr=1e-3, tasks_per_step=2, seed=7)
    model = tiny_net(0)
    reptile = Reptile(model, cfg)
    reptile.fit(sample_regression_tasks, 3)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "reptile": reptile.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_model = tiny_net(123)  # different init, overwritten by the checkpoint
    resumed_model.load_state_dict(saved["model"])
    resumed = Reptile(resumed_model, cfg)
    resumed.load_state_dict(saved["reptile"])
    assert resumed.step == 3

    fresh_model = tiny_net(123)  # same weights, but a fresh outer optimiser: must differ
    fresh_model.load_state_dict(saved["model"])
    fresh = Reptile(fresh_model, cfg)
    fresh.generator.set_state(reptile.generator.get_state())

    reptile.fit(sample_regression_tasks, 2)
    resumed.fit(sample_regression_tasks, 2)
    fresh.fit(sample_regression_tasks, 2)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), fresh_model.parameters()))


def test_load_state_dict_rejects_other_parameters():
    reptile = Reptile(tiny_net(), ReptileConfig())
    other = Reptile(nn.Linear(3, 2), ReptileConfig())
    with pytest.raises(ValueError, match="different trainable parameters"):
        other.load_state_dict(reptile.state_dict())


# ----------------------------------------------------------------------------- buffers
def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))


def shifted_task(shift: float) -> Task:
    g = torch.Generator().manual_seed(int(shift * 10) + 5)
    x = torch.randn(16, 3, generator=g) + shift
    y = torch.randn(16, 1, generator=g)
    return Task(lambda model, step: ((model(x) - y) ** 2).mean())


@pytest.mark.parametrize("mode", ["average", "keep"])
def test_buffers(mode):
    cfg = ReptileConfig(inner_steps=3, inner_lr=1e-2, buffers=mode)
    model = bn_net().train()
    tasks = [shifted_task(-2.0), shifted_task(3.0)]
    before = {n: b.clone() for n, b in model.named_buffers()}
    expected = []
    for t in tasks:
        clone = copy.deepcopy(model)
        opt = torch.optim.Adam(clone.parameters(), lr=cfg.inner_lr, betas=cfg.inner_betas)
        for k in range(cfg.inner_steps):
            loss = t.loss_fn(clone, k)
            opt.zero_grad()
            loss.backward()
            opt.step()
        expected.append(dict(clone.named_buffers()))
    Reptile(model, cfg).outer_step(tasks)
    after = dict(model.named_buffers())
    if mode == "average":
        for name in ("1.running_mean", "1.running_var"):
            torch.testing.assert_close(after[name], (expected[0][name] + expected[1][name]) / 2)
        assert int(after["1.num_batches_tracked"]) == cfg.inner_steps
    else:
        for name, b in before.items():
            assert torch.equal(after[name], b)


# ----------------------------------------------------------------------------- Accelerate
@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_accelerator_single_process_matches_plain(fresh_accelerate_state):
    from accelerate import Accelerator

    cfg = ReptileConfig(inner_steps=3, inner_lr=1e-2, outer_lr=1e-3, tasks_per_step=2)
    tasks = [regression_task(5), regression_task(6)]
    plain = tiny_net()
    Reptile(plain, cfg).outer_step(tasks)
    accelerated = tiny_net()
    accelerator = Accelerator(cpu=True)
    Reptile(accelerated, cfg, accelerator=accelerator).outer_step(tasks)
    for a, b in zip(plain.parameters(), accelerated.parameters()):
        assert torch.equal(a, b)


def test_accelerator_bf16_autocast_runs_inner_loop_in_bf16(fresh_accelerate_state):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    seen = []
    x = torch.randn(8, 3)

    def loss_fn(model, step):
        out = model(x)
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    model = tiny_net()
    out = Reptile(model, ReptileConfig(inner_steps=2, inner_lr=1e-2), accelerator=accelerator).outer_step([loss_fn])
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert math.isfinite(out.update_norm) and out.update_norm > 0


# ----------------------------------------------------------------------------- adapt
def test_adapt_step_budget_and_history():
    model = tiny_net()
    task = regression_task(3)
    result = adapt(model, task.loss_fn, steps=20, lr=2e-2)
    assert isinstance(result, AdaptResult)
    assert result.steps == 20 and len(result.losses) == 20 and result.stopped_by == "steps"
    assert all(b >= a for a, b in zip(result.times, result.times[1:]))
    assert result.final_loss < 0.9 * result.losses[0]


def test_adapt_time_budget_and_callback():
    task = regression_task(4)

    def slow_loss(model, step):
        time.sleep(0.02)
        return task.loss_fn(model, step)

    result = adapt(tiny_net(), slow_loss, seconds=0.3, lr=1e-3)
    assert result.stopped_by == "seconds"
    assert 3 <= result.steps <= 16
    assert result.times[-2] < 0.3 <= result.seconds

    stop = adapt(tiny_net(), task.loss_fn, steps=100, callback=lambda step, loss, t: step == 4)
    assert stop.stopped_by == "callback" and stop.steps == 5


def test_adapt_only_touches_given_params():
    model = tiny_net()
    first = model[0].weight.detach().clone()
    adapt(model, regression_task(8).loss_fn, steps=5, lr=1e-2, params=model[2].parameters())
    assert torch.equal(model[0].weight, first)


def test_task_from_batches_cycles_batches():
    seen = []
    task = Task.from_batches([1.0, 2.0, 3.0], lambda model, b: (seen.append(b), model.weight.sum() * 0 + b)[1], "p")
    assert task.batches() == (1.0, 2.0, 3.0) and task.name == "p"
    reptile = Reptile(nn.Linear(2, 1), ReptileConfig(inner_steps=5, inner_optimizer="sgd"))
    out = reptile.outer_step([task])
    assert seen == [1.0, 2.0, 3.0, 1.0, 2.0]
    assert out.inner_losses == ((1.0, 2.0, 3.0, 1.0, 2.0),)
    with pytest.raises(ValueError, match="at least one batch"):
        Task.from_batches([], lambda model, b: b)


def test_errors():
    with pytest.raises(ValueError, match="inner_steps"):
        ReptileConfig(inner_steps=0)
    with pytest.raises(ValueError, match="outer_optimizer"):
        ReptileConfig(outer_optimizer="rmsprop")
    with pytest.raises(ValueError, match="budget"):
        adapt(tiny_net(), regression_task(0).loss_fn)
    reptile = Reptile(tiny_net(), ReptileConfig(inner_steps=2))
    with pytest.raises(ValueError, match="at least one task"):
        reptile.outer_step([])
    with pytest.raises(FloatingPointError, match="not finite"):
        reptile.outer_step([lambda model, step: model(torch.randn(2, 3)).sum() * float("nan")])
