"""Training checkpoints that cannot run code: safetensors for tensors, JSON for everything else.

Accelerate's ``save_state``/``load_state`` pickle custom objects (``custom_checkpoint_*.pkl`` is
always unpickled with ``weights_only=False``), so a checkpoint folder from someone else could run
code on resume or export. Every training loop here writes and reads its own state instead:

* ``models.safetensors`` — each model's (unwrapped) state dict, keys ``{name}.{parameter}``;
* ``optimizers.safetensors`` + ``optimizers.json`` — each optimizer's per-parameter tensors
  (Adam's moments, step) and its param groups / non-tensor state;
* ``schedulers.json`` — learning-rate schedulers' state dicts (plain numbers);
* ``ema.safetensors`` + ``ema.json`` — diffusers ``EMAModel`` shadow parameters and counters;
* ``rng.safetensors`` + ``rng.json`` — torch (CPU, CUDA), numpy and Python random states of this
  process (``_{process}`` per process);
* ``state.json`` (+ ``extra.safetensors``) — the step and the loop's own counters (and tensors);
* ``DONE`` — written last: a folder without it is an interrupted save and is never resumed from.

Loading refuses a folder that holds any pickle-based file (``.pkl``, ``.bin``, ``.pt``, ``.pth``,
``.ckpt``) with :class:`UnsafeCheckpointError`, and loads tensors strictly (every expected key,
no extra ones, same shapes).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from metaportrait.errors import CheckpointError, UnsafeCheckpointError

PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
DONE = "DONE"


def refuse_pickles(path: str | Path) -> None:
    """Raise :class:`UnsafeCheckpointError` if ``path`` (a folder) holds any pickle-based file."""
    path = Path(path)
    found = sorted(p.name for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load a checkpoint with pickle files ({', '.join(found[:5])}"
            f"{', …' if len(found) > 5 else ''}); they can run code when loaded. Checkpoints of this "
            "version hold only .safetensors and .json files"
        )


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable in a checkpoint: {type(o).__name__}")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, default=_json_default, indent=1))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: missing {path.name}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: missing {path.name}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


# ---------------------------------------------------------------------------------------- parts
def _optimizer_parts(opt: torch.optim.Optimizer, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, name: str, tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}.state."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, field = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[field] = value
    for idx, fields in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(fields)
    current = opt.state_dict()
    if len(meta["param_groups"]) != len(current["param_groups"]):
        raise CheckpointError(f"optimizer {name!r}: {len(meta['param_groups'])} parameter groups in the checkpoint, "
                              f"{len(current['param_groups'])} in the model being trained")
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_parts() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state(legacy=True)
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_version, list(py_state), py_gauss],
    }
    return tensors, meta


def _restore_rng(tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in states])
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


def _ema_parts(ema: Any) -> tuple[dict[str, torch.Tensor], dict]:
    sd = ema.state_dict()
    shadow = sd.pop("shadow_params")
    sd.pop("collected_params", None)
    tensors = {f"shadow.{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(shadow)}
    return tensors, sd


def _load_ema(ema: Any, tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    keys = sorted(tensors)
    current = ema.shadow_params
    if len(keys) != len(current):
        raise CheckpointError(f"EMA: {len(keys)} shadow parameters in the checkpoint, {len(current)} in the model")
    for key, param in zip(keys, current):
        t = tensors[key]
        if tuple(t.shape) != tuple(param.shape):
            raise CheckpointError(f"EMA {key}: shape {tuple(t.shape)} in the checkpoint, {tuple(param.shape)} in the model")
    state = dict(meta)
    state["shadow_params"] = [tensors[k].to(device=p.device, dtype=p.dtype) for k, p in zip(keys, current)]
    ema.load_state_dict(state)


def _open_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder that is safe and complete to read: no pickles, ``DONE`` written."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    refuse_pickles(path)
    if not (path / DONE).is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {DONE} file: the save was interrupted)")
    return path


# ---------------------------------------------------------------------------------------- API
def save_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    ema: Any | None = None,
    state: Mapping[str, Any] | None = None,
    scaler: Any | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
    process_index: int = 0,
    is_main_process: bool = True,
) -> Path:
    """Write a checkpoint folder (see the module docstring). ``models`` are unwrapped modules.

    Every process writes its RNG state; the main process writes the rest and ``DONE`` last.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng_t, rng_m = _rng_parts()
    save_file(rng_t, str(path / f"rng_{process_index}.safetensors"))
    _write_json(path / f"rng_{process_index}.json", rng_m)
    if not is_main_process:
        return path
    model_t: dict[str, torch.Tensor] = {}
    for name, module in models.items():
        for key, value in module.state_dict().items():
            model_t[f"{name}.{key}"] = value.detach().cpu().contiguous()
    save_file(model_t, str(path / "models.safetensors"))
    opt_t: dict[str, torch.Tensor] = {}
    opt_m: dict[str, Any] = {}
    for name, opt in (optimizers or {}).items():
        t, m = _optimizer_parts(opt, name)
        opt_t.update(t)
        opt_m[name] = m
    save_file(opt_t, str(path / "optimizers.safetensors"))
    _write_json(path / "optimizers.json", opt_m)
    _write_json(path / "schedulers.json", {name: s.state_dict() for name, s in (schedulers or {}).items()})
    if ema is not None:
        ema_t, ema_m = _ema_parts(ema)
        save_file(ema_t, str(path / "ema.safetensors"))
        _write_json(path / "ema.json", ema_m)
    if scaler is not None:
        _write_json(path / "scaler.json", scaler.state_dict())
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / "extra.safetensors"))
    _write_json(path / "state.json", dict(state or {}))
    (path / DONE).write_text("ok\n")
    return path


def load_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    ema: Any | None = None,
    scaler: Any | None = None,
    process_index: int = 0,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into the given objects; return ``state.json``
    (with the loop's extra tensors, if it saved any, under ``"tensors"``).

    Refuses pickles (:class:`UnsafeCheckpointError`) and incomplete or mismatched folders
    (:class:`CheckpointError`) before touching any object.
    """
    path = _open_checkpoint(path)
    model_t = _load_tensors(path / "models.safetensors")
    for name, module in models.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in model_t.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: model {name!r} does not match the checkpoint: {exc}") from None
    extra = sorted({k.split(".", 1)[0] for k in model_t} - set(models))
    if extra:
        raise CheckpointError(f"{path}: the checkpoint holds models {extra} that this training run does not have")
    if optimizers:
        opt_t = _load_tensors(path / "optimizers.safetensors")
        opt_m = _read_json(path / "optimizers.json")
        for name, opt in optimizers.items():
            if name not in opt_m:
                raise CheckpointError(f"{path}: no optimizer {name!r} in the checkpoint")
            _load_optimizer(opt, name, opt_t, opt_m[name])
    if schedulers:
        sched_m = _read_json(path / "schedulers.json")
        for name, sched in schedulers.items():
            if name not in sched_m:
                raise CheckpointError(f"{path}: no scheduler {name!r} in the checkpoint")
            sched.load_state_dict(sched_m[name])
    if ema is not None:
        _load_ema(ema, _load_tensors(path / "ema.safetensors"), _read_json(path / "ema.json"))
    if scaler is not None and (path / "scaler.json").is_file():
        scaler.load_state_dict(_read_json(path / "scaler.json"))
    if restore_rng:
        rng_file = path / f"rng_{process_index}.safetensors"
        if rng_file.is_file():
            _restore_rng(_load_tensors(rng_file), _read_json(path / f"rng_{process_index}.json"))
    state = _read_json(path / "state.json")
    if (path / "extra.safetensors").is_file():
        state["tensors"] = _load_tensors(path / "extra.safetensors")
    return state


def load_ema(path: str | Path, ema: Any) -> dict[str, Any]:
    """Restore only the EMA weights of a checkpoint into ``ema`` (for export); return ``state.json``."""
    path = _open_checkpoint(path)
    if not (path / "ema.safetensors").is_file():
        raise CheckpointError(f"{path}: the checkpoint holds no EMA weights (ema.safetensors)")
    _load_ema(ema, _load_tensors(path / "ema.safetensors"), _read_json(path / "ema.json"))
    return _read_json(path / "state.json")


def truncate_log(path: str | Path, step: int) -> None:
    """Drop the lines of a JSON-lines log (``{"step": N, ...}`` per line) after ``step``, so a run
    resumed from an earlier checkpoint does not repeat steps (0: start afresh). Unparseable lines
    (a line cut by a kill) are dropped too."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


def complete_checkpoints(root: str | Path, prefix: str = "step_") -> list[Path]:
    """The complete checkpoint folders ``root/{prefix}N`` (with ``DONE``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.glob(f"{prefix}*"):
        tail = p.name[len(prefix):]
        if p.is_dir() and tail.isdigit() and (p / DONE).is_file():
            found.append((int(tail), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path, prefix: str = "step_") -> Path | None:
    found = complete_checkpoints(root, prefix)
    return found[-1] if found else None


def rotate_checkpoints(root: str | Path, keep: int | None, prefix: str = "step_") -> None:
    """Delete all but the newest ``keep`` complete checkpoints (``None``: keep all)."""
    if keep is None:
        return
    if keep < 1:
        raise ValueError(f"keep must be ≥ 1, got {keep}")
    for old in complete_checkpoints(root, prefix)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "complete_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "load_ema",
    "refuse_pickles",
    "rotate_checkpoints",
    "save_checkpoint",
    "truncate_log",
]
