"""Shared set-up of the attention benchmarks (CUDA only; nothing runs at import): the model head layouts,
random paged caches, timing through CUDA graphs, and a guard that records a failing case and goes on."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from benchmarks.common import graph_time, row

MODELS = {"1B": (32, 8, 64), "3B": (24, 8, 128)}  # q heads, kv heads, head_dim
BLOCK = 16
_ROTATE_BYTES = 160 << 20  # > 3x an H100's 50 MB L2
_MAX_COPIES = 64
DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "int8": torch.int8}


def attn_graph_time(calls: list[Callable[[], object]]) -> float:
    """Seconds per call of ``calls`` replayed as one CUDA graph (10 timed replays)."""
    return graph_time(calls, iters=10, warmup=2)


def safe(rows: list[dict], bench: str, case: str, unit: str, fn: Callable[[], list[dict]]) -> None:
    """Append ``fn()``'s rows to ``rows`` and print them; a failure becomes one NaN row naming the error."""
    try:
        new = fn()
    except Exception as e:  # one failing case must not abort the rest
        note = f"error: {type(e).__name__}: {str(e)[:300]}"
        print(f"[bench_attention] {bench} {case} FAILED: {note}", flush=True)
        new = [row(bench, case, float("nan"), unit, reference=note)]
    for r in new:
        print(f"[bench_attention] {r['bench']:16s} {r['case']:44s} {r['value']:10.4g} {r['unit']:8s} "
              f"{r['reference'][:28]:28s} {r['ref_value']:10.4g} {r['ceiling']:10s} {r['ceiling_value']:10.4g}",
              flush=True)
    rows.extend(new)
    torch.cuda.empty_cache()


def rand_cache(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random cache contents of ``dtype`` and, for fp8 / int8, matching fp32 scales (values O(1))."""
    if dtype == torch.int8:
        qmax, codes = 127.0, torch.randint(-127, 128, shape, dtype=torch.int8, device="cuda")
    elif dtype == torch.float8_e4m3fn:
        qmax, codes = 448.0, (torch.randn(shape, device="cuda") * 100).clamp(-448, 448).to(dtype)
    else:
        return torch.randn(shape, device="cuda", dtype=dtype), None
    return codes, (0.5 + torch.rand(shape[:3], device="cuda")) * 2.0 / qmax


class Paged:
    """``copies`` independent batches of ``batch`` sequences of ``ctx`` tokens in one paged cache."""

    def __init__(self, model: str, batch: int, ctx: int, dtype: torch.dtype, copies: int) -> None:
        _, hkv, d = MODELS[model]
        per_seq = math.ceil(ctx / BLOCK)
        num_blocks = copies * batch * per_seq
        self.k_cache, self.k_scale = rand_cache((num_blocks, BLOCK, hkv, d), dtype)
        self.v_cache, self.v_scale = rand_cache((num_blocks, BLOCK, hkv, d), dtype)
        perm = torch.randperm(num_blocks, device="cuda").to(torch.int32)
        self.tables = list(perm.view(copies, batch, per_seq).unbind(0))  # scattered blocks, like a real pool
        self.seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")


def num_copies(nbytes: int) -> int:
    """Copies of ``nbytes`` of data to rotate through so that no call reads from L2."""
    return max(1, min(_MAX_COPIES, math.ceil(_ROTATE_BYTES / max(nbytes, 1))))


def kv_bytes(model: str, tokens: int, dtype: torch.dtype) -> int:
    """K and V bytes (with fp32 scales for fp8 / int8) of ``tokens`` tokens of ``model``."""
    _, hkv, d = MODELS[model]
    per_token = 2 * hkv * d * torch.empty(0, dtype=dtype).element_size()
    return tokens * (per_token + (2 * hkv * 4 if dtype in (torch.float8_e4m3fn, torch.int8) else 0))


