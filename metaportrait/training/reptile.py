"""Reptile meta-learning for fast personalization (MetaPortrait, CVPR 2023, §3.2, Algorithm 1).

Algorithm 1 of the paper, generic over any ``nn.Module`` and any task loss::

    for each outer step:
        for j in 1..M:                                   # M identities (tasks)
            phi_j^0 = phi                                # clone the meta-parameters
            for k in 1..K:                               # K inner steps, inner Adam(alpha)
                phi_j^k = phi_j^(k-1) - Adam_alpha(grad L_j(phi_j^(k-1)))
        g = (1/M) * sum_j (phi - phi_j^K)                # used as a gradient
        phi = OuterOptimizer_beta(phi, g)                # official: Adam, beta = 2e-5

Sign convention. The paper prints the outer update with (phi_j^K - phi). Reptile (Nichol et al.
2018, "On First-Order Meta-Learning Algorithms") moves phi *toward* the adapted weights:
``phi <- phi + eps * (phi_K - phi)``. An optimiser *subtracts* its gradient, so the quantity handed
to it as ``.grad`` must be ``phi - phi_K``; with outer SGD at ``lr = eps`` this reproduces Reptile's
interpolation exactly (``lr = 1`` lands on phi_K), and with outer Adam the step is elementwise along
``phi_K - phi``. Feeding the printed (phi_K - phi) as a gradient would push phi *away* from every
task's solution. The official code passes (phi - phi_K) (``base_model/train_ddp.py`` of
github.com/Meta-Portrait/MetaPortrait; docs/METHOD.md §8).

Buffers (BatchNorm running statistics, spectral-norm power-iteration vectors): each task's clone
starts from phi's buffers. With ``buffers="average"`` (default) phi's floating-point buffers become
the mean of the tasks' buffers after their K inner steps (the statistics of the meta-learned
weights seen on every task) and integer buffers (``num_batches_tracked``) take the last task's
value; with ``buffers="keep"`` phi's buffers are left exactly as they were.

Distributed / mixed precision (Hugging Face Accelerate): pass ``accelerator=``. phi is moved to
``accelerator.device``; the inner forward passes run under ``accelerator.autocast()`` (master weights
stay fp32; fp16 on CUDA gets a fresh ``GradScaler`` per task); with several processes every process
runs its own tasks and the per-process mean of (phi - phi_K) (and of the averaged buffers) is
all-reduced before the outer step, so all replicas take the same step. Pass the *unwrapped* model
(do not ``accelerator.prepare`` it: no DDP wrapper is needed since the reduction is explicit). On
one process the result is identical to running without an accelerator.

Checkpointing: the model's weights are saved by the caller (``save_pretrained``); the wrapper's
``state_dict()`` holds the outer optimiser, the step counter and the task-sampling generator, so
``load_state_dict`` resumes exactly.

Personalization (paper Sec. 4.4: fine-tuning the meta-learned init on a person's frames with a
step or wall-clock budget) is :func:`adapt`.
"""

from __future__ import annotations

import copy
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from metaportrait.config import ConfigChecks

__all__ = [
    "AdaptResult",
    "LossFn",
    "Reptile",
    "ReptileConfig",
    "ReptileStepOutput",
    "Task",
    "TaskLike",
    "adapt",
]

LossFn = Callable[[nn.Module, int], torch.Tensor]
"""``loss_fn(model, step) -> scalar Tensor``: the loss of ``model`` on the batch of inner step ``step``."""


@dataclass(frozen=True)
class ReptileConfig(ConfigChecks):
    """Hyper-parameters of Reptile (MetaPortrait Algorithm 1; defaults are the paper's / official).

    inner_steps: K, inner optimisation steps per task (paper 24).
    inner_lr: alpha, inner learning rate (paper 2e-4, inner Adam).
    outer_lr: beta, outer learning rate (official 2e-5, outer Adam).
    tasks_per_step: M, tasks (identities) per outer step; :meth:`Reptile.fit` samples this many.
    inner_optimizer / outer_optimizer: ``"adam"`` (paper/official) or ``"sgd"`` (plain SGD; outer SGD
        with ``outer_lr = eps`` is the original Reptile interpolation ``phi += eps (phi_K - phi)``).
    inner_betas / outer_betas: Adam betas (default: the official base-training betas (0.5, 0.999)).
    max_grad_norm: max global norm of each *inner* gradient (None: no clipping). The outer "gradient"
        (phi - phi_K) is never clipped: it is a displacement, not a gradient.
    buffers: ``"average"`` or ``"keep"`` (see module docstring).
    seed: seed of the generator handed to the task sampler in :meth:`Reptile.fit`.
    """

    inner_steps: int = 24
    inner_lr: float = 2e-4
    outer_lr: float = 2e-5
    tasks_per_step: int = 1
    inner_optimizer: Literal["adam", "sgd"] = "adam"
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    inner_betas: tuple[float, float] = (0.5, 0.999)
    outer_betas: tuple[float, float] = (0.5, 0.999)
    max_grad_norm: float | None = None
    buffers: Literal["average", "keep"] = "average"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("inner_betas", "outer_betas"):
            value = getattr(self, name)
            if isinstance(value, list):  # from JSON
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        self.check_positive_ints("inner_steps", "tasks_per_step")
        for name in ("inner_lr", "outer_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("inner_optimizer", "outer_optimizer"):
            if getattr(self, name) not in ("adam", "sgd"):
                raise ValueError(f"{name} must be 'adam' or 'sgd', got {getattr(self, name)!r}")
        for name in ("inner_betas", "outer_betas"):
            value = getattr(self, name)
            if len(value) != 2 or not all(0.0 <= b < 1.0 for b in value):
                raise ValueError(f"{name} must be two numbers in [0, 1), got {value!r}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be None or a positive number, got {self.max_grad_norm!r}")
        if self.buffers not in ("average", "keep"):
            raise ValueError(f"buffers must be 'average' or 'keep', got {self.buffers!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ReptileConfig:
        return dataclasses.replace(self, **changes)


@runtime_checkable
class TaskLike(Protocol):
    """Anything with ``loss_fn(model, step) -> Tensor`` (e.g. :class:`Task`)."""

    def loss_fn(self, model: nn.Module, step: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class Task:
    """One meta-learning task (an identity): the loss of inner step ``step`` for a model.

    Build one directly from a callable, or with :meth:`from_batches` from a person's batches and a
    per-batch loss (inner step k uses batch ``k % len(batches)``).
    """

    loss: LossFn
    name: str = ""
    data: tuple[Any, ...] = ()  # the batches, when built with from_batches

    def loss_fn(self, model: nn.Module, step: int) -> torch.Tensor:
        return self.loss(model, step)

    @classmethod
    def from_batches(
        cls, batches: Sequence[Any], loss: Callable[[nn.Module, Any], torch.Tensor], name: str = ""
    ) -> Task:
        """A task whose inner step k computes ``loss(model, batches[k % len(batches)])``."""
        data = tuple(batches)
        if not data:
            raise ValueError(f"Task {name!r}: needs at least one batch, got 0")
        return cls(loss=lambda model, step: loss(model, data[step % len(data)]), name=name, data=data)

    def batches(self) -> tuple[Any, ...]:
        """The task's batches (empty for a task built from a bare loss callable)."""
        return self.data


@dataclass(frozen=True)
class ReptileStepOutput:
    """What one outer step did. Losses are per task, in the order the tasks were given."""

    step: int  # outer steps taken so far (after this one)
    first_losses: tuple[float, ...]  # each task's loss at inner step 0 (from phi)
    last_losses: tuple[float, ...]  # each task's loss at inner step K-1
    inner_losses: tuple[tuple[float, ...], ...]  # every inner loss, task x step
    update_norm: float  # ||mean_j (phi - phi_j^K)||_2, the outer "gradient" norm
    seconds: float

    @property
    def mean_first_loss(self) -> float:
        return sum(self.first_losses) / len(self.first_losses)

    @property
    def mean_last_loss(self) -> float:
        return sum(self.last_losses) / len(self.last_losses)


@dataclass(frozen=True)
class AdaptResult:
    """Loss history of :func:`adapt`; ``times[i]`` is seconds since the start after step i."""

    losses: tuple[float, ...]
    times: tuple[float, ...]
    steps: int
    seconds: float
    stopped_by: Literal["steps", "seconds", "callback"]

    @property
    def final_loss(self) -> float:
        if not self.losses:
            raise ValueError("no step was taken")
        return self.losses[-1]


def _make_optimizer(
    kind: str, params: list[nn.Parameter], lr: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    elif kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {kind!r}")


def _autocast(accelerator: Any | None) -> contextlib.AbstractContextManager:
    return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()


def _grad_scaler(accelerator: Any | None, device: torch.device) -> torch.amp.GradScaler | None:
    if accelerator is not None and getattr(accelerator, "mixed_precision", "no") == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def _check_loss(loss: Any, where: str) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"{where}: loss_fn must return a scalar tensor, got {type(loss).__name__}"
                         f"{'' if not isinstance(loss, torch.Tensor) else ' of shape ' + str(tuple(loss.shape))}")
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(f"{where}: loss is not finite ({loss.item()})")
    return loss.reshape(())


def _optimisation_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    max_grad_norm: float | None,
    scaler: torch.amp.GradScaler | None,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()


class Reptile:
    """Reptile meta-learner (MetaPortrait Algorithm 1) over the trainable parameters of ``model`` (phi).

    ``model`` is updated in place by :meth:`outer_step`. Parameters with ``requires_grad=False`` at
    construction are neither adapted in the inner loop nor meta-learned.
    """

    def __init__(self, model: nn.Module, config: ReptileConfig | None = None, accelerator: Any | None = None) -> None:
        self.config = config if config is not None else ReptileConfig()
        self.accelerator = accelerator
        if accelerator is not None:
            model = accelerator.unwrap_model(model)
            model.to(accelerator.device)
        self.model = model
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.param_names:
            raise ValueError(f"{type(model).__name__} has no trainable parameters (requires_grad=True)")
        params = dict(model.named_parameters())
        self._params = [params[n] for n in self.param_names]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        self.outer_optimizer = _make_optimizer(
            self.config.outer_optimizer, self._params, self.config.outer_lr, self.config.outer_betas
        )
        self.step = 0
        self.generator = torch.Generator().manual_seed(int(self.config.seed))
        self._scratch: nn.Module | None = None

    # ------------------------------------------------------------------ inner loop
    def _scratch_from_phi(self) -> nn.Module:
        """One scratch module reused for every task; its weights and buffers are reset to phi's."""
        if self._scratch is None:
            self._scratch = copy.deepcopy(self.model)
        scratch = self._scratch
        scratch.train(self.model.training)
        with torch.no_grad():
            for (_, s), (_, p) in zip(scratch.named_parameters(), self.model.named_parameters()):
                s.copy_(p)
                s.grad = None
            for (_, s), (_, b) in zip(scratch.named_buffers(), self.model.named_buffers()):
                s.copy_(b)
        return scratch

    def inner_loop(self, task: TaskLike | LossFn, index: int = 0) -> tuple[nn.Module, list[float]]:
        """K inner steps from phi on one task with a fresh inner optimiser.

        Returns the scratch module holding phi_K (valid until the next call) and the K losses.
        """
        loss_fn = task.loss_fn if isinstance(task, TaskLike) else task
        if not callable(loss_fn):
            raise ValueError(f"task {index}: expected a Task or a callable loss_fn, got {type(task).__name__}")
        cfg = self.config
        scratch = self._scratch_from_phi()
        named = dict(scratch.named_parameters())
        params = [named[n] for n in self.param_names]
        inner_opt = _make_optimizer(cfg.inner_optimizer, params, cfg.inner_lr, cfg.inner_betas)
        device = params[0].device
        scaler = _grad_scaler(self.accelerator, device)
        losses: list[float] = []
        for k in range(cfg.inner_steps):
            with _autocast(self.accelerator):
                loss = _check_loss(loss_fn(scratch, k), f"task {index}, inner step {k}")
            losses.append(float(loss.detach().float().item()))
            _optimisation_step(loss, inner_opt, params, cfg.max_grad_norm, scaler)
        for p in params:
            p.grad = None
        return scratch, losses

    # ------------------------------------------------------------------ outer step
    def outer_step(self, tasks: Sequence[TaskLike | LossFn]) -> ReptileStepOutput:
        """One outer step over ``tasks`` (M identities): phi moves toward the mean of the phi_j^K."""
        if isinstance(tasks, (TaskLike,)) or callable(tasks):
            raise ValueError("outer_step takes a sequence of tasks, got a single task; wrap it in a list")
        tasks = list(tasks)
        if not tasks:
            raise ValueError("outer_step needs at least one task, got 0")
        start = time.perf_counter()
        cfg = self.config
        with torch.no_grad():
            deltas = [torch.zeros_like(p, dtype=torch.float32) for p in self._params]
            buf_sums = {
                n: torch.zeros_like(b, dtype=torch.float32)
                for n, b in self.model.named_buffers()
                if b.is_floating_point()
            }
        last_int_buffers: dict[str, torch.Tensor] = {}
        all_losses: list[tuple[float, ...]] = []
        for j, task in enumerate(tasks):
            scratch, losses = self.inner_loop(task, j)
            all_losses.append(tuple(losses))
            with torch.no_grad():
                named = dict(scratch.named_parameters())
                for d, p, n in zip(deltas, self._params, self.param_names):
                    d.add_(p.detach().float() - named[n].detach().float())
                if cfg.buffers == "average":
                    for n, b in scratch.named_buffers():
                        if n in buf_sums:
                            buf_sums[n].add_(b.float())
                        else:
                            last_int_buffers[n] = b.detach().clone()
        with torch.no_grad():
            count = float(len(tasks))
            for d in deltas:
                d.div_(count)
            for s in buf_sums.values():
                s.div_(count)
            acc = self.accelerator
            if acc is not None and getattr(acc, "num_processes", 1) > 1:
                deltas = [acc.reduce(d, reduction="mean") for d in deltas]
                if cfg.buffers == "average":
                    buf_sums = {n: acc.reduce(s, reduction="mean") for n, s in buf_sums.items()}
            update_norm = float(torch.sqrt(sum((d * d).sum() for d in deltas)).item())
            for p, d in zip(self._params, deltas):
                p.grad = d.to(p.dtype)
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        if cfg.buffers not in ("average", "keep"):
            raise ValueError(f"buffers must be 'average' or 'keep', got {cfg.buffers!r}")
        if cfg.buffers == "average":  # "keep" leaves φ's buffers as they are
            with torch.no_grad():
                buffers = dict(self.model.named_buffers())
                for n, s in buf_sums.items():
                    buffers[n].copy_(s.to(buffers[n].dtype))
                for n, b in last_int_buffers.items():
                    buffers[n].copy_(b)
        self.step += 1
        return ReptileStepOutput(
            step=self.step,
            first_losses=tuple(ls[0] for ls in all_losses),
            last_losses=tuple(ls[-1] for ls in all_losses),
            inner_losses=tuple(all_losses),
            update_norm=update_norm,
            seconds=time.perf_counter() - start,
        )

    def fit(
        self,
        sample_tasks: Callable[[torch.Generator, int], Sequence[TaskLike | LossFn]],
        num_steps: int,
        callback: Callable[[ReptileStepOutput], bool | None] | None = None,
    ) -> list[ReptileStepOutput]:
        """``num_steps`` outer steps; each samples M tasks with ``sample_tasks(self.generator, M)``.

        ``callback(output)`` is called after every step; returning True stops early.
        """
        if int(num_steps) != num_steps or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
        outputs = []
        for _ in range(int(num_steps)):
            out = self.outer_step(sample_tasks(self.generator, self.config.tasks_per_step))
            outputs.append(out)
            if callback is not None and callback(out):
                break
        return outputs

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Outer optimiser, step counter, generator state (the model's weights are saved separately)."""
        return {
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "step": self.step,
            "generator": self.generator.get_state(),
            "param_names": list(self.param_names),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"outer_optimizer", "step", "generator", "param_names"} - set(state)
        if missing:
            raise ValueError(f"Reptile state dict lacks {sorted(missing)}")
        if list(state["param_names"]) != self.param_names:
            raise ValueError(
                "Reptile state dict was saved for different trainable parameters: "
                f"{len(state['param_names'])} saved vs {len(self.param_names)} here"
            )
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


# ---------------------------------------------------------------------- personalization
def adapt(
    model: nn.Module,
    loss_fn: LossFn,
    steps: int | None = None,
    seconds: float | None = None,
    lr: float = 2e-4,
    params: Iterable[nn.Parameter] | None = None,
    callback: Callable[[int, float, float], bool | None] | None = None,
    *,
    optimizer: Literal["adam", "sgd"] = "adam",
    betas: tuple[float, float] = (0.5, 0.999),
    max_grad_norm: float | None = None,
    accelerator: Any | None = None,
) -> AdaptResult:
    """Fine-tune ``model`` in place (personalization, paper Sec. 4.4) within a step and/or time budget.

    ``loss_fn(model, step)`` gives the loss of step ``step``. Stops after ``steps`` steps or once
    ``seconds`` of wall-clock time have elapsed (checked before each step), whichever comes first,
    or when ``callback(step, loss, elapsed_seconds)`` returns True. ``params`` defaults to the
    model's trainable parameters (e.g. only the LoRA weights after ``add_lora``). The model's
    train/eval mode is left as the caller set it.
    """
    if steps is None and seconds is None:
        raise ValueError("adapt needs a budget: steps and/or seconds")
    if steps is not None and (int(steps) != steps or steps < 0):
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if seconds is not None and not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(f"seconds must be a non-negative finite number, got {seconds!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    param_list = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not param_list:
        raise ValueError("adapt: no parameters to optimise")
    opt = _make_optimizer(optimizer, param_list, lr, betas)
    scaler = _grad_scaler(accelerator, param_list[0].device)
    losses: list[float] = []
    times: list[float] = []
    stopped_by: Literal["steps", "seconds", "callback"] = "steps"
    start = time.perf_counter()
    step = 0
    while True:
        if steps is not None and step >= steps:
            stopped_by = "steps"
            break
        if seconds is not None and time.perf_counter() - start >= seconds:
            stopped_by = "seconds"
            break
        with _autocast(accelerator):
            loss = _check_loss(loss_fn(model, step), f"adapt step {step}")
        value = float(loss.detach().float().item())
        _optimisation_step(loss, opt, param_list, max_grad_norm, scaler)
        elapsed = time.perf_counter() - start
        losses.append(value)
        times.append(elapsed)
        step += 1
        if callback is not None and callback(step - 1, value, elapsed):
            stopped_by = "callback"
            break
    for p in param_list:
        p.grad = None
    return AdaptResult(
        losses=tuple(losses), times=tuple(times), steps=step, seconds=time.perf_counter() - start, stopped_by=stopped_by
    )
