"""Command-line flags derived from frozen config dataclasses (one flag per field)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from policies.spec import coerce

T = TypeVar("T")


def flag_name(prefix: str, field: str) -> str:
    return f"--{prefix}{field}".replace("_", "-")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                       skip: tuple[str, ...] = (), title: str | None = None) -> None:
    """Add ``--field-name`` flags for every field of ``cls`` (except ``skip``).

    Defaults stay unset (None) on the parser so ``from_args`` only overrides
    what the user gave; help texts show the dataclass defaults.
    """
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        group.add_argument(flag_name(prefix, f.name), dest=f"{prefix}{f.name}", default=None, metavar="V",
                           help=f"{cls.__name__}.{f.name} ({f.type}, default {default!r})")


def from_args(cls: type[T], ns: argparse.Namespace, prefix: str = "", **fixed: Any) -> T:
    """Build ``cls`` from the flags ``add_dataclass_args`` added, plus ``fixed`` values.

    Raises:
        ValueError: a value of the wrong type, or one the dataclass rejects.
    """
    values: dict[str, Any] = dict(fixed)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = getattr(ns, f"{prefix}{f.name}", None)
        if raw is not None and f.name not in fixed:
            values[f.name] = coerce(raw, f.type, flag_name(prefix, f.name))
    return cls(**values)


def add_speculation_arg(parser: argparse.ArgumentParser, engine: bool = True) -> None:
    """``--speculation SPEC``: the speculation policy (``policies.speculation``), default none.

    Args:
        engine: the command runs the real engine, whose proposer ``--speculative-method`` names.
    """
    needs = " (needs --speculative-method ngram|draft)" if engine else ""
    parser.add_argument("--speculation", default=None,
                        help="speculative decoding: a speculation policy spec fixed|batch-aware|adaptive"
                             f"[:key=value,...], e.g. adaptive:num_draft_tokens=4{needs}; default: none")
