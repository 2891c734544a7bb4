"""Paged decode attention: one query token per sequence, split-KV over the context, GQA-packed.

Kernel 1 (partition): program (sequence, kv head, split) loads the query rows of all Hq/Hkv heads of the
kv head's group (padded to >= 16 rows for tl.dot) and streams its slice of the context once, so K/V bytes
are read once per group. Each sequence's context is cut into num_splits slices of equal length (rounded
up to BLOCK_N; computed on the device from seq_lens, so no host sync). With one split the partition
kernel writes the normalised output directly; otherwise it writes the unnormalised partial output with
its running max (log2 domain) and denominator, and kernel 2 (reduce) merges the splits.
A sequence of length 0 (e.g. CUDA-graph padding) yields zeros, not NaN.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels._util import (
    ACT_DTYPES,
    attend_block,
    causal_attention_ref,
    check_kv_cache,
    check_same_device,
    check_shape,
    check_tensor,
    dot_dtype,
    gather_kv_ref,
    next_pow2,
    sm_count,
)

#: Keys per split at least this many (splitting finer only adds reduction traffic).
_MIN_KEYS_PER_SPLIT = 256
#: Largest default number of splits.
_MAX_SPLITS = 64


@triton.jit(do_not_specialize=["num_splits"])
def _decode_partition_kernel(
    q_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_ptr, seq_lens_ptr, out_ptr, po_ptr, pm_ptr, pl_ptr,
    qk_scale, stride_qs, stride_qh, stride_os, stride_oh, stride_bt,
    block_size, num_kv_heads, num_q_heads, num_splits,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, QUANT: tl.constexpr, DOT_DT: tl.constexpr,
):
    # num_splits is a runtime value (no recompile per split count); SPLIT = num_splits > 1.
    s = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(seq_lens_ptr + s)
    part = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    lo = split * part
    hi = tl.minimum(lo + part, ctx)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    head = kvh * GROUP + offs_g
    g_ok = offs_g < GROUP
    io_mask = g_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + s.to(tl.int64) * stride_qs + head[:, None] * stride_qh + offs_d[None, :],
                mask=io_mask, other=0.0).to(DOT_DT)
    pos = tl.zeros([BLOCK_G], tl.int32) + (ctx - 1)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    bt_row = bt_ptr + s.to(tl.int64) * stride_bt
    n_full = lo + tl.maximum(hi - lo, 0) // BLOCK_N * BLOCK_N
    for start_n in range(lo, n_full, BLOCK_N):
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, qk_scale, start_n, hi, pos,
            kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, block_size, num_kv_heads, kvh,
            HEAD_DIM, BLOCK_D, BLOCK_N, QUANT, False, DOT_DT)
    for start_n in range(n_full, hi, BLOCK_N):  # at most one ragged tail block
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, qk_scale, start_n, hi, pos,
            kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, block_size, num_kv_heads, kvh,
            HEAD_DIM, BLOCK_D, BLOCK_N, QUANT, True, DOT_DT)

    if not SPLIT:
        out = acc / tl.maximum(l_i, 1e-30)[:, None]
        tl.store(out_ptr + s.to(tl.int64) * stride_os + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=io_mask)
    else:
        # Partial buffers: po [S, Hq, num_splits, BLOCK_D], pm / pl [S, Hq, num_splits].
        row = (s.to(tl.int64) * num_q_heads + head) * num_splits + split
        tl.store(po_ptr + row[:, None] * BLOCK_D + offs_d[None, :], acc, mask=g_ok[:, None])
        tl.store(pm_ptr + row, m_i, mask=g_ok)
        tl.store(pl_ptr + row, l_i, mask=g_ok)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_reduce_kernel(
    po_ptr, pm_ptr, pl_ptr, out_ptr, stride_os, stride_oh, num_q_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
):
    s = tl.program_id(0)
    h = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    p_ok = offs_p < num_splits
    row = (s.to(tl.int64) * num_q_heads + h) * num_splits + offs_p
    m = tl.load(pm_ptr + row, mask=p_ok, other=float("-inf"))
    l_part = tl.load(pl_ptr + row, mask=p_ok, other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)  # empty splits: exp2(-inf) = 0
    acc = tl.load(po_ptr + row[:, None] * BLOCK_D + offs_d[None, :], mask=p_ok[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], axis=0)
    den = tl.sum(l_part * w, axis=0)
    out = num / tl.maximum(den, 1e-30)
    tl.store(out_ptr + s.to(tl.int64) * stride_os + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


def default_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """Splits so that about two waves of programs fill the GPU, each split keeping >= 256 keys.

    ``max_context`` is an upper bound known on the host (block_tables width * block_size), so the choice
    needs no device sync and is stable across CUDA-graph replays of one shape.
    """
    target = 2 * sm_count(device)
    want = math.ceil(target / max(num_seqs * num_kv_heads, 1))
    cap = max(1, math.ceil(max_context / _MIN_KEYS_PER_SPLIT))
    return int(max(1, min(want, cap, _MAX_SPLITS)))


def _launch_config(head_dim: int, quantized: bool, device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {"BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    block_n = 64 if head_dim > 64 and not quantized else 128
    return {"BLOCK_N": block_n, "num_warps": 4, "num_stages": 3}


def _check_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None,
    num_splits: int | None, out: torch.Tensor | None,
) -> tuple[int, int, int, bool]:
    _, _, hkv, d, quantized = check_kv_cache(k_cache, v_cache, k_scale, v_scale)
    check_tensor("q", q, 3, ACT_DTYPES)
    num_seqs, hq, qd = q.shape
    if qd != d:
        raise ValueError(f"q head_dim {qd} differs from the cache head_dim {d}")
    if hq % hkv != 0:
        raise ValueError(f"q has {hq} heads, not a multiple of the cache's {hkv} kv heads")
    check_tensor("seq_lens", seq_lens, 1, (torch.int32,))
    check_shape("seq_lens", seq_lens, (num_seqs,))
    check_tensor("block_tables", block_tables, 2, (torch.int32,))
    if block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows, expected num_seqs={num_seqs}")
    if num_splits is not None and not (isinstance(num_splits, int) and num_splits >= 1):
        raise ValueError(f"num_splits must be a positive int or None, got {num_splits!r}")
    if out is not None:
        check_tensor("out", out, 3, (q.dtype,))
        check_shape("out", out, tuple(q.shape))
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens,
                      k_scale=k_scale, v_scale=v_scale, out=out)
    return num_seqs, hq, hkv, quantized


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, softmax_scale: float, k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None, num_splits: int | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one new query per sequence over its whole paged context (positions 0..seq_len-1).

    Args:
        q: [S, Hq, D] bf16/fp16 (fp32 too; sequence/head strides free).
        k_cache, v_cache: [num_blocks, block_size, Hkv, D]; bf16/fp16, fp8 e4m3 or int8.
        block_tables: int32 [S, max_blocks_per_seq].
        seq_lens: int32 [S], context length including the current token (its K/V already written).
        softmax_scale: multiplier of q.k.
        k_scale, v_scale: fp32 [num_blocks, block_size, Hkv] for fp8/int8 caches, else None.
        num_splits: KV splits per sequence; None picks :func:`default_num_splits`.
        out: optional [S, Hq, D] output buffer of q's dtype.

    Returns:
        out [S, Hq, D] in q's dtype.
    """
    num_seqs, hq, hkv, quantized = _check_args(
        q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, num_splits, out)
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    d = q.shape[2]
    block_d = max(16, next_pow2(d))  # tl.dot needs K >= 16 on GPUs
    if num_splits is None:
        num_splits = default_num_splits(num_seqs, hkv, block_tables.shape[1] * k_cache.shape[1], q.device)
    group = hq // hkv
    cfg = _launch_config(d, quantized, q.device)
    if num_splits > 1:
        po = torch.empty(num_seqs, hq, num_splits, block_d, dtype=torch.float32, device=q.device)
        pm = torch.empty(num_seqs, hq, num_splits, dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
    else:
        po = pm = pl = out  # unused dummies
    _decode_partition_kernel[(num_seqs, hkv, num_splits)](
        q, k_cache, v_cache, k_scale if quantized else k_cache, v_scale if quantized else v_cache,
        block_tables, seq_lens, out, po, pm, pl,
        float(softmax_scale) * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.shape[1], hkv, hq, num_splits,
        GROUP=group, BLOCK_G=max(16, next_pow2(group)), HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_N=cfg["BLOCK_N"], SPLIT=num_splits > 1, QUANT=quantized, DOT_DT=dot_dtype(q.dtype, q.device),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, hq)](
            po, pm, pl, out, out.stride(0), out.stride(1), hq, num_splits,
            HEAD_DIM=d, BLOCK_D=block_d, BLOCK_SPLITS=max(16, next_pow2(num_splits)),
            num_warps=4 if block_d >= 128 else 2,
        )
    return out


def paged_decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, softmax_scale: float, k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None, num_splits: int | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch reference of :func:`paged_decode_attention` (num_splits is ignored)."""
    _check_args(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, num_splits, out)
    if out is None:
        out = torch.empty_like(q)
    for s, ctx in enumerate(seq_lens.tolist()):
        if ctx == 0:
            out[s] = 0
            continue
        k, v = gather_kv_ref(k_cache, v_cache, block_tables[s], ctx, k_scale, v_scale)
        out[s] = causal_attention_ref(q[s:s + 1], k, v, softmax_scale)[0].to(out.dtype)
    return out
