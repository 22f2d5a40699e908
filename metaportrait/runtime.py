"""Inference runtimes for the generator's per-frame forward pass.

The pipeline needs two tensors from the generator at inference: the sampling grid (mesh-warp prior +
learned flow) and the refinement residual. :class:`GeneratorRuntime` computes exactly those with one
of three backends:

* ``"eager"`` — plain PyTorch (bf16 autocast on CUDA).
* ``"onnx"`` — the generator exported to ONNX in memory (no file is written) and run by ONNX
  Runtime's CPU provider. One session per batch size, exported on first use (≈0.5 s each) and
  checked once against eager PyTorch on that first batch; a mismatch beyond ``tolerance`` raises.
* ``"compile"`` — ``torch.compile`` (Inductor). The fastest steady state on some machines, but it
  compiles C++ on first use (about a minute on a 2-core CPU), so it is never chosen automatically.

``"auto"`` uses ONNX Runtime on the CPU (0.80× eager PyTorch's time at batch 1 and 8 on a quiet
2-core CPU, ready in about a second) and eager PyTorch on GPUs. ``torch.compile`` measured faster in
steady state (0.67–0.71×) but costs 39–70 s of compilation per batch shape on that CPU, too much
for an app or a one-off command; ``benchmarks/generator_runtime.py`` measures them side by side.
"""

from __future__ import annotations

import io
import warnings
from contextlib import nullcontext
from typing import Literal

import torch

from metaportrait.models.generator import MetaPortraitGenerator

Backend = Literal["auto", "eager", "onnx", "compile"]
BACKENDS = ("auto", "eager", "onnx", "compile")
_INPUTS = ("source", "source_landmarks", "driving_landmarks", "identity", "prior_grid")


class _GridAndResidual(torch.nn.Module):
    """The generator reduced to what inference reads: ``(grid, residual)``; residual zeros when the
    refinement network has none."""

    def __init__(self, generator: MetaPortraitGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, source, source_landmarks, driving_landmarks, identity, prior_grid=None):
        out = self.generator(source, source_landmarks, driving_landmarks, identity, prior_grid=prior_grid)
        residual = out.residual if out.residual is not None else torch.zeros_like(out.warped)
        return out.grid.float(), residual.float()


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "onnx" if device.type == "cpu" and onnxruntime_available() else "eager"
    if backend == "onnx":
        if device.type != "cpu":
            raise ValueError(f"backend 'onnx' runs on the CPU only; the pipeline's device is {device}")
        if not onnxruntime_available():
            raise ImportError("backend 'onnx' needs ONNX Runtime: pip install onnxruntime")
    return backend


class GeneratorRuntime:
    """``runtime(source, source_landmarks, driving_landmarks, identity, prior_grid) -> (grid, residual)``.

    Shapes as :class:`~metaportrait.models.generator.MetaPortraitGenerator`: images ``B×3×S×S`` in
    [-1, 1], identity ``B×D``, prior ``B×S×S×2`` (or None without the prior); returns the grid
    ``B×S×S×2`` and the residual ``B×3×S×S`` in float32.
    """

    def __init__(self, generator: MetaPortraitGenerator, backend: Backend = "auto", *, threads: int | None = None,
                 tolerance: float = 1e-4) -> None:
        self.device = next(generator.parameters()).device
        self.backend = resolve_backend(backend, self.device)
        self.module = _GridAndResidual(generator).eval()
        self.threads = threads or torch.get_num_threads()
        self.tolerance = tolerance
        self._sessions: dict[int, object] = {}
        self._compiled = torch.compile(self.module) if self.backend == "compile" else None

    def __call__(self, source: torch.Tensor, source_landmarks: torch.Tensor, driving_landmarks: torch.Tensor,
                 identity: torch.Tensor, prior_grid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = (source, source_landmarks, driving_landmarks, identity, prior_grid)
        with torch.no_grad():
            if self.backend == "eager":
                return self._eager(inputs)
            if self.backend == "compile":
                return self._compiled(*inputs)
            if self.backend == "onnx":
                return self._onnx(inputs)
        raise ValueError(f"unknown backend {self.backend!r}")

    def _eager(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with autocast:
            return self.module(*inputs)

    def _onnx(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        names = [n for n, t in zip(_INPUTS, inputs) if t is not None]
        arrays = [t.contiguous() for t in inputs if t is not None]
        batch = int(arrays[0].shape[0])
        session = self._sessions.get(batch)
        fresh = session is None
        if fresh:
            session = self._sessions[batch] = self._export(tuple(arrays), names)
        # the exporter drops inputs the graph does not read (z_id when no layer uses it)
        wanted = {i.name for i in session.get_inputs()}
        grid, residual = session.run(None, {n: a.numpy() for n, a in zip(names, arrays) if n in wanted})
        out = torch.from_numpy(grid), torch.from_numpy(residual)
        if fresh:  # the exported graph must give what PyTorch gives, checked once per export
            ref = self.module(*inputs)
            err = max(float((a - b).abs().max()) for a, b in zip(out, ref))
            if err > self.tolerance:
                del self._sessions[batch]
                raise RuntimeError(f"ONNX export of the generator differs from PyTorch by {err:.3g} "
                                   f"(> {self.tolerance:g}); use backend='eager'")
        return out

    def _export(self, arrays: tuple[torch.Tensor, ...], names: list[str]):
        import onnxruntime as ort

        buf = io.BytesIO()
        module = self.module if "prior_grid" in names else _NoPrior(self.module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, arrays, buf, dynamo=False, opset_version=17, input_names=names,
                              output_names=["grid", "residual"], do_constant_folding=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


class _NoPrior(torch.nn.Module):
    """Export wrapper for generators without the mesh-warp prior (four inputs)."""

    def __init__(self, inner: _GridAndResidual) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, source, source_landmarks, driving_landmarks, identity):
        return self.inner(source, source_landmarks, driving_landmarks, identity, None)
