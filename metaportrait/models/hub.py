"""Shared Hugging Face Hub plumbing for every network of the package.

Every network subclasses :class:`HubModel`, i.e. ``torch.nn.Module`` +
``huggingface_hub.PyTorchModelHubMixin``. It takes exactly one constructor argument, ``config``,
a frozen dataclass deriving from :class:`ModelConfig`; the mixin writes it to ``config.json``
next to ``model.safetensors`` and a model card. Differences from the mixin's defaults:

* ``from_pretrained`` loads **strictly** by default (missing or unexpected keys raise);
* only ``model.safetensors`` is ever read (never a pickled ``pytorch_model.bin``);
* a nested config (a dataclass field whose value is itself a :class:`ModelConfig`) and tuple
  fields survive the JSON round trip (see :meth:`ModelConfig.__post_init__`).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub import constants as hf_constants

from metaportrait.config import ConfigChecks
from metaportrait.errors import WeightsError

PAPER_URL = "https://arxiv.org/abs/2212.08062"
FEWSHOT_PAPER_URL = "https://arxiv.org/abs/1905.08233"
REPO_URL = "https://github.com/metaportrait/metaportrait"

MODEL_CARD_TEMPLATE = """---
# For reference on model card metadata, see the spec: https://github.com/huggingface/hub-docs/blob/main/modelcard.md?plain=1
{{ card_data }}
---

# {{ model_name | default("MetaPortrait model", true) }}

This model is part of [metaportrait]({{ repo_url | default("https://github.com/metaportrait/metaportrait", true) }}),
an open implementation of identity-preserving talking-head generation.

- Paper: {{ paper_url | default("https://arxiv.org/abs/2212.08062", true) }}
- Library: `metaportrait` (`pip install metaportrait`); weights are safetensors, config in `config.json`.

```python
from metaportrait.models import {{ model_name | default("HubModel", true) }}
model = {{ model_name | default("HubModel", true) }}.from_pretrained("path/or/repo-id")  # strict loading
```

Images are RGB float tensors in [-1, 1], layout B×3×H×W.
"""

_MAX_WIDTH = 4096
_MAX_COUNT = 64

C = TypeVar("C", bound="ModelConfig")
M = TypeVar("M", bound="HubModel")


def _coerce(tp: Any, value: Any) -> Any:
    """Turn JSON values back into the annotated type: dict -> nested config, list -> tuple."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return tp.from_dict(value) if hasattr(tp, "from_dict") else tp(**value)
    if (origin is tuple or tp is tuple) and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin is typing.Union or str(origin) == "types.UnionType":
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            coerced = _coerce(arg, value)
            if coerced is not value:
                return coerced
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigChecks):
    """Base of every model config: frozen, JSON-serialisable, nested configs allowed.

    Subclasses are ``@dataclass(frozen=True)`` and validate their values in ``validate()``
    (raise ``ValueError`` showing the offending value; :meth:`check_positive_ints` and
    :meth:`check_non_negative_ints` do the integer fields).
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(hints.get(f.name, Any), value)
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Check field values; raise ``ValueError`` with the offending value."""

    def check_bounds(self) -> None:
        """Refuse values no real model has, before anything is allocated (a ``config.json`` from a
        stranger can ask for 10⁹-pixel images or 8,000-channel layers): sizes, widths and
        resolutions ≤ 4096, counts of layers/blocks/levels and kernel sizes ≤ 64, in this config and
        every nested one."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelConfig):
                value.check_bounds()
                continue
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                name = f.name
                if any(k in name for k in ("size", "channels", "dim", "hidden", "feat", "resolution")):
                    limit = _MAX_WIDTH
                elif any(k in name for k in ("depth", "blocks", "layers", "levels", "num_down", "num_mlp",
                                             "num_scales", "window", "kernel", "multiplier")):
                    limit = _MAX_COUNT
                else:  # e.g. num_videos: bounded by the weights file (the parameter-count check)
                    continue
                if v > limit:
                    raise ValueError(f"{type(self).__name__}.{name} = {v} is beyond any real model (limit {limit})")

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        """A new config with some fields changed (configs are never mutated)."""
        return dataclasses.replace(self, **changes)


class HubModel(
    torch.nn.Module,
    PyTorchModelHubMixin,
    library_name="metaportrait",
    license="apache-2.0",
    repo_url=REPO_URL,
    paper_url=PAPER_URL,
    tags=["talking-head", "face-reenactment", "metaportrait"],
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """``nn.Module`` + ``PyTorchModelHubMixin`` with strict, safetensors-only loading."""

    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        expected = getattr(type(self), "config_class", None)
        if expected is not None and isinstance(config, dict):  # from config.json
            config = expected.from_dict(config)
        if expected is not None and not isinstance(config, expected):
            raise TypeError(f"{type(self).__name__} takes a {expected.__name__}, got {type(config).__name__}")
        self.config = config
        self._hub_mixin_config = config  # what save_pretrained writes to config.json

    def generate_model_card(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        """The mixin's model card, naming the concrete class (the template defaults to "HubModel")."""
        kwargs.setdefault("model_name", type(self).__name__)
        return super().generate_model_card(*args, **kwargs)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @classmethod
    def from_pretrained(cls: type[M], pretrained_model_name_or_path: str | Path, *, strict: bool = True, **kwargs: Any) -> M:  # type: ignore[override]
        """Load config + safetensors weights from a local folder or a Hub repo id; strict by default.

        Everything read from the folder or repo is untrusted: the config is validated (and bounded)
        and the parameter count it implies is checked against the weights file's header before any
        memory is allocated; every failure is one :class:`~metaportrait.errors.WeightsError` line.
        """
        try:
            return super().from_pretrained(pretrained_model_name_or_path, strict=strict, **kwargs)
        except WeightsError:
            raise
        except (RuntimeError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            what = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
            if len(what) > 600:
                what = what[:600] + " …"
            if isinstance(exc, (TypeError, AttributeError, KeyError)):  # config.json of the wrong shape
                what = f"config.json is not a JSON object of model settings ({what})"
            raise WeightsError(f"Could not load {cls.__name__} from {pretrained_model_name_or_path!s}: {what}") from exc

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ):
        config = model_kwargs.get("config")
        expected = getattr(cls, "config_class", None)
        if expected is not None:
            if isinstance(config, dict):
                config = expected.from_dict(config)
            if not isinstance(config, expected):
                raise WeightsError(f"{model_id}: config.json must be a JSON object of {expected.__name__} fields, "
                                   f"got {type(config).__name__}")
            config.check_bounds()
            model_kwargs = {**model_kwargs, "config": config}
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, hf_constants.SAFETENSORS_SINGLE_FILE)
            if not os.path.isfile(model_file):
                raise FileNotFoundError(f"no {hf_constants.SAFETENSORS_SINGLE_FILE} in {model_id}")
        else:
            model_file = hf_hub_download(
                repo_id=model_id,
                filename=hf_constants.SAFETENSORS_SINGLE_FILE,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        _check_weights_file(cls, model_kwargs, model_file)
        model = cls(**model_kwargs)
        return cls._load_as_safetensor(model, model_file, map_location, strict)


def _check_weights_file(cls: type, model_kwargs: dict[str, Any], model_file: str) -> None:
    """The safetensors header must be readable, and the config's model (built on the ``meta`` device:
    no memory) must not be far larger than what the file holds."""
    from safetensors import safe_open

    try:
        with safe_open(model_file, framework="pt", device="cpu") as f:
            stored = 0
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= int(d)
                stored += n
    except Exception as exc:  # safetensors raises its own error type for a non-safetensors file
        raise WeightsError(f"{model_file} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    with torch.device("meta"):
        probe = cls(**model_kwargs)
    expected = sum(t.numel() for t in probe.state_dict().values())
    del probe
    # a model much larger than its weights file is never allocated; small differences are left to
    # the strict loader, whose message names the missing or unexpected keys
    if expected > 1.5 * stored + 1_000_000:
        raise WeightsError(f"{model_file}: config.json describes {expected:,} values but the weights file holds "
                           f"{stored:,}; the config and weights do not belong together")
