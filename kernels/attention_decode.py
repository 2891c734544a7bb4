"""Paged decode attention: one query token per sequence, split-KV over the context, GQA-packed.

Kernel 1 (partition): program (sequence, kv head, split) loads the query rows of all Hq/Hkv heads of the
kv head's group (padded to >= 16 rows for tl.dot) and streams its slice of the context once, so K/V bytes
are read once per group.

How contexts are cut: the grid has ``num_splits`` programs per (sequence, kv head), the most splits any
sequence may use. The host fixes one slice length for the whole batch,
``keys_per_split = max(_MIN_KEYS_PER_SPLIT, ceil(max_context / num_splits))`` rounded up to BLOCK_N, from
max_context = block_tables.shape[1] * block_size (host-known: no device sync, and stable under CUDA-graph
replay). On the device, sequence s with context ctx uses ``n_s = clamp(ceil(ctx / keys_per_split), 1,
num_splits)`` consecutive slices of keys_per_split keys (the last one ragged; it takes every key up to
ctx); programs with split >= n_s return at once. So short and long sequences of one batch cost in
proportion to their own lengths instead of the longest one's, and a short sequence is not split at all.

With n_s == 1 the partition program writes the normalised output directly (a runtime branch); otherwise
it writes its unnormalised partial output, running max (log2 domain) and denominator, and kernel 2
(reduce; it returns at once where n_s == 1) merges the n_s partials. Partial buffers exist only when
num_splits > 1. A sequence of length 0 (CUDA-graph padding) has n_s == 1 and yields zeros, not NaN.
With ``merge_counters`` there is no kernel 2: each (sequence, kv head) counts its finished programs in
an atomic counter, and the last one merges the partials (``merge_if_last``), saving a launch a layer.

Row groups (speculative verification): a decode verifying ``k`` drafts is ``k + 1`` consecutive rows over
one block table at contexts ctx, ctx + 1, ..., each attending causally. Given ``group_lens`` (per row: the
rows of the group it leads, 0 for a row inside an earlier row's group), the leader's programs load the
query rows of its whole group (up to ``max_group`` rows x the GQA group, one tile) and stream the shared
context once, masking each row at its own position, instead of once per row. Splits are cut over the
group's longest context; every row keeps its own split count (a split holds keys of a row exactly when
its index is below the row's count), so the reduction and the per-row outputs are those of ungrouped rows.
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
)
from kernels.decode_launch import DecodeConfig, default_decode_config, default_num_splits, keys_per_split
from kernels.decode_merge import active_splits, decode_reduce_kernel, merge_if_last, store_normalised
from kernels.pdl import pdl_enter, pdl_launch_options


@triton.jit(do_not_specialize=["num_splits", "keys_per_split"])
def _decode_partition_kernel(
    q_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_ptr, seq_lens_ptr, group_ptr, out_ptr, po_ptr, pm_ptr, pl_ptr,
    ctr_ptr, qk_scale, stride_qs, stride_qh, stride_os, stride_oh, stride_bt,
    block_size, num_kv_heads, num_q_heads, num_splits, keys_per_split,
    GROUP: tl.constexpr, MAX_ROWS: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, GROUPED: tl.constexpr,
    QUANT: tl.constexpr, DOT_DT: tl.constexpr, MERGE_LAST: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    # num_splits (grid size, the most splits per sequence) and keys_per_split (a multiple of BLOCK_N) are
    # runtime values, so no value recompiles; SPLIT = num_splits > 1.
    s = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    # Without GROUPED (compile-time) every branch below is the one-row-per-sequence kernel, unchanged.
    if GROUPED:
        nq = tl.minimum(tl.load(group_ptr + s), MAX_ROWS)
        if nq == 0:
            return  # a row inside an earlier row's group: that row's programs attend for it
        ctx_first = tl.load(seq_lens_ptr + s)
        ctx = tl.load(seq_lens_ptr + s + nq - 1)  # the group's longest context sets the splits
    else:
        ctx = tl.load(seq_lens_ptr + s)
    n_s = active_splits(ctx, keys_per_split, num_splits)
    if split >= n_s:
        return  # this sequence needs fewer splits
    lo = split * keys_per_split
    # The last active split takes every remaining key: ragged, and robust to ctx > num_splits * keys_per_split.
    hi = tl.where(split == n_s - 1, ctx, lo + keys_per_split)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    if GROUPED:  # tile row r: query row s + r // GROUP, head kvh * GROUP + r % GROUP
        row = s + offs_g // GROUP
        head = kvh * GROUP + offs_g % GROUP
        g_ok = (offs_g // GROUP < nq) & (offs_g < GROUP * MAX_ROWS)
        row_off = row.to(tl.int64)[:, None] * stride_os
        q_off = row.to(tl.int64)[:, None] * stride_qs
        row_ctx = tl.load(seq_lens_ptr + row, mask=g_ok, other=0)
        pos = row_ctx - 1
    else:  # tile row r: head kvh * GROUP + r of the sequence's one row
        head = kvh * GROUP + offs_g
        g_ok = offs_g < GROUP
        row_off = s.to(tl.int64) * stride_os
        q_off = s.to(tl.int64) * stride_qs
        pos = tl.zeros([BLOCK_G], tl.int32) + (ctx - 1)
    io_mask = g_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + q_off + head[:, None] * stride_qh + offs_d[None, :], mask=io_mask, other=0.0).to(DOT_DT)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    bt_row = bt_ptr + s.to(tl.int64) * stride_bt
    if GROUPED:  # keys before the group's shortest context are seen by every row: unmasked blocks up to there
        n_full = lo + tl.maximum(tl.minimum(hi, ctx_first) - lo, 0) // BLOCK_N * BLOCK_N
    else:
        n_full = lo + tl.maximum(hi - lo, 0) // BLOCK_N * BLOCK_N
    for start_n in range(lo, n_full, BLOCK_N):
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, qk_scale, start_n, hi, pos,
            kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, block_size, num_kv_heads, kvh,
            HEAD_DIM, BLOCK_D, BLOCK_N, QUANT, False, DOT_DT)
    for start_n in range(n_full, hi, BLOCK_N):  # the ragged tail (and a group's later positions), masked
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, qk_scale, start_n, hi, pos,
            kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row, block_size, num_kv_heads, kvh,
            HEAD_DIM, BLOCK_D, BLOCK_N, QUANT, True, DOT_DT)

    # Partial buffers: po [S, Hq, num_splits, BLOCK_D], pm / pl [S, Hq, num_splits]; a row's partials are
    # written only by its first n_s splits (each holds >= 1 of its keys, so a finite max).
    if SPLIT:
        if GROUPED:
            # Each row by its own split count: an unsplit row (also ctx == 0) is written normalised by split 0.
            row_ns = active_splits(row_ctx, keys_per_split, num_splits)
            if split == 0:
                store_normalised(out_ptr, row_off, head, offs_d, stride_oh, acc, l_i,
                                  io_mask & (row_ns == 1)[:, None])
            part_ok = g_ok & (row_ns > 1) & (split < row_ns)
            prow = (row.to(tl.int64) * num_q_heads + head) * num_splits + split
            tl.store(po_ptr + prow[:, None] * BLOCK_D + offs_d[None, :], acc, mask=part_ok[:, None])
            tl.store(pm_ptr + prow, m_i, mask=part_ok)
            tl.store(pl_ptr + prow, l_i, mask=part_ok)
            if MERGE_LAST:  # noqa: SIM102 - a compile-time branch around a runtime one
                if n_s > 1:  # every program of the group arrives, written rows or not
                    merge_if_last(ctr_ptr + s * num_kv_heads + kvh, n_s, row_ns, prow - split, po_ptr, pm_ptr,
                                   pl_ptr, out_ptr, row_off, head, offs_d, stride_oh, g_ok & (row_ns > 1),
                                   io_mask, BLOCK_G, BLOCK_D)
        else:
            if n_s == 1:  # runtime branch: an unsplit sequence (also ctx == 0) needs no partials nor reduction
                store_normalised(out_ptr, row_off, head, offs_d, stride_oh, acc, l_i, io_mask)
            else:
                prow = (s.to(tl.int64) * num_q_heads + head) * num_splits + split
                tl.store(po_ptr + prow[:, None] * BLOCK_D + offs_d[None, :], acc, mask=g_ok[:, None])
                tl.store(pm_ptr + prow, m_i, mask=g_ok)
                tl.store(pl_ptr + prow, l_i, mask=g_ok)
                if MERGE_LAST:
                    merge_if_last(ctr_ptr + s * num_kv_heads + kvh, n_s, tl.zeros([BLOCK_G], tl.int32) + n_s,
                                   prow - split, po_ptr, pm_ptr, pl_ptr, out_ptr, row_off, head, offs_d, stride_oh,
                                   g_ok, io_mask, BLOCK_G, BLOCK_D)
    else:
        store_normalised(out_ptr, row_off, head, offs_d, stride_oh, acc, l_i, io_mask)


def _check_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None,
    num_splits: int | None, out: torch.Tensor | None, config: DecodeConfig | None = None,
    group_lens: torch.Tensor | None = None, max_group: int = 1,
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
    if group_lens is not None:
        check_tensor("group_lens", group_lens, 1, (torch.int32,))
        check_shape("group_lens", group_lens, (num_seqs,))
    if not (isinstance(max_group, int) and not isinstance(max_group, bool) and max_group >= 1):
        raise ValueError(f"max_group must be a positive int, got {max_group!r}")
    if config is not None and not isinstance(config, DecodeConfig):
        raise ValueError(f"config must be a DecodeConfig or None, got {type(config).__name__}")
    if out is not None:
        check_tensor("out", out, 3, (q.dtype,))
        check_shape("out", out, tuple(q.shape))
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens,
                      k_scale=k_scale, v_scale=v_scale, out=out, group_lens=group_lens)
    return num_seqs, hq, hkv, quantized


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, softmax_scale: float, k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None, num_splits: int | None = None, out: torch.Tensor | None = None,
    pdl: bool = False, config: DecodeConfig | None = None, group_lens: torch.Tensor | None = None,
    max_group: int = 1, merge_counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one new query per sequence over its whole paged context (positions 0..seq_len-1).

    Args:
        q: [S, Hq, D] bf16/fp16 (fp32 too; sequence/head strides free).
        k_cache, v_cache: [num_blocks, block_size, Hkv, D]; bf16/fp16, fp8 e4m3 or int8.
        block_tables: int32 [S, max_blocks_per_seq].
        seq_lens: int32 [S], context length including the current token (its K/V already written).
        softmax_scale: multiplier of q.k.
        k_scale, v_scale: fp32 [num_blocks, block_size, Hkv] for fp8/int8 caches, else None.
        num_splits: the most KV splits any sequence uses (each uses about ceil(seq_len / keys_per_split),
            see the module docstring); None picks :func:`default_num_splits`.
        out: optional [S, Hq, D] output buffer of q's dtype.
        pdl: launch both kernels with programmatic dependent launch (``kernels.pdl``; ValueError off
            Hopper).
        config: the partition kernel's launch shape (None: ``default_decode_config``).
        group_lens: optional int32 [S] row groups (see the module docstring): per row, how many rows
            (itself and those after it, at most ``max_group``) share its block table at nondecreasing
            contexts and are attended together, or 0 for a row inside an earlier row's group. The result
            is the same as without groups; only the K/V bytes read change. Not checked on the device.
        max_group: the most rows of one group (a compile-time tile size; used with ``group_lens``).
        merge_counters: optional int32 zeros, at least S * Hkv of them: split sequences are merged inside
            the partition kernel by the last of their programs to finish (no reduction kernel); the kernel
            leaves them zero, so one buffer serves every later call and graph replay on its stream. With
            ``group_lens`` a group counts under its first row.

    Returns:
        out [S, Hq, D] in q's dtype.
    """
    num_seqs, hq, hkv, quantized = _check_args(
        q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, num_splits, out, config, group_lens,
        max_group)
    if merge_counters is not None:
        check_tensor("merge_counters", merge_counters, 1, (torch.int32,))
        check_same_device(q=q, merge_counters=merge_counters)
        if merge_counters.numel() < num_seqs * hkv:
            raise ValueError(f"merge_counters has {merge_counters.numel()} counters, needs num_seqs * "
                             f"num_kv_heads = {num_seqs * hkv}")
    launch = pdl_launch_options(pdl, q.device)
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    d = q.shape[2]
    block_d = max(16, next_pow2(d))  # tl.dot needs K >= 16 on GPUs
    max_context = block_tables.shape[1] * k_cache.shape[1]  # host-known bound: no sync, graph-stable
    if num_splits is None:
        num_splits = default_num_splits(num_seqs, hkv, max_context, q.device)
    group = hq // hkv
    rows = max_group if group_lens is not None else 1
    cfg = config if config is not None else default_decode_config(d, quantized, q.device, num_seqs)
    split_keys = keys_per_split(max_context, num_splits, cfg.block_n)
    # Splits past cdiv(max_context, keys_per_split) could never be active (seq_len <= max_context): drop
    # them from the grid. Every sequence's split count is unchanged.
    num_splits = min(num_splits, max(1, -(-max_context // split_keys)))
    if num_splits > 1:
        po = torch.empty(num_seqs, hq, num_splits, block_d, dtype=torch.float32, device=q.device)
        pm = torch.empty(num_seqs, hq, num_splits, dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
    else:
        po = pm = pl = out  # unused dummies
    merge = merge_counters is not None and num_splits > 1
    _decode_partition_kernel[(num_seqs, hkv, num_splits)](
        q, k_cache, v_cache, k_scale if quantized else k_cache, v_scale if quantized else v_cache,
        block_tables, seq_lens, group_lens if group_lens is not None else seq_lens, out, po, pm, pl,
        merge_counters if merge else seq_lens, float(softmax_scale) * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.shape[1], hkv, hq, num_splits, split_keys,
        GROUP=group, MAX_ROWS=rows, BLOCK_G=max(16, next_pow2(group * rows)), HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_N=cfg.block_n, SPLIT=num_splits > 1, GROUPED=group_lens is not None, QUANT=quantized,
        DOT_DT=dot_dtype(q.dtype, q.device), MERGE_LAST=merge,
        PDL=pdl, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch,
    )
    if num_splits > 1 and not merge:
        decode_reduce_kernel[(num_seqs, hq)](
            po, pm, pl, seq_lens, out, out.stride(0), out.stride(1), hq, num_splits, split_keys,
            HEAD_DIM=d, BLOCK_D=block_d, BLOCK_SPLITS=max(16, next_pow2(num_splits)),
            PDL=pdl, num_warps=4 if block_d >= 128 else 2, **launch,
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
