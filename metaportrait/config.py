"""What every config class of the package shares: model configs (:class:`~metaportrait.models.hub.
ModelConfig`) and training configs (``metaportrait/training/*.py``) check their integer fields the
same way and read renamed keys of older JSON files the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigChecks:
    """Mixin of field checks for config dataclasses; each raises ``ValueError`` naming the class, the
    field and the offending value. ``bool`` is not accepted where an int is expected."""

    def check_positive_ints(self, *names: str) -> None:
        """Every field in ``names`` is an ``int`` >= 1."""
        self._check_ints(names, 1, "a positive int")

    def check_non_negative_ints(self, *names: str) -> None:
        """Every field in ``names`` is an ``int`` >= 0."""
        self._check_ints(names, 0, "a non-negative int")

    def _check_ints(self, names: tuple[str, ...], minimum: int, what: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{type(self).__name__}.{name} must be {what}, got {value!r}")


def rename_keys(data: Mapping[str, Any], renamed: Mapping[str, str], where: str = "config") -> dict[str, Any]:
    """``data`` with the old key names of ``renamed`` (``{old: new}``) replaced by the new ones, so
    that config files written before a rename still load. A file that sets both names is refused."""
    out = dict(data)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise ValueError(f"{where}: {old!r} is the old name of {new!r}; set only {new!r}")
            out[new] = out.pop(old)
    return out


__all__ = ["ConfigChecks", "rename_keys"]
