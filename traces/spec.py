"""The trace spec grammar of the CLI (``servegym sim --trace TRACE``).

A spec is either a synthetic workload or a trace file with optional transforms::

    TRACE     := SYNTHETIC | FILE
    SYNTHETIC := "synthetic:" ARRIVAL { "," KEY "=" VALUE }
    ARRIVAL   := "poisson" | "gamma"
    FILE      := PATH [ ":" KEY "=" VALUE { "," KEY "=" VALUE } ]
    LENGTHS   := "fixed:" N | "uniform:" LO ":" HI | "lognormal:" MEAN ":" CV [ ":" MAX ]
               | "empirical:" PATH

Synthetic keys (defaults are chat-like, from the Azure LLM inference 2023 conversation trace):

=========== ============================================ ==========================================
key         meaning                                      default
=========== ============================================ ==========================================
rate        mean request rate, requests/s                20
n           number of requests                           1000
seed        random seed                                  0
cv          gamma inter-arrival coefficient of variation 2 (``gamma`` only; 1 is Poisson)
in          prompt LENGTHS (per-turn message/suffix)     lognormal:1155:0.96:16384
out         output LENGTHS                               lognormal:211:0.77:2048
workload    plain | shared_prefix | multiturn            plain
groups      number of shared prefixes (shared_prefix)    8
prefix_len  tokens per shared prefix (shared_prefix)     512
turns       turns per conversation (multiturn)           4
think_s     mean gap between turns, s (multiturn)        20
=========== ============================================ ==========================================

``lognormal:MEAN:CV[:MAX]`` takes the mean and coefficient of variation of the lengths themselves,
clipped to ``[1, MAX]``; ``empirical:PATH`` resamples the prompt (for ``in``) or output (for ``out``)
lengths of a trace file. See :mod:`traces.synthetic` for the workloads.

File transforms (see :mod:`traces.transforms`; the spec is split at its last ``:`` only when what
follows contains ``=``): ``skip`` (drop the first requests and re-base time to 0), ``n`` (keep the
first n after skip), ``rate_scale`` (arrival times divided by it), ``len_scale`` (lengths multiplied,
min 1; hash block size scaled too), ``max_in``, ``max_out`` (clip), ``zero_length``
(``error | drop | clamp``: rows with 0 tokens, see :mod:`traces.loaders`; default clamp).

Examples::

    synthetic:poisson,rate=20,n=1000,seed=0
    synthetic:gamma,rate=5,cv=4,in=uniform:100:1024,out=fixed:128
    synthetic:poisson,rate=2,workload=multiturn,turns=6,think_s=30
    synthetic:poisson,workload=shared_prefix,groups=4,prefix_len=2048,in=fixed:64
    ../shared/traces/azure_llm_inference_2023_conv.csv:n=2000,rate_scale=2,max_in=8192
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from policies.types import Request
from traces.distributions import EmpiricalLen, FixedLen, LengthDist, LogNormalLen, UniformLen
from traces.loaders import ZERO_LENGTH_MODES, load_file
from traces.synthetic import SyntheticConfig, generate
from traces.transforms import TraceTransforms

SYNTHETIC_PREFIX = "synthetic:"
_COMMON_KEYS = ("rate", "n", "seed", "in", "out", "workload")
_WORKLOAD_KEYS = {"plain": (), "shared_prefix": ("groups", "prefix_len"), "multiturn": ("turns", "think_s")}
_TRANSFORM_KEYS = ("skip", "n", "rate_scale", "len_scale", "max_in", "max_out", "zero_length")


class TraceSpecError(ValueError):
    """A trace spec is malformed; the message names the bad key/value and the full spec."""


@dataclass(frozen=True)
class TraceSpec:
    """A parsed trace spec: a synthetic config, or a file with transforms.

    Args:
        text: the spec as written.
        synthetic: the synthetic workload, or None for a file.
        path: the trace file, or None for a synthetic workload.
        transforms: transforms of a file's requests.
        zero_length: how a file's rows of 0 tokens are handled (``error | drop | clamp``).
    """

    text: str
    synthetic: SyntheticConfig | None = None
    path: str | None = None
    transforms: TraceTransforms = field(default_factory=TraceTransforms)
    zero_length: str = "clamp"

    def __post_init__(self) -> None:
        if (self.synthetic is None) == (self.path is None):
            raise ValueError(f"trace spec {self.text!r}: give exactly one of synthetic and path")
        if self.synthetic is not None and not self.transforms.is_identity:
            raise ValueError(f"trace spec {self.text!r}: transforms apply only to trace files")
        if self.zero_length not in ZERO_LENGTH_MODES:
            raise ValueError(f"trace spec {self.text!r}: zero_length must be one of {ZERO_LENGTH_MODES}")

    @property
    def label(self) -> str:
        """Short name for tables and plots, e.g. ``poisson-r20`` or ``azure_conv-n2000-rate_scale2``."""
        if self.synthetic is not None:
            s = self.synthetic
            label = f"{s.arrival}-r{s.rate:g}"
            if s.arrival == "gamma":
                label += f"-cv{s.cv:g}"
            return label if s.workload == "plain" else f"{label}-{s.workload}"
        label = Path(str(self.path)).stem
        default = TraceTransforms()
        for f in fields(TraceTransforms):
            value = getattr(self.transforms, f.name)
            if value != getattr(default, f.name):
                label += f"-{f.name}{value:g}" if isinstance(value, float) else f"-{f.name}{value}"
        return label


def load_trace(spec: str | TraceSpec) -> list[Request]:
    """Load the requests a spec describes.

    Args:
        spec: a spec string (see the module docstring) or a parsed :class:`TraceSpec`.

    Returns:
        The requests sorted by arrival.
    """
    if isinstance(spec, str):
        spec = parse_trace_spec(spec)
    if spec.synthetic is not None:
        return generate(spec.synthetic)
    return spec.transforms.apply(load_file(str(spec.path), spec.zero_length))  # type: ignore[arg-type]


def parse_trace_spec(spec: str) -> TraceSpec:
    """Parse and validate a trace spec.

    Raises:
        TraceSpecError: the message names the bad key or value and quotes the full spec.
    """
    text = spec.strip()
    if not text:
        raise TraceSpecError("empty trace spec: expected 'synthetic:<arrival>,...' or a trace file path")
    try:
        if text.startswith(SYNTHETIC_PREFIX):
            return _parse_synthetic(text)
        return _parse_file(text)
    except TraceSpecError:
        raise
    except ValueError as e:
        raise TraceSpecError(f"trace spec {spec!r}: {e}") from None


def _fail(spec: str, message: str) -> TraceSpecError:
    return TraceSpecError(f"trace spec {spec!r}: {message}")


def _key_values(spec: str, items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise _fail(spec, f"{item!r} is not key=value")
        if key in out:
            raise _fail(spec, f"key {key!r} given twice")
        out[key] = value
    return out


def _number(spec: str, key: str, value: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise _fail(spec, f"{key}={value!r}: expected {what}") from None


def _check_file(spec: str, what: str, path: str) -> None:
    if not os.path.isfile(path):
        raise _fail(spec, f"{what} {path!r} is not a file")


def _parse_lengths(spec: str, key: str, value: str) -> LengthDist:
    kind, _, rest = value.partition(":")
    args = rest.split(":") if rest else []
    usage = "fixed:N, uniform:LO:HI, lognormal:MEAN:CV[:MAX] or empirical:PATH"
    if kind == "empirical" and rest:
        _check_file(spec, f"{key}=empirical: file", rest)
        return EmpiricalLen(rest, "prompt" if key == "in" else "output")
    arity = {"fixed": (1, 1), "uniform": (2, 2), "lognormal": (2, 3)}.get(kind)
    if arity is None or not (arity[0] <= len(args) <= arity[1]):
        raise _fail(spec, f"{key}={value!r}: expected {usage}")
    try:
        if kind == "fixed":
            return FixedLen(int(args[0]))
        if kind == "uniform":
            return UniformLen(int(args[0]), int(args[1]))
        return LogNormalLen(float(args[0]), float(args[1]), int(args[2]) if len(args) == 3 else None)
    except ValueError as e:
        raise _fail(spec, f"{key}={value!r}: {e}") from None


def _parse_synthetic(spec: str) -> TraceSpec:
    arrival, *items = spec[len(SYNTHETIC_PREFIX) :].split(",")
    arrival = arrival.strip()
    if arrival not in ("poisson", "gamma"):
        raise _fail(spec, f"arrival is {arrival!r}, expected 'poisson' or 'gamma'")
    kv = _key_values(spec, items)
    workload = kv.get("workload", "plain")
    if workload not in _WORKLOAD_KEYS:
        raise _fail(spec, f"workload={workload!r}: expected one of {list(_WORKLOAD_KEYS)}")
    allowed = _COMMON_KEYS + _WORKLOAD_KEYS[workload] + (("cv",) if arrival == "gamma" else ())
    for key in kv:
        if key not in allowed:
            raise _fail(spec, f"unknown key {key!r} for a {arrival} {workload} workload (allowed: {allowed})")
    args: dict[str, Any] = {"arrival": arrival, "workload": workload}
    for key, value in kv.items():
        if key in ("n", "seed", "groups", "prefix_len", "turns"):
            args[key] = _number(spec, key, value, int, "an integer")
        elif key in ("rate", "cv", "think_s"):
            args[key] = _number(spec, key, value, float, "a number")
        elif key in ("in", "out"):
            args[f"{key}_len"] = _parse_lengths(spec, key, value)
    return TraceSpec(text=spec, synthetic=SyntheticConfig(**args))


def _parse_file(spec: str) -> TraceSpec:
    path, options = spec, ""
    colon = spec.rfind(":")
    if colon >= 0 and "=" in spec[colon + 1 :]:
        path, options = spec[:colon], spec[colon + 1 :]
    _check_file(spec, "trace file", path)
    kv = _key_values(spec, options.split(",")) if options else {}
    args: dict[str, Any] = {}
    zero_length = kv.pop("zero_length", "clamp")
    if zero_length not in ZERO_LENGTH_MODES:
        raise _fail(spec, f"zero_length={zero_length!r}: expected one of {list(ZERO_LENGTH_MODES)}")
    for key, value in kv.items():
        if key in ("skip", "n", "max_in", "max_out"):
            args[key] = _number(spec, key, value, int, "an integer")
        elif key in ("rate_scale", "len_scale"):
            args[key] = _number(spec, key, value, float, "a number")
        else:
            raise _fail(spec, f"unknown key {key!r} for a trace file (allowed: {_TRANSFORM_KEYS})")
    return TraceSpec(text=spec, path=path, transforms=TraceTransforms(**args), zero_length=zero_length)
