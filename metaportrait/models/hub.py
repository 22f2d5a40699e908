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
class ModelConfig:
    """Base of every model config: frozen, JSON-serialisable, nested configs allowed.

    Subclasses are ``@dataclass(frozen=True)`` and validate their values in ``validate()``
    (raise ``ValueError`` showing the offending value).
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
        """Load config + safetensors weights from a local folder or a Hub repo id; strict by default."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, strict=strict, **kwargs)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise WeightsError(f"Could not load {cls.__name__} from {pretrained_model_name_or_path!s}: {exc}") from exc

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
        model = cls(**model_kwargs)
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
        return cls._load_as_safetensor(model, model_file, map_location, strict)
