"""Low-rank adapters (LoRA) for personalization of a MetaPortrait network.

Not part of the paper: MetaPortrait personalises by fine-tuning all weights from the meta-learned
init (MetaPortrait §3.2). A per-person copy of the whole generator is large; a LoRA adapter
(Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") stores only the low-rank
update ``W' = W + (alpha / r) * B @ A`` of each adapted layer (for a k x k convolution, ``A`` is a
k x k convolution to ``r`` channels and ``B`` a 1 x 1 convolution back), with ``B`` zero-initialised
so the adapted model starts exactly at the base.

Built on ``peft`` (``LoraConfig`` + ``inject_adapter_in_model``), which handles plain
``nn.Module`` trees: it replaces each targeted ``nn.Linear`` / ``nn.Conv1d|2d|3d`` by a LoRA layer
holding the original as ``base_layer``, freezes every non-adapter parameter of the model, and can
merge the update into the base weight. Layers that peft would adapt *incorrectly* or could not
merge are skipped (see :func:`select_lora_modules`): spectral-norm / weight-norm / parametrized
weights (the merged delta would be renormalised), grouped or dilated convolutions (peft's LoRA
branch ignores dilation and cannot merge groups), non-zero padding modes (the LoRA branch
zero-pads), subclasses with their own ``forward`` and modules with forward hooks.
``nn.ConvTranspose*`` is not supported by peft and is never targeted.

While adapters are injected, the base keys of ``model.state_dict()`` gain a ``.base_layer``
segment: save the base network before :func:`add_lora`, or after :func:`merge_adapter`.

Files (:func:`save_adapter`): ``adapter.safetensors`` (only the LoRA weights) and
``adapter_config.json`` (rank, alpha, targets, the adapted modules and their weight shapes, the
base model id and two hashes of the base: its architecture (parameter names and shapes) and its
weights). :func:`load_adapter` checks both before touching the model and raises
:class:`~metaportrait.errors.WeightsError` when the adapter does not fit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from metaportrait.errors import WeightsError

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "AdapterTarget",
    "LoraSpec",
    "add_lora",
    "base_fingerprint",
    "has_lora",
    "load_adapter",
    "lora_modules",
    "lora_state_dict",
    "merge_adapter",
    "read_adapter_config",
    "save_adapter",
    "select_lora_modules",
]

AdapterTarget = Literal["conv", "linear", "all"]
ADAPTER_WEIGHTS_NAME = "adapter.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_FORMAT = "metaportrait-lora"
ADAPTER_FORMAT_VERSION = 1
_ADAPTER = "default"  # peft's adapter name; one adapter per model
_SPEC_ATTR = "_metaportrait_lora_spec"
_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)


@dataclass(frozen=True)
class LoraSpec:
    """What :func:`add_lora` did to a model (kept on the model, written to ``adapter_config.json``)."""

    rank: int
    alpha: float
    target: AdapterTarget
    exclude: tuple[str, ...]
    modules: tuple[str, ...]  # adapted module names, in model order
    skipped: tuple[tuple[str, str], ...]  # (module name, reason) of candidates left alone


def _base_layer_cls() -> type:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def _excluded(name: str, exclude: Iterable[str]) -> bool:
    return any(name == e or name.startswith(e + ".") or fnmatch.fnmatchcase(name, e) for e in exclude)


def _skip_reason(module: nn.Module) -> str | None:
    if parametrize.is_parametrized(module):
        return "parametrized weight (e.g. spectral norm): a merged update would be renormalised"
    own = {n for n, _ in module.named_parameters(recurse=False)}
    if "weight_orig" in own:
        return "spectral norm: a merged update would be renormalised"
    if "weight_g" in own or "weight_v" in own:
        return "weight norm: a merged update would be renormalised"
    if module._forward_pre_hooks or module._forward_hooks:
        return "module has forward hooks"
    if isinstance(module, _CONV_TYPES):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups}): peft cannot merge it"
        if any(d != 1 for d in module.dilation):
            return f"dilated convolution (dilation={module.dilation}): peft's LoRA branch ignores dilation"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}: peft's LoRA branch zero-pads"
    return None


def select_lora_modules(
    model: nn.Module, target: AdapterTarget = "all", exclude: Iterable[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """Names of the modules :func:`add_lora` would adapt, and the skipped candidates with reasons.

    Candidates are modules whose type is exactly ``nn.Linear`` (``target`` "linear"/"all") or
    ``nn.Conv1d|2d|3d`` ("conv"/"all"); ``exclude`` holds module names, name prefixes or
    ``fnmatch`` patterns.
    """
    if target == "conv":
        types = _CONV_TYPES
    elif target == "linear":
        types = _LINEAR_TYPES
    elif target == "all":
        types = _CONV_TYPES + _LINEAR_TYPES
    else:
        raise ValueError(f"target must be 'conv', 'linear' or 'all', got {target!r}")
    exclude = tuple(exclude)
    selected: list[str] = []
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not name or _excluded(name, exclude):
            continue
        if type(module) in types:
            reason = _skip_reason(module)
            if reason is None:
                selected.append(name)
            else:
                skipped[name] = reason
        elif isinstance(module, types):
            skipped[name] = f"subclass {type(module).__name__} of {type(module).__mro__[1].__name__} (own forward)"
    return selected, skipped


def lora_modules(model: nn.Module) -> list[str]:
    """Names of the model's LoRA layers (empty when no adapter is injected)."""
    cls = _base_layer_cls()
    return [n for n, m in model.named_modules() if isinstance(m, cls)]


def has_lora(model: nn.Module) -> bool:
    return bool(lora_modules(model))


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    target: AdapterTarget = "all",
    exclude: Iterable[str] = (),
    *,
    modules: Iterable[str] | None = None,
) -> nn.Module:
    """Inject LoRA adapters of rank ``rank`` into ``model`` in place and return it.

    ``alpha`` defaults to ``rank`` (update scale ``alpha / rank`` = 1). ``modules`` (exact module
    names) overrides the selection by ``target``/``exclude``. Afterwards only the adapter weights
    have ``requires_grad=True``; outputs are unchanged until they are trained (``B`` is zero).
    The model's train/eval mode is kept.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    rank = int(rank)
    alpha = float(rank if alpha is None else alpha)
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    if has_lora(model):
        raise ValueError(f"{type(model).__name__} already has LoRA adapters: {lora_modules(model)[:5]}")
    exclude = tuple(exclude)
    candidates, skipped = select_lora_modules(model, target, exclude)
    if modules is not None:
        wanted = list(modules)
        available = dict(model.named_modules())
        bad = [n for n in wanted if n not in available or (n not in candidates and n not in skipped)]
        if bad:
            raise ValueError(f"modules {bad[:5]} are not adaptable nn.Linear/nn.Conv layers of {type(model).__name__}")
        unsupported = {n: skipped[n] for n in wanted if n in skipped}
        if unsupported:
            raise ValueError(f"modules cannot be adapted: {unsupported}")
        order = {n: i for i, n in enumerate(candidates)}
        candidates = sorted(set(wanted), key=order.__getitem__)
    if not candidates:
        raise ValueError(
            f"no layer of {type(model).__name__} can take a LoRA adapter (target={target!r}, exclude={exclude!r}); "
            f"skipped: {dict(list(skipped.items())[:5])}"
        )
    pattern = "^(?:" + "|".join(re.escape(n) for n in candidates) + ")$"
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=pattern, lora_dropout=0.0, bias="none", init_lora_weights=True
    )
    training = model.training
    inject_adapter_in_model(config, model, adapter_name=_ADAPTER)
    model.train(training)
    injected = lora_modules(model)
    if injected != candidates:
        raise RuntimeError(f"peft adapted {injected[:5]}... instead of {candidates[:5]}...")
    object.__setattr__(
        model,
        _SPEC_ATTR,
        LoraSpec(rank=rank, alpha=alpha, target=target, exclude=exclude, modules=tuple(candidates),
                 skipped=tuple(skipped.items())),
    )
    return model


def _spec(model: nn.Module) -> LoraSpec:
    spec = getattr(model, _SPEC_ATTR, None)
    if spec is None or not has_lora(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapter added by metaportrait.adapters.add_lora")
    return spec


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (``<module>.lora_A.default.weight``, ``<module>.lora_B...``), detached."""
    cls = _base_layer_cls()
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, cls):
            for part in ("lora_A", "lora_B"):
                for key, value in getattr(module, part).state_dict().items():
                    out[f"{name}.{part}.{key}"] = value.detach()
    return out


def _base_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base network's parameters under their pre-injection names, sorted (adapters excluded)."""
    items = []
    for name, p in model.named_parameters():
        if ".lora_" in name or name.startswith("lora_"):
            continue
        items.append((re.sub(r"(^|\.)base_layer\.", r"\1", name), p))
    return sorted(items, key=lambda kv: kv[0])


def base_fingerprint(model: nn.Module) -> dict[str, str]:
    """sha256 of the base architecture (parameter names, shapes, dtypes) and of the base weights.

    Buffers are left out on purpose: BatchNorm statistics and spectral-norm power-iteration vectors
    change whenever the network runs in train mode, the weights do not.
    """
    arch = hashlib.sha256()
    weights = hashlib.sha256()
    for name, p in _base_parameters(model):
        header = f"{name}:{tuple(p.shape)}:{p.dtype};".encode()
        arch.update(header)
        weights.update(header)
        weights.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"architecture": arch.hexdigest(), "weights": weights.hexdigest()}


def _module_shapes(model: nn.Module, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    modules = dict(model.named_modules())
    cls = _base_layer_cls()
    out = {}
    for n in names:
        m = modules[n]
        base = m.get_base_layer() if isinstance(m, cls) else m
        out[n] = {"type": type(base).__name__, "weight_shape": list(base.weight.shape)}
    return out


def save_adapter(
    model: nn.Module, directory: str | Path, base_id: str, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``adapter.safetensors`` and ``adapter_config.json`` to ``directory``; return the directory.

    ``base_id`` names the base network the adapter was trained on (a Hub repo id / revision or a
    path); ``metadata`` is any JSON-serialisable mapping (person, steps, losses, ...).
    """
    from peft import __version__ as peft_version
    from safetensors.torch import save_file

    spec = _spec(model)
    if not isinstance(base_id, str) or not base_id:
        raise ValueError(f"base_id must be a non-empty string, got {base_id!r}")
    cls = _base_layer_cls()
    merged = [n for n, m in model.named_modules() if isinstance(m, cls) and m.merged]
    if merged:
        raise ValueError(f"adapters of {merged[:5]} are merged into the base weights; unmerge before saving")
    meta = dict(metadata or {})
    try:
        json.dumps(meta)
    except TypeError as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    fingerprint = base_fingerprint(model)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in lora_state_dict(model).items()}
    config = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "peft_type": "LORA",
        "peft_version": peft_version,
        "rank": spec.rank,
        "alpha": spec.alpha,
        "target": spec.target,
        "exclude": list(spec.exclude),
        "target_modules": list(spec.modules),
        "modules": _module_shapes(model, spec.modules),
        "base_model_id": base_id,
        "base_model_class": type(model).__name__,
        "base_architecture_hash": fingerprint["architecture"],
        "base_weights_hash": fingerprint["weights"],
        "num_parameters": int(sum(t.numel() for t in tensors.values())),
        "metadata": meta,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors,
        str(directory / ADAPTER_WEIGHTS_NAME),
        metadata={"format": ADAPTER_FORMAT, "base_model_id": base_id, "base_weights_hash": fingerprint["weights"]},
    )
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter folder; WeightsError if missing or malformed."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise WeightsError(f"No {ADAPTER_CONFIG_NAME} in {directory!s}: not a metaportrait adapter folder")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise WeightsError(f"{path} is not a {ADAPTER_FORMAT} config (format={found!r})")
    if config.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise WeightsError(f"{path}: unsupported adapter format_version {config.get('format_version')!r}")
    required = ("rank", "alpha", "target", "target_modules", "modules", "base_architecture_hash", "base_weights_hash")
    missing = [k for k in required if k not in config]
    if missing:
        raise WeightsError(f"{path} lacks {missing}")
    return config


def _check_fit(model: nn.Module, config: dict[str, Any], directory: Path, strict: bool, base_id: str | None) -> None:
    """Raise WeightsError when the adapter cannot be applied to ``model``; warn on soft mismatches."""
    modules = dict(model.named_modules())
    cls = _base_layer_cls()
    problems = []
    for name, info in config["modules"].items():
        m = modules.get(name)
        if m is None:
            problems.append(f"module {name!r} is missing")
            continue
        base = m.get_base_layer() if isinstance(m, cls) else m
        weight = getattr(base, "weight", None)
        if type(base).__name__ != info["type"] or weight is None:
            problems.append(f"module {name!r} is a {type(base).__name__}, the adapter expects {info['type']}")
        elif list(weight.shape) != list(info["weight_shape"]):
            problems.append(
                f"module {name!r} has weight shape {list(weight.shape)}, the adapter expects {info['weight_shape']}"
            )
    if problems:
        raise WeightsError(
            f"The adapter in {directory!s} (base {config.get('base_model_id')!r}) does not fit this "
            f"{type(model).__name__}: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    fingerprint = base_fingerprint(model)
    soft = []
    if fingerprint["architecture"] != config["base_architecture_hash"]:
        soft.append(
            f"the base architecture differs (hash {fingerprint['architecture'][:12]} here, "
            f"{config['base_architecture_hash'][:12]} when saved)"
        )
    elif fingerprint["weights"] != config["base_weights_hash"]:
        soft.append(
            f"the base weights differ from those the adapter was trained on (hash {fingerprint['weights'][:12]} "
            f"here, {config['base_weights_hash'][:12]} for {config.get('base_model_id')!r})"
        )
    if base_id is not None and base_id != config.get("base_model_id"):
        soft.append(f"base id {base_id!r} differs from the adapter's {config.get('base_model_id')!r}")
    if soft:
        message = f"Adapter in {directory!s}: " + "; ".join(soft)
        if strict:
            raise WeightsError(message + " (pass strict=False to apply it anyway)")
        warnings.warn(message, stacklevel=3)


def load_adapter(
    model: nn.Module, directory: str | Path, strict: bool = True, *, base_id: str | None = None
) -> nn.Module:
    """Add (or refill) the adapter saved in ``directory`` on ``model`` in place and return it.

    The model is checked before it is touched: every adapted module must exist with the saved
    type and weight shape (always), and with ``strict=True`` the base architecture and weights
    must hash to what they were at save time and ``base_id`` (if given) must match; with
    ``strict=False`` those last mismatches only warn. Raises WeightsError otherwise.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_adapter_config(directory)
    weights_path = directory / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise WeightsError(f"No {ADAPTER_WEIGHTS_NAME} in {directory!s}")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"Cannot read {weights_path}: {exc}") from exc
    _check_fit(model, config, directory, strict, base_id)

    targets = list(config["target_modules"])
    if has_lora(model):
        spec = _spec(model)
        if list(spec.modules) != targets or spec.rank != config["rank"] or spec.alpha != float(config["alpha"]):
            raise WeightsError(
                f"{type(model).__name__} already carries a different adapter (rank {spec.rank}, "
                f"{len(spec.modules)} modules) than {directory!s} (rank {config['rank']}, {len(targets)} modules)"
            )
        if any(m.merged for n, m in model.named_modules() if isinstance(m, _base_layer_cls())):
            raise WeightsError("the model's adapters are merged; load into an unmerged model")
        added = False
    else:
        try:
            add_lora(model, rank=config["rank"], alpha=config["alpha"], target=config["target"],
                     exclude=config.get("exclude", ()), modules=targets)
        except ValueError as exc:
            raise WeightsError(
                f"The adapter in {directory!s} cannot be added to {type(model).__name__}: {exc}"
            ) from exc
        added = True

    expected = lora_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        if added:
            merge_adapter(model, merge=False)
        raise WeightsError(
            f"{weights_path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key].to(dtype=target.dtype, device=target.device))
    return model


def merge_adapter(model: nn.Module, merge: bool = True) -> nn.Module:
    """Fold each LoRA update into its base weight and put the plain layer back; return ``model``.

    Afterwards the model has no adapter modules and its state-dict keys are the base's again (so
    ``save_pretrained`` / strict ``from_pretrained`` work). ``merge=False`` drops the adapters
    instead (the base as it was). Base parameters stay frozen (``requires_grad=False``) as peft
    left them.
    """
    cls = _base_layer_cls()
    names = lora_modules(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to merge")
    for name in names:
        layer = model.get_submodule(name)
        if merge and not layer.merged:
            layer.merge(safe_merge=True, adapter_names=[_ADAPTER])
        elif not merge and layer.merged:
            layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    left = [n for n, m in model.named_modules() if isinstance(m, cls)]
    if left:
        raise RuntimeError(f"LoRA layers nested inside other LoRA layers could not be removed: {left[:5]}")
    for attr in ("peft_config", _SPEC_ATTR):
        if attr in model.__dict__:
            object.__delattr__(model, attr)
    return model
