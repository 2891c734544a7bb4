"""Textual specs of policies: ``name`` or ``name:key=value,key=value``.

Used by the command line (``--policy continuous:max_num_seqs=128``) and by
sweeps; values are converted to the policy dataclass's field types.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from policies.batching import POLICIES, BatchingPolicy
from policies.registry import build
from policies.speculation import SPECULATION_POLICIES, SpeculationPolicy

T = TypeVar("T")


def parse_params(text: str, where: str) -> dict[str, str]:
    """Split ``k=v,k=v`` into a dict.

    Raises:
        ValueError: an item without ``=``, an empty key, or a repeated key, naming ``where``.
    """
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{where}: expected key=value, got {item!r}")
        if key in out:
            raise ValueError(f"{where}: {key!r} given twice")
        out[key] = value.strip()
    return out


def coerce(value: str, annotation: Any, where: str) -> Any:
    """Convert ``value`` to the type named by a dataclass field annotation."""
    hint = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    hint = hint.replace(" ", "")
    optional = "None" in hint
    if optional and value.lower() in ("none", "null", ""):
        return None
    base = hint.replace("|None", "").replace("None|", "")
    try:
        if base == "bool":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base == "int":
            return int(value)
        if base == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a valid {base}") from None
    return value


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> annotation (a string under postponed evaluation) of a dataclass."""
    return {f.name: f.type for f in dataclasses.fields(cls)}


def parse_named(spec: str, kind: str, registry: dict[str, type[T]]) -> T:
    """Build a registered dataclass from ``name[:key=value,...]``, values converted to its field types.

    Raises:
        ValueError: unknown name or parameter, or a value of the wrong type, naming ``spec``.
    """
    name, _, params = spec.partition(":")
    name = name.strip()
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r} in {spec!r}; choose one of {sorted(registry)}")
    types = field_types(registry[name])
    raw = parse_params(params, f"{kind} spec {spec!r}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in types:
            raise ValueError(f"{kind} {name!r} has no parameter {key!r}; it takes {sorted(types)}")
        values[key] = coerce(value, types[key], f"{kind} spec {spec!r}, {key}")
    return build(kind, registry, name, values)


def parse_policy(spec: str) -> BatchingPolicy:
    """Build a batching policy from ``name[:key=value,...]`` (``continuous:max_num_seqs=128``).

    Raises:
        ValueError: unknown policy or parameter, or a value of the wrong type.
    """
    return parse_named(spec, "policy", POLICIES)


def parse_speculation(spec: str | None) -> SpeculationPolicy | None:
    """Build a speculation policy from ``name[:key=value,...]`` (``adaptive:num_draft_tokens=6``);
    None, '' or 'none' mean no speculation.

    Raises:
        ValueError: unknown policy or parameter, or a value of the wrong type.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    return parse_named(spec, "speculation policy", SPECULATION_POLICIES)
