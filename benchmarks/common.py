"""Shared timing helpers for the GPU benchmarks (CUDA only; nothing runs at import)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def time_cuda(fn: Callable[[], object], iters: int = 50, warmup: int = 5) -> float:
    """Median seconds per call of ``fn`` on the current CUDA stream (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def time_wall(fn: Callable[[], object], iters: int = 10, warmup: int = 2) -> float:
    """Median wall seconds per call, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def measure_copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = time_cuda(lambda: dst.copy_(src), iters=20)
    return 2 * nbytes / t


def measure_matmul_peak(n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """Achieved dense matmul FLOP/s on an n x n x n product."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    t = time_cuda(lambda: a @ b, iters=20)
    return 2 * n**3 / t


def row(bench: str, case: str, value: float, unit: str, reference: str = "", ref_value: float = float("nan"),
        ceiling: str = "", ceiling_value: float = float("nan")) -> dict:
    """One result row of a benchmark table."""
    return {"bench": bench, "case": case, "value": value, "unit": unit, "reference": reference,
            "ref_value": ref_value, "ceiling": ceiling, "ceiling_value": ceiling_value}


def graph_time(calls: list[Callable[[], object]], iters: int = 20, warmup: int = 3) -> float:
    """Seconds per call of ``calls`` replayed as one CUDA graph (each call warmed up first).

    Args:
        calls: the calls to capture, in order.
        iters, warmup: timed and untimed replays of the whole graph.

    Returns:
        Replay time divided by the number of calls.
    """
    for c in calls:
        c()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(stream)
    return time_cuda(graph.replay, iters=iters, warmup=warmup) / len(calls)
