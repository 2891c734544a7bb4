"""The Triton body of the decode GEMVs (``kernels.gemv_bf16``, ``kernels.gemv_fused``) and its launcher.

One kernel, three optional fusions picked by constexpr flags:

- ``NORM``: x is the residual stream; every program first computes each row's RMS over all of K (x is a
  few KiB, read from L2) and feeds ``round(x * rstd * norm_weight)`` to the GEMV, the formula of
  ``kernels.norm.rms_norm``, so the normalised rows never go to memory and the norm's launch is saved.
- ``GLU``: the weight is a fused [gate | up] projection [2I, K]; a program computes the same output rows
  of both halves and stores ``silu(gate) * up`` [M, I] (each half rounded to x's dtype first, then the
  formula of ``kernels.activation.silu_and_mul``), saving the activation's launch.
- ``RES``: the output is ``x @ w.T + residual`` rounded once (the residual add of the next norm folded
  into this projection).

Split-K (several programs per row block, fp32 partials summed in split order by a second small kernel)
works with NORM and RES (the reduction adds the residual); GLU needs the whole K in one program.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from kernels.pdl import pdl_enter, pdl_launch_options, pdl_trigger, pdl_wait

if TYPE_CHECKING:
    from kernels.gemv_bf16 import GemvConfig

_REDUCE_BLOCK = 256


@triton.jit
def _row_rstd(x_ptr, K, eps, valid, BLOCK_K: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps) of one row of K elements (fp32); ``valid`` [BLOCK_K] masks padding rows."""
    k_off = tl.arange(0, BLOCK_K)
    ss = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + k_off
        v = tl.load(x_ptr + k, mask=(k < K) & valid, other=0.0).to(tl.float32)
        ss += v * v
    return 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)


@triton.jit
def _act_tile(x_ptr, nw_ptr, k, mask, rstd, NORM: tl.constexpr):
    """One activation row's K tile in fp32: x[k], or with NORM ``round(x[k] * rstd * nw[k])``."""
    xv = tl.load(x_ptr + k, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        nw = tl.load(nw_ptr + k, mask=mask, other=0.0).to(tl.float32)
        xv = (xv * rstd * nw).to(x_ptr.dtype.element_ty).to(tl.float32)
    return xv


@triton.jit
def _silu_mul(g, u):
    e = tl.exp(-tl.abs(g))  # in (0, 1]: no overflow for large |g|
    sig = tl.where(g >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return g * sig * u


@triton.jit
def _load_w(w_ptr, n64, nmask, k, K, stride_wn, up_off, GLU: tl.constexpr):
    """One weight tile [BLOCK_N, BLOCK_K] (with GLU also its up half; else that slot repeats the tile)."""
    kmask = k < K
    wmask = nmask[:, None] & kmask[None, :]
    w_ptrs = w_ptr + n64[:, None] * stride_wn + k[None, :]
    w = tl.load(w_ptrs, mask=wmask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    w_up = w
    if GLU:
        w_up = tl.load(w_ptrs + up_off * stride_wn, mask=wmask, other=0.0,
                       eviction_policy="evict_first").to(tl.float32)
    return w, w_up


@triton.jit
def _accumulate(acc, acc_up, acc1, acc1_up, w, w_up, x_ptr, nw_ptr, k, K, M, stride_xm, rstd, m_idx,
                BLOCK_M: tl.constexpr, NORM: tl.constexpr, GLU: tl.constexpr):
    """Add one weight tile's products with the matching activation tile to the accumulators."""
    kmask = k < K
    if BLOCK_M == 1:
        xv = _act_tile(x_ptr, nw_ptr, k, kmask, tl.sum(rstd, axis=0), NORM)[None, :]
        acc1 += w * xv
        if GLU:
            acc1_up += w_up * xv
    else:
        for m in tl.static_range(BLOCK_M):
            r_m = tl.sum(tl.where(m_idx == m, rstd, 0.0), axis=0)
            xv = _act_tile(x_ptr + m * stride_xm, nw_ptr, k, kmask & ((k * 0 + m) < M), r_m, NORM)[None, :]
            acc = tl.where(m_idx[:, None] == m, acc + tl.sum(w * xv, axis=1)[None, :], acc)
            if GLU:
                acc_up = tl.where(m_idx[:, None] == m, acc_up + tl.sum(w_up * xv, axis=1)[None, :], acc_up)
    return acc, acc_up, acc1, acc1_up


@triton.jit
def gemv_rows(x_ptr, w_ptr, nw_ptr, n64, nmask, k_start, k_chunk, K, M, up_off, eps, stride_xm, stride_wn,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr,
              GLU: tl.constexpr, PDL: tl.constexpr, LATE_TRIGGER: tl.constexpr):
    """The GEMV of weight rows ``n64`` (mask ``nmask``) over K range [k_start, k_start + k_chunk) of x's M rows
    (with NORM: normalised over all of K first; with GLU: also the up rows ``n + up_off``).

    The first weight tile is loaded before the PDL wait: weights are never written by the step, so with PDL
    this load overlaps the previous kernel's tail (kernels/pdl.py). The next kernel may launch right after the
    wait, or with ``LATE_TRIGGER`` when the caller calls ``pdl_trigger`` (after its stores).

    Returns:
        (acc, acc_up): fp32 [BLOCK_M, BLOCK_N] sums (acc_up meaningful with GLU only).
    """
    k_off = tl.arange(0, BLOCK_K)
    m_idx = tl.arange(0, BLOCK_M)
    w, w_up = _load_w(w_ptr, n64, nmask, k_start + k_off, K, stride_wn, up_off, GLU)
    pdl_wait(PDL)
    if not LATE_TRIGGER:
        pdl_trigger(PDL)
    rstd = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if NORM:
        for m in tl.static_range(BLOCK_M):
            r = _row_rstd(x_ptr + m * stride_xm, K, eps, (k_off * 0 + m) < M, BLOCK_K)
            rstd = tl.where(m_idx == m, r, rstd)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # M == 1: elementwise FMAs, reduced after the loop
    acc1_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc, acc_up, acc1, acc1_up = _accumulate(acc, acc_up, acc1, acc1_up, w, w_up, x_ptr, nw_ptr, k_start + k_off,
                                             K, M, stride_xm, rstd, m_idx, BLOCK_M, NORM, GLU)
    for k0 in range(BLOCK_K, k_chunk, BLOCK_K):
        k = k_start + k0 + k_off
        w, w_up = _load_w(w_ptr, n64, nmask, k, K, stride_wn, up_off, GLU)
        acc, acc_up, acc1, acc1_up = _accumulate(acc, acc_up, acc1, acc1_up, w, w_up, x_ptr, nw_ptr, k, K, M,
                                                 stride_xm, rstd, m_idx, BLOCK_M, NORM, GLU)
    if BLOCK_M == 1:
        acc = tl.sum(acc1, axis=1)[None, :]
        if GLU:
            acc_up = tl.sum(acc1_up, axis=1)[None, :]
    return acc, acc_up


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, part_ptr, nw_ptr, res_ptr, M, N, K, k_chunk, up_off, eps,
                 stride_xm, stride_wn, stride_om, stride_rm,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                 NORM: tl.constexpr, GLU: tl.constexpr, RES: tl.constexpr, PDL: tl.constexpr):
    # Program (pid_n, pid_k) covers output columns [pid_n * BLOCK_N, +BLOCK_N) and K range
    # [pid_k * k_chunk, +k_chunk); k_chunk is a multiple of BLOCK_K (>= BLOCK_K), so only the last split's
    # tiles reach past K (masked). With GLU, output column n reads weight rows n (gate) and n + up_off (up).
    pid_n = tl.program_id(0)
    k_start = tl.program_id(1) * k_chunk
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    n64 = n.to(tl.int64)
    m_idx = tl.arange(0, BLOCK_M)
    acc, acc_up = gemv_rows(x_ptr, w_ptr, nw_ptr, n64, nmask, k_start, k_chunk, K, M, up_off, eps, stride_xm,
                            stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, NORM, GLU, PDL, False)
    omask = (m_idx[:, None] < M) & nmask[None, :]
    if SPLIT_K == 1:
        if GLU:
            dt = out_ptr.dtype.element_ty
            acc = _silu_mul(acc.to(dt).to(tl.float32), acc_up.to(dt).to(tl.float32))
        if RES:
            acc += tl.load(res_ptr + m_idx[:, None] * stride_rm + n64[None, :], mask=omask,
                           other=0.0).to(tl.float32)
        tl.store(out_ptr + m_idx[:, None] * stride_om + n64[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=omask)
    else:  # partials laid out [SPLIT_K, M, N] in fp32
        p_ptrs = part_ptr + (tl.program_id(1) * M + m_idx[:, None]).to(tl.int64) * N + n64[None, :]
        tl.store(p_ptrs, acc, mask=omask)


@triton.jit
def _split_k_reduce_kernel(part_ptr, out_ptr, res_ptr, M, N, stride_om, stride_rm, SPLIT_K: tl.constexpr,
                           RES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    # Sums the SPLIT_K fp32 partials of each output in split order (deterministic), adds the residual,
    # then rounds once.
    pdl_enter(PDL)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < M * N
    acc = tl.load(part_ptr + idx, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(part_ptr + s * M * N + idx, mask=mask, other=0.0)
    row, col = idx // N, idx % N
    if RES:
        acc += tl.load(res_ptr + row * stride_rm + col, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_om + col, acc.to(out_ptr.dtype.element_ty), mask=mask)


def launch_gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, config: GemvConfig, *,
                norm: tuple[torch.Tensor, float] | None = None, glu: bool = False,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the GEMV on checked arguments (the public wrappers check them).

    Args:
        x: [M, K] activations (with ``norm``: the un-normalised residual stream).
        w: [N, K] weight (with ``glu``: [2I, K], gate rows then up rows).
        out: [M, N] output of x's dtype ([M, I] with ``glu``).
        config: launch shape; with ``glu`` its ``block_n`` counts weight rows (half gate, half up),
            so it must be at least 2, and ``split_k`` must be 1. ``config.pdl`` launches both kernels
            with programmatic dependent launch (``kernels.pdl``; ValueError off Hopper).
        norm: ``(norm_weight [K], eps)``: normalise x's rows first.
        glu: store ``silu(gate) * up``.
        residual: [M, N] tensor added to the output.

    Returns:
        ``out``.
    """
    m, k = x.shape
    n_out = out.shape[1]
    split = config.split_k
    block_n = config.block_n // 2 if glu else config.block_n
    grid = (triton.cdiv(n_out, block_n), split)
    k_chunk = triton.cdiv(triton.cdiv(k, split), config.block_k) * config.block_k
    part = out if split == 1 else torch.empty((split, m, n_out), dtype=torch.float32, device=x.device)
    nw, eps = norm if norm is not None else (x, 1.0)
    res = residual if residual is not None else out
    launch = pdl_launch_options(config.pdl, x.device)
    _gemv_kernel[grid](x, w, out, part, nw, res, m, n_out, k, k_chunk, n_out if glu else 0, float(eps),
                       x.stride(0), w.stride(0), out.stride(0), res.stride(0),
                       BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, BLOCK_K=config.block_k,
                       SPLIT_K=split, NORM=norm is not None, GLU=glu, RES=residual is not None,
                       PDL=config.pdl, num_warps=config.num_warps, **launch)
    if split > 1:
        _split_k_reduce_kernel[(triton.cdiv(m * n_out, _REDUCE_BLOCK),)](
            part, out, res, m, n_out, out.stride(0), res.stride(0), SPLIT_K=split, RES=residual is not None,
            BLOCK=_REDUCE_BLOCK, PDL=config.pdl, **launch)
    return out
