"""Choose, per kind of linear layer, between ``F.linear`` and launch shapes of ``kernels.gemv_bf16`` for
decode-sized inputs.

Each candidate is timed the way a captured decode step runs it: a CUDA graph of one pass over every
layer's weight of that kind (no launch overhead; the weights, read one after the other, do not stay in
L2), at one input row. The fastest GEMV config (see ``kernels.gemv_bf16.candidate_configs``) is set as
``Linear.gemv`` where it beats ``F.linear`` (else None). It is then timed against ``F.linear`` at each of
``GEMV_ROW_COUNTS`` (2 and 4 rows, the small decode graphs), and ``Linear.gemv_rows`` keeps the rows up
to the first count where it lost: a kernel fastest at one row can be far slower than cuBLAS at four
(on an H100 the 1B decode step of 4 sequences took 2.0 ms on the GEMV path against 1.5 ms for 8 on
cuBLAS). Every candidate is first checked against
``F.linear``; one that fails or disagrees is not chosen. CUDA only (the timer and kernels can be
replaced, which the CPU tests do). ``engine.fused_choice`` then times the fused variants the same way.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine.linear import GEMV_ROW_COUNTS, Linear

if TYPE_CHECKING:
    from kernels.gemv_bf16 import GemvConfig

GEMV_DTYPES = (torch.bfloat16, torch.float16)
#: ``timer(label, fn) -> seconds`` of one call of ``fn`` (which runs a candidate over every layer of a kind).
Timer = Callable[[str, Callable[[], object]], float]


@dataclass(frozen=True)
class GemvKernels:
    """The kernels ``choose_gemv`` times: ``gemv(x, w, config=...)`` and ``candidates(n, k, device)``."""

    gemv: Callable[..., torch.Tensor]
    candidates: Callable[[int, int, torch.device], Sequence[GemvConfig]]


@dataclass(frozen=True)
class GemvTiming:
    """The measured choice for one kind of linear layer (times in microseconds per layer call, in a graph).

    Args:
        kind: layer kind ('qkv', 'o', 'gate_up', 'down', 'lm_head').
        shape: weight shape ``(N, K)``.
        linear_us: ``F.linear``.
        gemv_us: the fastest ``gemv_bf16`` config (NaN when every candidate failed).
        chosen: whether the layers of this kind now use ``gemv_bf16`` (with ``config``).
        note: why candidates were not timed or failed, if any were.
        config: the fastest ``gemv_bf16`` config (chosen or not).
        candidates: ``(config label, us)`` of every ``gemv_bf16`` candidate, NaN where it failed.
        rows: the most input rows the chosen kernel takes (``Linear.gemv_rows``; 0 when not chosen).
        by_rows: ``(rows, F.linear us, gemv us)`` at each row count timed above one.
    """

    kind: str
    shape: tuple[int, int]
    linear_us: float
    gemv_us: float
    chosen: bool
    note: str = ""
    config: GemvConfig | None = None
    candidates: tuple[tuple[str, float], ...] = ()
    rows: int = 0
    by_rows: tuple[tuple[int, float, float], ...] = ()

    def summary(self) -> list[str]:
        """Log lines: the choice and every candidate's time."""
        label = self.config.label if self.config is not None else "-"
        verdict = f"gemv {label}" if self.chosen else "F.linear"
        if self.chosen:
            verdict += f" up to {self.rows} rows"
        lines = [f"{self.kind:8s} {self.shape}: F.linear {self.linear_us:.1f} us, gemv_bf16 "
                 f"{self.gemv_us:.1f} us [{label}] -> {verdict} {self.note}".rstrip()]
        if self.candidates:
            lines.append("  candidates: " + times_text(self.candidates))
        if self.by_rows:
            lines.append("  by rows (F.linear / gemv): " + rows_text(self.by_rows))
        return lines


def times_text(pairs: tuple[tuple[str, float], ...]) -> str:
    return ", ".join(f"{label} {us:.1f}" for label, us in pairs)


def rows_text(by_rows: tuple[tuple[int, float, float], ...]) -> str:
    return ", ".join(f"{m}: {a:.1f} / {b:.1f} us" for m, a, b in by_rows)


def widest_rows(time_pair: Callable[[int], tuple[float, float]]) -> tuple[int, tuple[tuple[int, float, float], ...]]:
    """The most rows a kernel that won at one row keeps winning at, over ``GEMV_ROW_COUNTS`` in order.

    Args:
        time_pair: rows -> (reference seconds, kernel seconds) at that many input rows.

    Returns:
        The last row count before the first where the kernel was not faster (1 when it lost at 2), and
        ``(rows, reference us, kernel us)`` of every count timed (timing stops at the first loss).
    """
    rows, seen = 1, []
    for m in GEMV_ROW_COUNTS:
        ref, kernel = time_pair(m)
        seen.append((m, ref * 1e6, kernel * 1e6))
        if not kernel < ref:
            break
        rows = m
    return rows, tuple(seen)


def graph_seconds(fn: Callable[[], object], reps: int = 5) -> float:
    """Median seconds of one replay of a CUDA graph capturing ``fn`` (CUDA events)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up outside the capture (JIT compile, cuBLAS workspace)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def default_kernels(pdl: bool = False) -> GemvKernels:
    """The Triton kernels of ``kernels/`` (``pdl``: candidates launched with PDL; ImportError when they are
    missing)."""
    from kernels.gemv_bf16 import candidate_configs, gemv_bf16

    return GemvKernels(gemv_bf16, functools.partial(candidate_configs, pdl=pdl))


def choose_gemv(linears: dict[str, list[Linear]], device: torch.device, reps: int = 5,
                timer: Timer | None = None, kernels: GemvKernels | None = None,
                pdl: bool = False) -> list[GemvTiming]:
    """Time every candidate per kind of layer; set ``Linear.gemv`` where one beats ``F.linear``.

    Args:
        linears: layers by kind (``LlamaModel.linears()``); kinds with a quantized or
            non-bf16/fp16 weight are skipped.
        device: the CUDA device of the weights.
        reps: timed graph replays per candidate (default timer).
        timer: ``(label, fn) -> seconds`` per call of ``fn`` (default: a CUDA graph of ``fn``);
            labels are ``'<kind>:linear'`` and ``'<kind>:gemv:<config>'``.
        kernels: the kernels to time (default: ``default_kernels(pdl)``).
        pdl: with the default kernels, launch the GEMV candidates with programmatic dependent
            launch (``kernels.pdl``; Hopper only).

    Returns:
        One ``GemvTiming`` per kind considered.

    Raises:
        Whatever the ``F.linear`` timing raises; the layers are then reset to the plain path.
    """
    if kernels is None:
        try:
            kernels = default_kernels(pdl)
        except ImportError as exc:
            return [GemvTiming(k, (0, 0), math.nan, math.nan, False, f"no kernel: {exc}") for k in linears]

    def graph_timer(label: str, fn: Callable[[], object]) -> float:
        return graph_seconds(fn, reps)

    ctx = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    out: list[GemvTiming] = []
    try:
        with ctx:
            for kind, lins in linears.items():
                timing = _choose_kind(kind, lins, device, timer or graph_timer, kernels)
                if timing is not None:
                    out.append(timing)
        return out
    except Exception:
        for lins in linears.values():
            for lin in lins:
                lin.gemv = None
        raise


def check_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Raise ValueError unless ``got`` is within 2% of max|ref| (+1e-3) of ``ref`` everywhere."""
    err = (got.float() - ref.float()).abs().max().item()
    if not err <= 0.02 * ref.float().abs().max().item() + 1e-3:
        raise ValueError(f"differs from the reference by {err:.3g}")


@dataclass(frozen=True)
class Best:
    """The fastest passing config of :func:`time_configs` (None: all failed), its time per layer in
    microseconds, every ``(label, us)`` and the failures' messages."""

    config: GemvConfig | None
    us: float
    times: tuple[tuple[str, float], ...]
    errors: tuple[str, ...]


def time_configs(prefix: str, configs: Sequence[GemvConfig], make: Callable[[GemvConfig], Callable[..., object]],
                 args: Callable[[int], tuple], count: int, ref: torch.Tensor, timer: Timer) -> Best:
    """Check each config's output on layer 0 against ``ref``, then time it over every layer.

    Args:
        prefix: timer label prefix (``'<prefix>:<config label>'``).
        configs: the candidates.
        make: config -> kernel.
        args: layer index -> the kernel's arguments for that layer.
        count: layers.
        ref: the expected output on layer 0.
        timer: ``(label, fn) -> seconds``.
    """
    best: GemvConfig | None = None
    best_us = math.inf
    times: list[tuple[str, float]] = []
    errors: list[str] = []
    for cfg in configs:
        fn = make(cfg)
        try:
            check_close(fn(*args(0)), ref)
            seconds = timer(f"{prefix}:{cfg.label}", lambda fn=fn: [fn(*args(i)) for i in range(count)])
            us = seconds / count * 1e6
        except Exception as exc:  # a config that cannot run here (compile error...) is simply not chosen
            times.append((cfg.label, math.nan))
            errors.append(f"{cfg.label}: {type(exc).__name__}: {exc}")
            continue
        times.append((cfg.label, us))
        if us < best_us:
            best, best_us = cfg, us
    return Best(best, best_us if best is not None else math.nan, tuple(times), tuple(errors))


def _choose_kind(kind: str, lins: list[Linear], device: torch.device, timer: Timer,
                 kernels: GemvKernels) -> GemvTiming | None:
    weights = [lin.weight for lin in lins]
    if not weights or any(w is None or w.dtype not in GEMV_DTYPES for w in weights):
        return None
    n, k = weights[0].shape
    x = torch.randn(1, k, dtype=weights[0].dtype, device=device)
    count = len(weights)
    t_lin = timer(f"{kind}:linear", lambda: [F.linear(x, w) for w in weights]) / count * 1e6
    configs = kernels.candidates(n, k, device)
    gemv = time_configs(f"{kind}:gemv", configs, lambda c: functools.partial(kernels.gemv, config=c),
                        lambda i: (x, weights[i]), count, F.linear(x, weights[0]), timer)
    chosen = gemv.config is not None and gemv.us < t_lin
    fn = functools.partial(kernels.gemv, config=gemv.config) if chosen else None
    rows, by_rows = 0, ()
    if fn is not None:

        def time_pair(m: int) -> tuple[float, float]:
            xm = torch.randn(m, k, dtype=x.dtype, device=device)
            return (timer(f"{kind}:linear:rows={m}", lambda: [F.linear(xm, w) for w in weights]) / count,
                    timer(f"{kind}:gemv:rows={m}", lambda: [fn(xm, w) for w in weights]) / count)

        rows, by_rows = widest_rows(time_pair)
    for lin in lins:
        lin.gemv = fn
        lin.gemv_rows = rows
    return GemvTiming(kind, (n, k), t_lin, gemv.us, chosen, "; ".join(gemv.errors), gemv.config, gemv.times,
                      rows, by_rows)
