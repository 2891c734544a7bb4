"""Paged flash attention for prefill / chunked prefill (varlen, causal, GQA, bf16 / fp8 / int8 KV).

All sequences' new tokens are packed in q [T, Hq, D] (cu_seqlens_q marks the boundaries); query i of
sequence s sits at position seq_lens[s] - q_len_s + i and attends its cached prefix plus itself. K/V are
read through the block table (the new tokens' K/V are already in the cache). Online softmax in fp32,
no score matrix in memory; quantized K/V are dequantised in registers (scales fold into score / P columns).

GQA packing: one program handles BLOCK_Q tokens x all Hq/Hkv query heads of one kv head, so each K/V
tile is loaded once per group. The tile grid needs no host sync: sequence s owns tiles starting at
cu_seqlens_q[s] // BLOCK_Q + s (an upper bound of its true start), found by binary search in-kernel.
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


@triton.jit(do_not_specialize=["num_seqs"])
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_ptr, cu_q_ptr, seq_lens_ptr, out_ptr, part_ptr, ml_ptr,
    qk_scale, num_seqs, split_len, num_rows, num_heads,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
    block_size, num_kv_heads,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QUANT: tl.constexpr,
    DOT_DT: tl.constexpr, SPLIT: tl.constexpr,
):
    # BLOCK_M = BLOCK_Q * GROUP_P rows per tile. With SPLIT, program (tile, kvh, sp) attends keys
    # [sp * split_len, (sp + 1) * split_len) only (split_len a multiple of BLOCK_N) and stores its
    # unnormalised partial and (max, sum) for _merge_splits_kernel.
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    sp = tl.program_id(2)
    # Largest s with cu_q[s] // BLOCK_Q + s <= pid (tile starts are non-decreasing in s).
    lo = num_seqs * 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(cu_q_ptr + mid) // BLOCK_Q + mid <= pid:
            lo = mid
        else:
            hi = mid - 1
    q_start = tl.load(cu_q_ptr + lo)
    q_len = tl.load(cu_q_ptr + lo + 1) - q_start
    tile = pid - (q_start // BLOCK_Q + lo)
    if (tile < 0) | (tile * BLOCK_Q >= q_len):  # before the first sequence (cu_seqlens_q[0] > 0), or past its end
        return
    prefix = tl.load(seq_lens_ptr + lo) - q_len

    # Row r of the tile = token tile*BLOCK_Q + r // GROUP_P, query head kvh*GROUP + r % GROUP_P.
    offs_m = tl.arange(0, BLOCK_M)
    tok = tile * BLOCK_Q + offs_m // GROUP_P
    g = offs_m % GROUP_P
    row_ok = (tok < q_len) & (g < GROUP)
    head = kvh * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_rows = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=io_mask, other=0.0).to(DOT_DT)
    pos = prefix + tok

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = bt_ptr + lo.to(tl.int64) * stride_bt
    # Keys below the tile's first position + 1 are visible to every row: no causal mask there.
    n_end = prefix + tl.minimum((tile + 1) * BLOCK_Q, q_len)
    n_full = ((prefix + tile * BLOCK_Q + 1) // BLOCK_N) * BLOCK_N
    if SPLIT:
        k_lo = sp * split_len
        k_hi = tl.minimum(k_lo + split_len, n_end)
    else:
        k_lo = sp * 0
        k_hi = n_end
    for start_n in range(k_lo, tl.minimum(n_full, k_hi), BLOCK_N):
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, qk_scale, start_n, n_end, pos,
            kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, block_size, num_kv_heads, kvh,
            HEAD_DIM, BLOCK_D, BLOCK_N, QUANT, False, DOT_DT)
    for start_n in range(tl.maximum(n_full, k_lo), k_hi, BLOCK_N):
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, qk_scale, start_n, n_end, pos,
            kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, block_size, num_kv_heads, kvh,
            HEAD_DIM, BLOCK_D, BLOCK_N, QUANT, True, DOT_DT)
    if SPLIT:  # every (split, row, head) of a sequence is written, an empty split as (0, -inf, 0)
        prow = (sp * num_rows + q_start + tok).to(tl.int64) * num_heads + head
        tl.store(part_ptr + prow[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=io_mask)
        tl.store(ml_ptr + prow * 2, m_i, mask=row_ok)
        tl.store(ml_ptr + prow * 2 + 1, l_i, mask=row_ok)
    else:
        out = acc / tl.maximum(l_i, 1e-30)[:, None]
        tl.store(out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=io_mask)


@triton.jit(do_not_specialize=["num_seqs"])
def _merge_splits_kernel(part_ptr, ml_ptr, cu_q_ptr, out_ptr, num_seqs, num_rows, num_heads, stride_ot, stride_oh,
                         NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_H: tl.constexpr):
    # One program per row of q: out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s over the splits (M: their
    # max; every row sees its own key, so M is finite). Rows outside the sequences are left alone.
    r = tl.program_id(0)
    if (r < tl.load(cu_q_ptr)) | (r >= tl.load(cu_q_ptr + num_seqs)):
        return
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    h_ok = offs_h < num_heads
    mask = h_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    m_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        m_max = tl.maximum(m_max, tl.load(ml_ptr + ((s * num_rows + r) * num_heads + offs_h) * 2, mask=h_ok,
                                          other=float("-inf")))
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    den = tl.zeros([BLOCK_H], tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        prow = (s * num_rows + r) * num_heads + offs_h
        w = tl.exp2(tl.load(ml_ptr + prow * 2, mask=h_ok, other=float("-inf")) - m_max)
        den += w * tl.load(ml_ptr + prow * 2 + 1, mask=h_ok, other=0.0)
        acc += w[:, None] * tl.load(part_ptr + prow.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :], mask=mask,
                                    other=0.0)
    out = acc / tl.maximum(den, 1e-30)[:, None]
    tl.store(out_ptr + r.to(tl.int64) * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)


#: Largest split-KV factor of the prefill kernel.
MAX_SPLITS = 16
#: Keys per split at least this many.
_MIN_SPLIT_KEYS = 512
#: The split grid holds at most about this many programs (most of them return at once, but each costs its
#: start and tile search: a 256-token step of a fresh chunk took 10% longer split 4 ways on an H200).
_MAX_SPLIT_PROGRAMS = 4096


def _launch_config(group_p: int, head_dim: int, device: torch.device) -> dict[str, int]:
    """Tile sizes: 128-row tiles on CUDA (Hopper-friendly); small tiles on the CPU interpreter."""
    if device.type != "cuda":
        return {"rows": max(16, group_p * 2), "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    return {"rows": max(128, group_p), "BLOCK_N": 64,
            "num_warps": 8 if head_dim > 64 else 4, "num_stages": 2 if head_dim > 64 else 3}


def _check_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None, out: torch.Tensor | None,
) -> tuple[int, int, int, int, bool]:
    _, _, hkv, d, quantized = check_kv_cache(k_cache, v_cache, k_scale, v_scale)
    check_tensor("q", q, 3, ACT_DTYPES)
    t, hq, qd = q.shape
    if qd != d:
        raise ValueError(f"q head_dim {qd} differs from the cache head_dim {d}")
    if hq % hkv != 0:
        raise ValueError(f"q has {hq} heads, not a multiple of the cache's {hkv} kv heads")
    check_tensor("seq_lens", seq_lens, 1, (torch.int32,))
    num_seqs = seq_lens.shape[0]
    check_tensor("cu_seqlens_q", cu_seqlens_q, 1, (torch.int32,))
    check_shape("cu_seqlens_q", cu_seqlens_q, (num_seqs + 1,))
    check_tensor("block_tables", block_tables, 2, (torch.int32,))
    if block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows, expected num_seqs={num_seqs}")
    if out is not None:
        check_tensor("out", out, 3, (q.dtype,))
        check_shape("out", out, tuple(q.shape))
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
                      cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens, k_scale=k_scale, v_scale=v_scale, out=out)
    return t, hq, hkv, num_seqs, quantized


def paged_prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, softmax_scale: float,
    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None, out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Causal varlen attention of packed new tokens over their paged KV (prefix + themselves).

    Args:
        q: [T, Hq, D] bf16/fp16 (fp32 too; token/head strides free). T >= cu_seqlens_q[-1]; rows before
            cu_seqlens_q[0] (e.g. decodes attended by another kernel) and past cu_seqlens_q[-1] (padding)
            are not written.
        k_cache, v_cache: [num_blocks, block_size, Hkv, D]; bf16/fp16, fp8 e4m3 or int8.
        block_tables: int32 [S, max_blocks_per_seq].
        cu_seqlens_q: int32 [S + 1], row offsets of the sequences' new tokens in q: non-decreasing,
            usually starting at 0 (per-sequence counts of 0 allowed).
        seq_lens: int32 [S], total context per sequence after this step (cached + new).
        softmax_scale: multiplier of q.k (usually head_dim ** -0.5).
        k_scale, v_scale: fp32 [num_blocks, block_size, Hkv] for fp8/int8 caches, else None.
        out: optional [T, Hq, D] output buffer of q's dtype.
        num_splits: split-KV factor: the keys of every query tile are cut into this many equal slices
            (a multiple of the key tile, covering ``block_tables``' width), attended by separate programs
            and merged by a second kernel. None: ``default_num_splits``.

    Returns:
        out [T, Hq, D] in q's dtype.
    """
    t, hq, hkv, num_seqs, quantized = _check_args(
        q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, k_scale, v_scale, out)
    if out is None:
        out = torch.empty_like(q)
    if t == 0 or num_seqs == 0:
        return out
    d = q.shape[2]
    group = hq // hkv
    group_p = next_pow2(group)
    cfg = _launch_config(group_p, d, q.device)
    block_q = cfg["rows"] // group_p
    block_n = cfg["BLOCK_N"]
    max_context = block_tables.shape[1] * k_cache.shape[1]  # host-known bound: no sync, graph-stable
    if num_splits is None:
        num_splits = default_num_splits(t // block_q + 1, hkv, max_context, q.device, t // block_q + num_seqs)
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")
    split_len = triton.cdiv(max(1, triton.cdiv(max_context, num_splits)), block_n) * block_n
    num_splits = triton.cdiv(max_context, split_len)  # no split past the table's width
    split = num_splits > 1
    part = torch.empty((num_splits, t, hq, d), dtype=torch.float32, device=q.device) if split else out
    ml = torch.empty((num_splits, t, hq, 2), dtype=torch.float32, device=q.device) if split else out
    grid = (t // block_q + num_seqs, hkv, num_splits)
    _prefill_kernel[grid](
        q, k_cache, v_cache, k_scale if quantized else k_cache, v_scale if quantized else v_cache,
        block_tables, cu_seqlens_q, seq_lens, out, part, ml,
        float(softmax_scale) * math.log2(math.e), num_seqs, split_len, t, hq,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.shape[1], hkv,
        GROUP=group, GROUP_P=group_p, HEAD_DIM=d, BLOCK_D=max(16, next_pow2(d)),
        BLOCK_Q=block_q, BLOCK_M=block_q * group_p, BLOCK_N=block_n, QUANT=quantized,
        DOT_DT=dot_dtype(q.dtype, q.device), SPLIT=split,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if split:
        _merge_splits_kernel[(t,)](
            part, ml, cu_seqlens_q, out, num_seqs, t, hq, out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, HEAD_DIM=d, BLOCK_D=max(16, next_pow2(d)), BLOCK_H=next_pow2(hq),
            num_warps=4)
    return out


def default_num_splits(tiles: int, num_kv_heads: int, max_context: int, device: torch.device,
                       grid_tiles: int | None = None) -> int:
    """Default split-KV factor: 1 unless the step's query tiles leave most SMs idle over a long context.

    A chunk of a few tokens on a long cached prefix has one query tile per kv head, whose program walks
    the whole prefix alone (an H200 took 3.5 ms of GPU time for a 16-token step on 4,096 cached tokens
    against 1.4 ms fresh, ``benchmarks/results/h200_step_timing_mixed.log``). Then the keys are split so
    that about two programs per SM run, each slice at least ``_MIN_SPLIT_KEYS`` keys of ``max_context``.
    Off CUDA: 1.

    Args:
        tiles: query tiles of the step (an upper bound: padded tokens / tile rows + 1).
        num_kv_heads: KV heads.
        max_context: keys a sequence may hold (block-table width x block size).
        device: where the kernel runs.
        grid_tiles: tiles of the launch grid (``tiles`` plus the sequence slots; default ``tiles``): the
            split grid stays within ``_MAX_SPLIT_PROGRAMS`` programs.

    Returns:
        num_splits in [1, MAX_SPLITS].
    """
    if torch.device(device).type != "cuda":
        return 1
    programs = max(1, tiles * num_kv_heads)
    want = triton.cdiv(2 * sm_count(torch.device(device)), programs)
    room = _MAX_SPLIT_PROGRAMS // max(1, (grid_tiles or tiles) * num_kv_heads)
    return int(max(1, min(want, room, MAX_SPLITS, max_context // _MIN_SPLIT_KEYS)))


def paged_prefill_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, softmax_scale: float,
    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch reference of :func:`paged_prefill_attention` (per-sequence gather, fp32 softmax)."""
    _check_args(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, k_scale, v_scale, out)
    if out is None:
        out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for s, ctx in enumerate(seq_lens.tolist()):
        k, v = gather_kv_ref(k_cache, v_cache, block_tables[s], ctx, k_scale, v_scale)
        out[cu[s]:cu[s + 1]] = causal_attention_ref(q[cu[s]:cu[s + 1]], k, v, softmax_scale).to(out.dtype)
    return out
