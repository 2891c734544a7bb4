"""Loaders for public LLM request traces, the format detected from the file's content.

Supported formats (the extension is ignored; the first non-blank line decides):

- **Azure LLM inference trace** (2023/2024) CSV, header ``TIMESTAMP,ContextTokens,GeneratedTokens``;
  ``TIMESTAMP`` is a wall-clock date-time (``2023-11-16 18:15:46.6805900``). Arrival = seconds since
  the first row; a row earlier than the first row is an error.
- **BurstGPT** CSV with columns ``Timestamp`` (seconds from the trace start), ``Request tokens`` and
  ``Response tokens`` (``Model``, ``Total tokens`` and ``Log Type`` may be present and are ignored).
  Arrival = ``Timestamp``.
- **Mooncake** JSONL, one object per line with ``timestamp`` (ms from the start), ``input_length``,
  ``output_length`` and ``hash_ids`` (one content id per 512-token prompt block; equal ids mean
  identical, reusable prefix blocks). Arrival = ``timestamp / 1000``; the prompt is described by
  ``block_hashes=hash_ids`` with ``hash_block_size=512``.

Every request gets the id ``str(i)``, ``i`` its 0-based data row in the file; the returned list is
sorted by arrival (stable, so rows with equal arrival keep file order). Blank lines carry no data and
are ignored. Anything else malformed raises :class:`TraceFormatError` naming the file, the 1-based
line number and the field.

Rows with 0 prompt or 0 output tokens occur in real traces, but a ``Request`` needs at least one of
each. ``zero_length`` says what to do with them: ``"error"`` raises, ``"drop"`` removes them,
``"clamp"`` (the default) raises the zero lengths to 1; for ``"drop"`` and ``"clamp"`` a warning
names the file and the number of affected rows.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from policies.types import Request

ZeroLength = Literal["error", "drop", "clamp"]
ZERO_LENGTH_MODES: tuple[str, ...] = ("error", "drop", "clamp")
MOONCAKE_BLOCK_SIZE = 512

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
_INT_PATTERN = r"\s*\d{1,15}\s*"  # 15 digits: far above any token count, safely inside int64


class TraceFormatError(ValueError):
    """A trace file is malformed; the message names the file, the line and the field."""


@dataclass(frozen=True)
class _Rows:
    """Parsed columns of a trace, in file order (one entry per data row)."""

    arrival: np.ndarray  # float64 seconds
    prompt: np.ndarray  # int64
    output: np.ndarray  # int64
    lines: np.ndarray  # int64, 1-based line number of each row in the file
    fields: tuple[str, str]  # names of the prompt and output length fields, for messages
    hashes: list[tuple[int, ...]] | None = None  # Mooncake block ids per row


def detect_format(path: str | Path) -> str:
    """Name the trace format of a file from its first non-blank line.

    Returns:
        ``"azure"``, ``"burstgpt"`` or ``"mooncake"``.

    Raises:
        TraceFormatError: the file is empty, or its first line matches no known format
            (or matches one but lacks some of its columns).
    """
    return _detect(path)[0]


def _detect(path: str | Path) -> tuple[str, int]:
    """The format and the 1-based line number of the first non-blank line (the CSV header)."""
    name = str(path)
    first, lineno = "", 0
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):  # noqa: B007 (lineno is used after the loop)
            if line.strip():
                first = line.strip()
                break
    if not first:
        raise TraceFormatError(f"{name}: the file is empty")
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except json.JSONDecodeError as e:
            raise TraceFormatError(f"{name} line {lineno}: not valid JSON ({e.msg})") from None
        missing = [k for k in MOONCAKE_KEYS if k not in obj]
        if missing:
            raise TraceFormatError(
                f"{name} line {lineno}: a JSON line is read as a Mooncake trace, but it lacks "
                f"key(s) {missing} (found {sorted(obj)})"
            )
        return "mooncake", lineno
    columns = [c.strip().strip('"') for c in first.split(",")]
    for fmt, wanted in (("azure", AZURE_COLUMNS), ("burstgpt", BURSTGPT_COLUMNS)):
        missing = [c for c in wanted if c not in columns]
        if not missing:
            return fmt, lineno
        if len(missing) < len(wanted):
            raise TraceFormatError(
                f"{name} line {lineno}: header looks like a {fmt} trace but lacks column(s) "
                f"{missing} (found {columns})"
            )
    raise TraceFormatError(
        f"{name} line {lineno}: unknown trace format, first line is {first[:80]!r}; expected an "
        f"Azure CSV header {','.join(AZURE_COLUMNS)}, a BurstGPT CSV header with columns "
        f"{list(BURSTGPT_COLUMNS)}, or Mooncake JSONL objects with keys {list(MOONCAKE_KEYS)}"
    )


def load_file(path: str | Path, zero_length: ZeroLength = "clamp") -> list[Request]:
    """Load a trace file of any supported format (see the module docstring).

    Args:
        path: the trace file.
        zero_length: what to do with rows of 0 prompt or 0 output tokens: ``"error"``,
            ``"drop"`` or ``"clamp"`` (to 1); the latter two warn with the count.

    Returns:
        The requests, sorted by arrival (stable).

    Raises:
        TraceFormatError: the file is malformed (the message names file, line and field).
        ValueError: ``zero_length`` is not a known mode.
    """
    if zero_length not in ZERO_LENGTH_MODES:
        raise ValueError(f"zero_length must be one of {ZERO_LENGTH_MODES}, got {zero_length!r}")
    fmt, header_line = _detect(path)
    name = str(path)
    if fmt == "mooncake":
        rows = _read_mooncake(path, name)
    else:
        df, lines = _read_csv(path, name, header_line)
        rows = _read_azure(df, lines, name) if fmt == "azure" else _read_burstgpt(df, lines, name)
    return _build_requests(rows, name, zero_length)


def _read_csv(path: str | Path, name: str, header_line: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a CSV as strings; returns the non-blank rows and their 1-based line numbers."""
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            skiprows=header_line - 1,  # blank lines before the header
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise TraceFormatError(f"{name}: cannot parse as CSV: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    # With skip_blank_lines=False, data row i sits on file line header_line + 1 + i.
    lines = np.arange(len(df), dtype=np.int64) + header_line + 1
    blank = (df == "").all(axis=1).to_numpy()
    if blank.any():
        df, lines = df.loc[~blank].reset_index(drop=True), lines[~blank]
    if len(df) == 0:
        raise TraceFormatError(f"{name}: no requests (the file has a header but no data rows)")
    return df, lines


def _int_column(df: pd.DataFrame, col: str, lines: np.ndarray, name: str) -> np.ndarray:
    """A column of integers >= 0, or an error naming the first bad row."""
    s = df[col]
    ok = s.str.fullmatch(_INT_PATTERN).to_numpy(dtype=bool)
    if not ok.all():
        i = int(np.argmin(ok))
        raise TraceFormatError(f"{name} line {lines[i]}: {col} is {s.iloc[i]!r}, expected an integer >= 0")
    return s.to_numpy(dtype=str).astype(np.int64)


def _read_azure(df: pd.DataFrame, lines: np.ndarray, name: str) -> _Rows:
    raw = df["TIMESTAMP"].str.strip()
    ts = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceFormatError(
            f"{name} line {lines[i]}: TIMESTAMP is {raw.iloc[i]!r}, expected a date-time like "
            f"'2023-11-16 18:15:46.6805900'"
        )
    arrival = (ts - ts.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
    if (arrival < 0).any():
        i = int(np.argmax(arrival < 0))
        raise TraceFormatError(
            f"{name} line {lines[i]}: TIMESTAMP {raw.iloc[i]!r} is earlier than the first row's "
            f"{raw.iloc[0]!r}; arrival times are measured from the first row"
        )
    prompt = _int_column(df, "ContextTokens", lines, name)
    output = _int_column(df, "GeneratedTokens", lines, name)
    return _Rows(arrival, prompt, output, lines, ("ContextTokens", "GeneratedTokens"))


def _read_burstgpt(df: pd.DataFrame, lines: np.ndarray, name: str) -> _Rows:
    raw = df["Timestamp"]
    ts = pd.to_numeric(raw.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(ts) & (ts >= 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceFormatError(
            f"{name} line {lines[i]}: Timestamp is {raw.iloc[i]!r}, expected a number of seconds >= 0"
        )
    prompt = _int_column(df, "Request tokens", lines, name)
    output = _int_column(df, "Response tokens", lines, name)
    return _Rows(ts, prompt, output, lines, ("Request tokens", "Response tokens"))


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_mooncake(path: str | Path, name: str) -> _Rows:
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    lines: list[int] = []
    hashes: list[tuple[int, ...]] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{name} line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceFormatError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise TraceFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in MOONCAKE_KEYS if k not in obj]
            if missing:
                raise TraceFormatError(f"{where}: missing key(s) {missing}")
            ts = obj["timestamp"]
            if not ((_is_int(ts) or isinstance(ts, float)) and math.isfinite(ts) and ts >= 0):
                raise TraceFormatError(f"{where}: timestamp is {ts!r}, expected a number of ms >= 0")
            for key in ("input_length", "output_length"):
                v = obj[key]
                if not (_is_int(v) and v >= 0):
                    raise TraceFormatError(f"{where}: {key} is {v!r}, expected an integer >= 0")
            ids = obj["hash_ids"]
            if not (isinstance(ids, list) and all(_is_int(h) for h in ids)):
                raise TraceFormatError(f"{where}: hash_ids is {str(ids)[:60]}, expected a list of integers")
            if len(ids) * MOONCAKE_BLOCK_SIZE < obj["input_length"]:
                raise TraceFormatError(
                    f"{where}: hash_ids has {len(ids)} ids of {MOONCAKE_BLOCK_SIZE} tokens, which do not "
                    f"cover input_length {obj['input_length']}"
                )
            arrival.append(ts / 1000.0)
            prompt.append(obj["input_length"])
            output.append(obj["output_length"])
            lines.append(lineno)
            hashes.append(tuple(ids))
    if not lines:
        raise TraceFormatError(f"{name}: no requests")
    return _Rows(
        np.asarray(arrival, dtype=np.float64),
        np.asarray(prompt, dtype=np.int64),
        np.asarray(output, dtype=np.int64),
        np.asarray(lines, dtype=np.int64),
        ("input_length", "output_length"),
        hashes,
    )


def _build_requests(rows: _Rows, name: str, zero_length: str) -> list[Request]:
    """Apply the zero-length policy, sort by arrival (stable) and build the Requests."""
    prompt, output = rows.prompt, rows.output
    ids = np.arange(len(prompt))
    zero = (prompt == 0) | (output == 0)
    count = int(zero.sum())
    if count and zero_length == "error":
        i = int(np.argmax(zero))
        field = rows.fields[0] if prompt[i] == 0 else rows.fields[1]
        raise TraceFormatError(
            f"{name} line {rows.lines[i]}: {field} is 0, but a request needs >= 1 token "
            f"(load with zero_length='drop' or 'clamp' to accept such rows)"
        )
    arrival = rows.arrival
    if count and zero_length == "drop":
        keep = ~zero
        ids, arrival, prompt, output = ids[keep], arrival[keep], prompt[keep], output[keep]
    elif count:
        prompt, output = np.maximum(prompt, 1), np.maximum(output, 1)
    if count:
        action = "dropped" if zero_length == "drop" else "clamped to 1"
        warnings.warn(
            f"{name}: {count} of {len(rows.prompt)} rows have 0 prompt or 0 output tokens; "
            f"{action} (zero_length={zero_length!r})",
            UserWarning,
            stacklevel=3,
        )
    order = np.argsort(arrival, kind="stable")
    id_list, arr, p_list, o_list = (
        ids[order].tolist(),
        arrival[order].tolist(),
        prompt[order].tolist(),
        output[order].tolist(),
    )
    if rows.hashes is None:
        return [Request(str(i), a, p, o) for i, a, p, o in zip(id_list, arr, p_list, o_list, strict=True)]
    out = []
    for i, a, p, o in zip(id_list, arr, p_list, o_list, strict=True):
        h = rows.hashes[i]
        # A clamped empty prompt has no block ids; it is then a length-only request.
        size = MOONCAKE_BLOCK_SIZE if h else 0
        out.append(Request(str(i), a, p, o, block_hashes=h or None, hash_block_size=size))
    return out
