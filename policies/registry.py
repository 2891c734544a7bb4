"""Building a registered policy (a frozen dataclass) by name and keyword parameters."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def build(kind: str, registry: dict[str, type[T]], name: str, params: dict[str, Any]) -> T:
    """``registry[name](**params)``, with errors that name what is wrong.

    Args:
        kind: what the registry holds, for messages ('policy', 'speculation policy').
        registry: name -> dataclass.
        name: the registered name.
        params: the dataclass's fields.

    Raises:
        ValueError: unknown name or parameter, or an invalid value (from the dataclass).
    """
    try:
        cls = registry[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}") from None
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in params:
        if key not in known:
            raise ValueError(f"{kind} {name!r} has no parameter {key!r}; it takes {sorted(known)}")
    return cls(**params)
