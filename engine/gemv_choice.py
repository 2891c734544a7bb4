"""Choose, per kind of linear layer, between ``F.linear`` and ``kernels.gemv_bf16`` for decode-sized inputs.

Each candidate is timed the way a captured decode step runs it: a CUDA graph of one
pass over every layer's weight of that kind (no launch overhead; the weights, read
one after the other, do not stay in L2), at one input row. The faster one is set
as ``Linear.gemv`` (or left None) for every layer of the kind. CUDA only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.linear import Linear

GEMV_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class GemvTiming:
    """The measured choice for one kind of linear layer.

    Args:
        kind: layer kind ('qkv', 'o', 'gate_up', 'down', 'lm_head').
        shape: weight shape ``(N, K)``.
        linear_us: ``F.linear`` microseconds per call (in a graph).
        gemv_us: ``gemv_bf16`` microseconds per call (NaN when it failed).
        chosen: whether the layers of this kind now use ``gemv_bf16``.
        note: why the kernel was not timed, if it was not.
    """

    kind: str
    shape: tuple[int, int]
    linear_us: float
    gemv_us: float
    chosen: bool
    note: str = ""


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


def choose_gemv(linears: dict[str, list[Linear]], device: torch.device, reps: int = 5) -> list[GemvTiming]:
    """Time both kernels per kind of layer and set ``Linear.gemv`` where the GEMV kernel is faster.

    Args:
        linears: layers by kind (``LlamaModel.linears()``); kinds with a quantized or
            non-bf16/fp16 weight are skipped.
        device: the CUDA device of the weights.
        reps: timed replays per candidate.

    Returns:
        One ``GemvTiming`` per kind considered.
    """
    try:
        from kernels.gemv_bf16 import gemv_bf16
    except ImportError as exc:
        return [GemvTiming(k, (0, 0), math.nan, math.nan, False, f"no kernel: {exc}") for k in linears]
    with torch.cuda.device(device):
        return _choose(linears, device, reps, gemv_bf16)


def _choose(linears: dict[str, list[Linear]], device: torch.device, reps: int,
            gemv_bf16: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[GemvTiming]:
    out = []
    for kind, lins in linears.items():
        weights = [lin.weight for lin in lins]
        if not weights or any(w is None or w.dtype not in GEMV_DTYPES for w in weights):
            continue
        n, k = weights[0].shape
        x = torch.randn(1, k, dtype=weights[0].dtype, device=device)
        count = len(weights)
        t_lin = graph_seconds(lambda: [F.linear(x, w) for w in weights], reps) / count  # noqa: B023
        try:
            ref, got = F.linear(x, weights[0]).float(), gemv_bf16(x, weights[0]).float()
            err = (got - ref).abs().max().item()
            if not err <= 0.02 * ref.abs().max().item() + 1e-3:
                raise ValueError(f"gemv_bf16 differs from F.linear by {err:.3g}")
            t_gemv = graph_seconds(lambda: [gemv_bf16(x, w) for w in weights], reps) / count  # noqa: B023
        except Exception as exc:  # a kernel that cannot run here (compile error...) is simply not chosen
            out.append(GemvTiming(kind, (n, k), t_lin * 1e6, math.nan, False, f"{type(exc).__name__}: {exc}"))
            continue
        chosen = t_gemv < t_lin
        for lin in lins:
            lin.gemv = gemv_bf16 if chosen else None
        out.append(GemvTiming(kind, (n, k), t_lin * 1e6, t_gemv * 1e6, chosen))
    return out
