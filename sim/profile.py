"""Profile files: measured (or roofline-derived) step timings of one model on one GPU.

Format (JSON, ``"format": "servegym-profile/1"``)::

    {
      "format": "servegym-profile/1",
      "meta": {"model": "llama-3.2-1b", "gpu": "h100", "dtype": "bf16", "kv_cache_dtype": "bf16",
               "quantization": null, "source": "roofline" | "measured",
               "command": "<command line that wrote it>", "created": "<ISO 8601 UTC>", ...},
      "step_overhead_s": 0.0,          # fixed cost of every non-empty step (launches, host work)
      "kv_bytes_per_token": 32768,     # KV cache bytes per token over all layers (for swaps)
      "swap_bytes_per_s": 5.5e10,      # host<->device copy rate of swapped KV blocks
      "tables": {                      # 1-D tables: strictly increasing x, time_s >= 0 (seconds)
        "dense":             {"x": [...], "time_s": [...]},  # x: tokens computed in the step
        "decode_attention":  {"x": [...], "time_s": [...]},  # x: total context tokens the decodes read
        "prefill_attention": {"x": [...], "time_s": [...]},  # x: causal (query, key) pairs of the chunks
        "lm_head":           {"x": [...], "time_s": [...]},  # optional; x: sampling positions
        "mixed_dense":       {"x": [...], "time_s": [...]},  # optional; x: tokens of a step with a prefill
        "mixed_decode":      {"x": [...], "time_s": [...]},  # optional; x: decodes in a step with a prefill
        "draft_attention":   {"x": [...], "time_s": [...]},  # optional; x: context tokens draft rows read
        "prefill_context":   {"x": [...], "time_s": [...]}   # optional; x: tokens per chunk; s per cached token
      },
      "speculative_overhead_s": {"step": 0.0, "per_decode": 0.0, "per_draft": 0.0},  # with draft_attention
      "host_tail_s": {"step": 0.0, "per_prefill_token": 0.0, "per_decode": 0.0},     # optional
      "decode_steps": {"batch": [1, 2, ...],         # optional: measured decode-only steps, per batch size
                       "ctx": [[32, 512, ...], ...], #   per-sequence contexts (strictly increasing)
                       "time_s": [[...], ...]},      #   whole-step seconds at those contexts
      "decode_steps_cold": {...},      # optional, as decode_steps: the steps no decode lookahead serves
      "graph_batch_sizes": [1, 2, 4, ...],  # optional: decode batch sizes that run as CUDA graphs
      "graph_token_sizes": [16, 32, ...]    # optional: token counts of mixed steps run as CUDA graphs
    }

``dense`` is the time of everything but attention, summed over all layers: the
embedding, norms, projections, MLP, KV writes, and the lm_head too when the
profile has no ``lm_head`` table. Extra ``meta`` keys are allowed (e.g. how the
tables were measured). An engine runs three kinds of steps: decode-only steps of at most
``max(graph_batch_sizes)`` rows replay a CUDA graph captured for the next size up
(padded rows cost like real ones), larger ones the largest graph on chunks of their rows;
steps holding a prefill chunk of at most ``max(graph_token_sizes)`` tokens replay a graph
captured for the next token count up; every other step runs eagerly, with its own launch
costs. ``mixed_dense`` prices the non-attention work of steps holding a prefill; without it
(or without ``graph_batch_sizes``) ``dense`` prices every step. ``mixed_decode`` is what decodes
cost in a step holding a prefill beyond their attention and the step's padded token count (their
host-side staging and bookkeeping, their LM-head rows). ``draft_attention`` and
``speculative_overhead_s`` (both or neither) price steps that verify draft tokens: the draft rows
of a decode read the blocks its own row reads, at the same time, so their attention is a table of
their own; the speculative path's extra work (proposals, row staging, verification) is
``step + per_decode * decodes + per_draft * drafts``. ``prefill_context`` gives, by a chunk's tokens,
the seconds each cached prefix token it reads adds (its ``time_s`` is per token); with it
``prefill_attention`` prices the pairs within the chunks only. ``host_tail_s`` is the part of a step's
time the host spends after its tokens are out (the scheduler's bookkeeping: committing the
prompt blocks a chunk filled, booking the new tokens), ``step + per_prefill_token * prefill
tokens + per_decode * decodes``; the tables include it, and a simulator emits a step's tokens
that much before the step ends (none when absent). ``decode_steps`` holds whole decode-only steps
(every term above included) by batch size and context per sequence; with it the cost model prices
plain decode-only steps from it (``sim/decode_surface.py``) instead of the tables. A profile calibrated
with the engine's decode lookahead also holds ``decode_steps_cold``, the same steps timed with no
looked-ahead step serving them (``sim/lookahead.py`` says which steps of a run those are); ``decode_steps``
then holds the served ones. ``PiecewiseLinear``
evaluates a table; its last segment must not decrease (so extrapolation never predicts less time for more work).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROFILE_FORMAT = "servegym-profile/1"
REQUIRED_TABLES = ("dense", "decode_attention", "prefill_attention")
OPTIONAL_TABLES = ("lm_head", "mixed_dense", "mixed_decode", "draft_attention", "prefill_context")
SPEC_OVERHEAD_KEYS = ("step", "per_decode", "per_draft")
HOST_TAIL_KEYS = ("step", "per_prefill_token", "per_decode")
REQUIRED_META = ("model", "gpu", "dtype", "kv_cache_dtype", "quantization", "source", "command", "created")
SOURCES = ("roofline", "measured")


class ProfileError(ValueError):
    """A malformed profile; the message names the file and the field."""


class PiecewiseLinear:
    """``y(x)`` through the points ``(xs[i], ys[i])``, linear between them.

    Below ``xs[0]`` the value is ``ys[0]`` (a kernel's minimum time); beyond
    ``xs[-1]`` the last segment is extended linearly.
    """

    __slots__ = ("xs", "ys", "slopes", "_last")

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        if len(xs) != len(ys) or len(xs) < 2:
            raise ValueError(f"need >= 2 points and equal lengths, got {len(xs)} x and {len(ys)} y")
        if any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
            raise ValueError("x must be strictly increasing")
        self.xs = [float(v) for v in xs]
        self.ys = [float(v) for v in ys]
        self.slopes = [(y1 - y0) / (x1 - x0) for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False)]
        self._last = len(xs) - 1

    def __call__(self, x: float) -> float:
        i = bisect_right(self.xs, x)
        if i == 0:
            return self.ys[0]
        k = i - 1 if i <= self._last else self._last - 1  # segment index
        return self.ys[k] + self.slopes[k] * (x - self.xs[k])


def _number(value: Any, source: str, field: str, *, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ProfileError(f"{source}: field '{field}' must be a finite number {bound}, got {value!r}")
    return float(value)


def _coefficients(value: Any, keys: tuple[str, ...], source: str, field: str) -> None:
    """An optional object of exactly ``keys``, each a finite number >= 0."""
    if value is None:
        return
    if not isinstance(value, dict) or sorted(value) != sorted(keys):
        raise ProfileError(f"{source}: field '{field}' must be an object with exactly the keys {list(keys)}, "
                           f"got {value!r}")
    for key in keys:
        _number(value[key], source, f"{field}.{key}")


def _table(data: Any, source: str, field: str) -> PiecewiseLinear:
    if not isinstance(data, dict) or "x" not in data or "time_s" not in data:
        raise ProfileError(f"{source}: field '{field}' must be an object with lists 'x' and 'time_s'")
    xs, ts = data["x"], data["time_s"]
    if not isinstance(xs, list) or not isinstance(ts, list) or len(xs) != len(ts) or len(xs) < 2:
        raise ProfileError(f"{source}: field '{field}': 'x' and 'time_s' must be lists of equal length >= 2")
    xs = [_number(v, source, f"{field}.x[{i}]") for i, v in enumerate(xs)]
    ts = [_number(v, source, f"{field}.time_s[{i}]") for i, v in enumerate(ts)]
    for i in range(1, len(xs)):
        if xs[i] <= xs[i - 1]:
            raise ProfileError(f"{source}: field '{field}.x' must be strictly increasing: "
                               f"x[{i}]={xs[i]} <= x[{i - 1}]={xs[i - 1]}")
    if ts[-1] < ts[-2]:
        raise ProfileError(f"{source}: field '{field}.time_s': the last segment decreases ({ts[-2]} -> "
                           f"{ts[-1]}), so linear extrapolation would predict less time for more work")
    return PiecewiseLinear(xs, ts)


def validate_profile(data: Any, source: str = "<profile>") -> dict[str, PiecewiseLinear]:
    """Check a parsed profile; return its tables as ``PiecewiseLinear`` by name.

    Raises:
        ProfileError: naming ``source`` (the file) and the offending field.
    """
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a JSON object")
    if data.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{source}: field 'format' must be {PROFILE_FORMAT!r}, got {data.get('format')!r}")
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise ProfileError(f"{source}: field 'meta' must be an object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ProfileError(f"{source}: field 'meta' is missing {missing}")
    if meta["source"] not in SOURCES:
        raise ProfileError(f"{source}: field 'meta.source' must be one of {SOURCES}, got {meta['source']!r}")
    _number(data.get("step_overhead_s"), source, "step_overhead_s")
    _number(data.get("kv_bytes_per_token"), source, "kv_bytes_per_token", positive=True)
    _number(data.get("swap_bytes_per_s"), source, "swap_bytes_per_s", positive=True)
    tables = data.get("tables")
    if not isinstance(tables, dict):
        raise ProfileError(f"{source}: field 'tables' must be an object")
    unknown = sorted(set(tables) - set(REQUIRED_TABLES) - set(OPTIONAL_TABLES))
    if unknown:
        known = [*REQUIRED_TABLES, *OPTIONAL_TABLES]
        raise ProfileError(f"{source}: unknown tables {unknown}; known: {known}")
    for field in ("graph_batch_sizes", "graph_token_sizes"):
        sizes = data.get(field)
        if sizes is not None and (not isinstance(sizes, list) or not sizes
                                  or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in sizes)
                                  or sizes != sorted(set(sizes))):
            raise ProfileError(f"{source}: field '{field}' must be a non-empty strictly increasing list of "
                               f"positive integers, got {sizes!r}")
    rows = data.get("verify_group_rows")
    if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
        raise ProfileError(f"{source}: field 'verify_group_rows' must be a positive integer, got {rows!r}")
    spec = data.get("speculative_overhead_s")
    if (spec is None) != ("draft_attention" not in tables):
        raise ProfileError(f"{source}: fields 'speculative_overhead_s' and 'tables.draft_attention' must be given "
                           "together (both price steps that verify draft tokens)")
    for field, keys in (("speculative_overhead_s", SPEC_OVERHEAD_KEYS), ("host_tail_s", HOST_TAIL_KEYS)):
        _coefficients(data.get(field), keys, source, field)
    decode_steps_rows(data.get("decode_steps"), source)
    cold = decode_steps_rows(data.get("decode_steps_cold"), source, "decode_steps_cold")
    if cold is not None and "decode_steps" not in data:
        raise ProfileError(f"{source}: field 'decode_steps_cold' needs 'decode_steps' (the steps a lookahead serves)")
    out: dict[str, PiecewiseLinear] = {}
    for name in (*REQUIRED_TABLES, *OPTIONAL_TABLES):
        if name not in tables:
            if name in REQUIRED_TABLES:
                raise ProfileError(f"{source}: field 'tables.{name}' is missing")
            continue
        out[name] = _table(tables[name], source, f"tables.{name}")
    return out


def decode_steps_rows(data: Any, source: str = "<profile>", field: str = "decode_steps",
                      ) -> tuple[list[int], list[PiecewiseLinear]] | None:
    """The batch sizes of a profile's ``decode_steps`` (or ``decode_steps_cold``: ``field``) and one table of
    seconds against per-sequence context per size (None when the field is absent).

    Raises:
        ProfileError: naming ``source`` and the offending entry.
    """
    if data is None:
        return None
    if not isinstance(data, dict) or sorted(data) != ["batch", "ctx", "time_s"]:
        raise ProfileError(f"{source}: field '{field}' must be an object with exactly the lists 'batch', 'ctx' "
                           "and 'time_s'")
    batches, ctxs, times = data["batch"], data["ctx"], data["time_s"]
    if (not isinstance(batches, list) or not batches or not isinstance(ctxs, list) or not isinstance(times, list)
            or not len(batches) == len(ctxs) == len(times)):
        raise ProfileError(f"{source}: field '{field}': 'batch', 'ctx' and 'time_s' must be non-empty lists of "
                           f"equal length, got {len(batches) if isinstance(batches, list) else batches!r} sizes")
    if any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batches) or batches != sorted(set(batches)):
        raise ProfileError(f"{source}: field '{field}.batch' must be strictly increasing positive integers, "
                           f"got {batches!r}")
    rows = [_table({"x": c, "time_s": t}, source, f"{field}[batch={b}]")
            for b, c, t in zip(batches, ctxs, times, strict=True)]
    return list(batches), rows


def read_profile(path: str | Path) -> dict[str, Any]:
    """Read and validate a profile file; returns the parsed JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ProfileError(f"{path}: not valid JSON ({err})") from None
    validate_profile(data, str(path))
    return data


def write_profile(profile: dict[str, Any], path: str | Path) -> Path:
    """Validate ``profile`` and write it as indented JSON; returns the path."""
    path = Path(path)
    validate_profile(profile, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=1) + "\n")
    return path
