"""Batch-1 (up to 16 rows) GEMV for bf16/fp16 weights, tuned to stream the weight at copy bandwidth.

cuBLAS picks GEMV kernels that reach ~3/4 of the bandwidth floor on decode shapes; this kernel launches many
programs over N (a few rows each, see ``pick_block_n``) so every SM streams its own slice of the weight with
16-byte loads, and reuses each loaded weight tile for every row of x. A fused QKV or gate_up projection is the
same call with the concatenated weight (a larger N).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._gemv_util import (
    SKINNY_MAX_M,
    check_activation,
    check_same_device,
    pick_block_n,
    pow2_at_most,
    prepare_out,
)

_TILE_ELEMS = 4096  # weight elements one program loads per loop step (8 KiB of bf16)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    n64 = n.to(tl.int64)
    k_off = tl.arange(0, BLOCK_K)
    m_idx = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # M == 1: elementwise FMAs, reduced after the loop
    for k0 in range(0, K, BLOCK_K):
        k = k0 + k_off
        kmask = k < K
        w = tl.load(w_ptr + n64[:, None] * stride_wn + k[None, :], mask=nmask[:, None] & kmask[None, :],
                    other=0.0, eviction_policy="evict_first").to(tl.float32)
        if BLOCK_M == 1:
            xv = tl.load(x_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            acc1 += w * xv[None, :]
        else:
            for m in tl.static_range(BLOCK_M):
                xv = tl.load(x_ptr + m * stride_xm + k, mask=kmask & ((k * 0 + m) < M), other=0.0)
                part = tl.sum(w * xv.to(tl.float32)[None, :], axis=1)
                acc = tl.where(m_idx[:, None] == m, acc + part[None, :], acc)
    if BLOCK_M == 1:
        acc = tl.sum(acc1, axis=1)[None, :]
    o_ptrs = out_ptr + m_idx[:, None] * stride_om + n64[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(m_idx[:, None] < M) & nmask[None, :])


def gemv_bf16(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ w.T for a few rows of x (decode), fp32 accumulation.

    Args:
        x: [M, K] activations, 1 <= M <= 16, same dtype as w (rows contiguous).
        w: [N, K] bf16 or fp16 weight (rows contiguous).
        out: optional [M, N] output buffer of x.dtype.

    Returns:
        [M, N] tensor of x.dtype.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"w must be a 2-D [N, K] tensor, got {getattr(w, 'shape', type(w).__name__)}")
    if w.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"w must be bfloat16 or float16, got {w.dtype}")
    if w.stride(1) != 1:
        raise ValueError("w must have contiguous rows")
    n, k = w.shape
    check_activation(x, k)
    if x.dtype != w.dtype:
        raise ValueError(f"x must have w's dtype {w.dtype}, got {x.dtype}")
    m = x.shape[0]
    if m > SKINNY_MAX_M:
        raise ValueError(f"x has M={m} rows; gemv_bf16 takes at most {SKINNY_MAX_M} (use F.linear)")
    check_same_device(("x", x), ("w", w))
    out = prepare_out(x, n, out)
    block_n = pick_block_n(n, x.device)
    block_k = pow2_at_most(_TILE_ELEMS // block_n, triton.next_power_of_2(k))
    _gemv_kernel[(triton.cdiv(n, block_n),)](x, w, out, m, n, k, x.stride(0), w.stride(0), out.stride(0),
                                            BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n,
                                            BLOCK_K=block_k, num_warps=4)
    return out


def gemv_bf16_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference of :func:`gemv_bf16` (fp32 matmul)."""
    return (x.float() @ w.float().T).to(x.dtype)
