"""Textual specs of policies: ``name`` or ``name:key=value,key=value``.

Used by the command line (``--policy continuous:max_num_seqs=128``) and by
sweeps; values are converted to the policy dataclass's field types.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from policies.batching import POLICIES, BatchingPolicy, make_policy


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


def parse_policy(spec: str) -> BatchingPolicy:
    """Build a batching policy from ``name[:key=value,...]``.

    Raises:
        ValueError: unknown policy or parameter, or a value of the wrong type.
    """
    name, _, params = spec.partition(":")
    name = name.strip()
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} in {spec!r}; choose one of {sorted(POLICIES)}")
    types = field_types(POLICIES[name])
    raw = parse_params(params, f"policy spec {spec!r}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in types:
            raise ValueError(f"policy {name!r} has no parameter {key!r}; it takes {sorted(types)}")
        values[key] = coerce(value, types[key], f"policy spec {spec!r}, {key}")
    return make_policy(name, **values)
