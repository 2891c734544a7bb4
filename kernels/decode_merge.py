"""How the decode kernel's split partials become outputs (``kernels.attention_decode``).

A sequence split over ``n_s`` programs leaves ``n_s`` unnormalised partial outputs with their running max
(log2 domain) and denominator. ``decode_reduce_kernel`` merges them in a second launch;
``merge_if_last`` lets the last program of a (sequence or row group, kv head) merge them inside the
partition kernel instead, counting arrivals in an atomic counter.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.pdl import pdl_enter


@triton.jit
def active_splits(ctx, keys_per_split, num_splits):
    """Splits a sequence of ``ctx`` keys uses: clamp(cdiv(ctx, keys_per_split), 1, num_splits)."""
    return tl.minimum(tl.maximum(tl.cdiv(ctx, keys_per_split), 1), num_splits)


@triton.jit
def store_normalised(out_ptr, row_off, head, offs_d, stride_oh, acc, l_i, io_mask):
    """out[row, head, :] = acc / l_i, ``row_off`` the row's element offset (a scalar, or per tile row
    [BLOCK_G, 1]); rows with no key (l_i == 0) get acc == 0 and so zeros."""
    out = acc / tl.maximum(l_i, 1e-30)[:, None]
    tl.store(out_ptr + row_off + head[:, None] * stride_oh + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=io_mask)


@triton.jit
def merge_if_last(ctr, n_s, row_ns, prow0, po_ptr, pm_ptr, pl_ptr, out_ptr, row_off, head, offs_d, stride_oh,
                   merge_ok, io_mask, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """The reduction inside the partition kernel: the last of a (sequence or row group, kv head)'s ``n_s``
    programs to finish merges the partials of each tile row where ``merge_ok`` (buffer rows ``prow0 + i``
    for its splits ``i < row_ns``) and writes their outputs.

    Each program's partial stores precede its arrival (CTA barrier, then an acq_rel atomic at GPU scope),
    so the last to arrive sees them all; it reads them past L1 and resets the counter for the next launch
    (or graph replay): the counter is zero between launches.
    """
    tl.debug_barrier()
    if tl.atomic_add(ctr, 1, sem="acq_rel", scope="gpu") == n_s - 1:
        tl.debug_barrier()
        m_max = tl.full([BLOCK_G], float("-inf"), tl.float32)
        for i in range(0, n_s):
            ok = merge_ok & (i < row_ns)
            m_max = tl.maximum(m_max, tl.load(pm_ptr + prow0 + i, mask=ok, other=float("-inf"),
                                              cache_modifier=".cg"))
        m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
        num = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        den = tl.zeros([BLOCK_G], tl.float32)
        for i in range(0, n_s):
            ok = merge_ok & (i < row_ns)
            w = tl.exp2(tl.load(pm_ptr + prow0 + i, mask=ok, other=float("-inf"), cache_modifier=".cg") - m_max)
            den += tl.load(pl_ptr + prow0 + i, mask=ok, other=0.0, cache_modifier=".cg") * w
            num += tl.load(po_ptr + (prow0 + i)[:, None] * BLOCK_D + offs_d[None, :], mask=ok[:, None],
                           other=0.0, cache_modifier=".cg") * w[:, None]
        store_normalised(out_ptr, row_off, head, offs_d, stride_oh, num, den, io_mask & merge_ok[:, None])
        tl.atomic_xchg(ctr, 0)


@triton.jit(do_not_specialize=["num_splits", "keys_per_split"])
def decode_reduce_kernel(
    po_ptr, pm_ptr, pl_ptr, seq_lens_ptr, out_ptr, stride_os, stride_oh, num_q_heads, num_splits,
    keys_per_split, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_enter(PDL)
    s = tl.program_id(0)
    h = tl.program_id(1)
    n_s = active_splits(tl.load(seq_lens_ptr + s), keys_per_split, num_splits)
    if n_s == 1:
        return  # the partition kernel wrote this sequence's output directly
    offs_p = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    p_ok = offs_p < n_s  # splits >= n_s wrote nothing: their buffer rows hold stale data
    row = (s.to(tl.int64) * num_q_heads + h) * num_splits + offs_p
    m = tl.load(pm_ptr + row, mask=p_ok, other=float("-inf"))
    l_part = tl.load(pl_ptr + row, mask=p_ok, other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)  # masked splits: exp2(-inf) = 0
    acc = tl.load(po_ptr + row[:, None] * BLOCK_D + offs_d[None, :], mask=p_ok[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], axis=0)
    den = tl.sum(l_part * w, axis=0)
    out = num / tl.maximum(den, 1e-30)
    tl.store(out_ptr + s.to(tl.int64) * stride_os + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)
