"""Decode attention with the RoPE and the KV-cache write of the new token fused in: one launch fewer per layer.

Same result as ``rope_and_write_kv`` (rotate q and k, store k and v at the token's slot) followed by
``paged_decode_attention``, for decode-only steps (one new token per sequence, at position seq_len - 1).
Program (sequence, kv head, split) rotates its group's query rows in registers (q itself is not written);
the program of the split holding the new position also rotates that kv head's new key, stores it and the
value into the cache (quantised exactly as ``kv_write`` does), then synchronises its threads, so the
stored key and value are read back like every cached one. Other splits never read the new position.
A negative slot skips the write, as in ``write_kv``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention_decode import _check_args as _check_decode_args
from kernels.attention_decode import attend_split, launch_decode, paged_decode_attention_ref, split_range, store_split
from kernels.decode_launch import DecodeConfig
from kernels.kv_write import kv_codes, kv_scale, quant_constexprs
from kernels.pdl import pdl_enter
from kernels.rope_kv_write import _check_args as _check_rope_kv_args
from kernels.rope_kv_write import rope_and_write_kv_ref


@triton.jit
def _rotate(ptr, offs_d, d_ok, cos, sin, HALF: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Rows at ``ptr`` [R, 1] rotated (rotate-half), fp32 math rounded once to the input dtype: [R, BLOCK_D]."""
    x = tl.load(ptr + offs_d[None, :], mask=d_ok, other=0.0)
    partner = tl.load(ptr + ((offs_d + HALF) % HEAD_DIM)[None, :], mask=d_ok, other=0.0).to(tl.float32)
    sign = tl.where(offs_d < HALF, -1.0, 1.0)
    return (x.to(tl.float32) * cos[None, :] + (sign * sin)[None, :] * partner).to(x.dtype)


@triton.jit(do_not_specialize=["num_splits", "keys_per_split"])
def _rope_decode_partition_kernel(
    k_ptr, v_ptr, pos_ptr, cs_ptr, slot_ptr, stride_ks, stride_kh, stride_vs, stride_vh,
    q_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_ptr, seq_lens_ptr, out_ptr, po_ptr, pm_ptr, pl_ptr,
    qk_scale, stride_qs, stride_qh, stride_os, stride_oh, stride_bt,
    block_size, num_kv_heads, num_q_heads, num_splits, keys_per_split,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, QUANT: tl.constexpr, DOT_DT: tl.constexpr,
    PDL: tl.constexpr, IS_INT8: tl.constexpr, SOFT_FP8: tl.constexpr, QMAX_C: tl.constexpr,
    AMAX_FLOOR: tl.constexpr,
):
    pdl_enter(PDL)
    s = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx, n_s, lo, hi = split_range(seq_lens_ptr, s, split, num_splits, keys_per_split)
    if split >= n_s:
        return
    HALF = HEAD_DIM // 2
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    head = kvh * GROUP + offs_g
    g_ok = offs_g < GROUP
    d_ok = offs_d < HEAD_DIM
    io_mask = g_ok[:, None] & d_ok[None, :]
    s64 = s.to(tl.int64)
    cs_row = cs_ptr + tl.load(pos_ptr + s).to(tl.int64) * HEAD_DIM + offs_d % HALF
    cos = tl.load(cs_row, mask=d_ok, other=0.0)
    sin = tl.load(cs_row + HALF, mask=d_ok, other=0.0)
    q = _rotate(q_ptr + s64 * stride_qs + head[:, None] * stride_qh, offs_d, io_mask, cos, sin, HALF, HEAD_DIM)
    if split == n_s - 1:  # this program's keys end at the new position: store its key and value first
        slot = tl.load(slot_ptr + s)
        w_ok = d_ok[None, :] & ((slot + 0 * offs_d) >= 0)[None, :]  # [1, BLOCK_D]; a negative slot skips
        k = _rotate(k_ptr + s64 * stride_ks + kvh * stride_kh + tl.zeros([1, 1], tl.int64), offs_d, d_ok[None, :],
                    cos, sin, HALF, HEAD_DIM)
        v = tl.load(v_ptr + s64 * stride_vs + kvh * stride_vh + offs_d[None, :], mask=d_ok[None, :], other=0.0)
        row = tl.where(slot >= 0, slot, 0).to(tl.int64) * num_kv_heads + kvh + tl.zeros([1], tl.int64)
        dst = row[:, None] * HEAD_DIM + offs_d[None, :]
        ety = kc_ptr.dtype.element_ty
        if QUANT:
            k_sc = kv_scale(tl.max(tl.abs(k.to(tl.float32)), axis=1), QMAX_C, AMAX_FLOOR)
            v_sc = kv_scale(tl.max(tl.abs(v.to(tl.float32)), axis=1), QMAX_C, AMAX_FLOOR)
            tl.store(kc_ptr + dst, kv_codes(k, k_sc, QMAX_C, IS_INT8, SOFT_FP8).to(ety), mask=w_ok)
            tl.store(vc_ptr + dst, kv_codes(v, v_sc, QMAX_C, IS_INT8, SOFT_FP8).to(ety), mask=w_ok)
            s_ok = (slot + tl.zeros([1], tl.int32)) >= 0
            tl.store(ks_ptr + row, k_sc, mask=s_ok)
            tl.store(vs_ptr + row, v_sc, mask=s_ok)
        else:
            tl.store(kc_ptr + dst, k.to(ety), mask=w_ok)
            tl.store(vc_ptr + dst, v.to(ety), mask=w_ok)
        tl.debug_barrier()  # the block's threads read the stored key and value below
    acc, m_i, l_i = attend_split(q.to(DOT_DT), qk_scale, lo, hi, ctx, s, kvh, kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_ptr,
                                 stride_bt, block_size, num_kv_heads, BLOCK_G, HEAD_DIM, BLOCK_D, BLOCK_N, QUANT,
                                 DOT_DT)
    store_split(out_ptr, po_ptr, pm_ptr, pl_ptr, s, head, split, n_s, g_ok, offs_d, io_mask, stride_os, stride_oh,
                num_q_heads, num_splits, acc, m_i, l_i, BLOCK_D, SPLIT)


def rope_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, softmax_scale: float, k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None, num_splits: int | None = None, out: torch.Tensor | None = None,
    pdl: bool = False, config: DecodeConfig | None = None,
) -> torch.Tensor:
    """RoPE on the new q and k, the new k and v into the paged cache, and decode attention, in one pass.

    Args:
        q: [S, Hq, D] new queries (not rotated; left unchanged); k, v: [S, Hkv, D] the new keys and values
            (k not rotated; left unchanged). Token/head strides free, last dim contiguous (views into a
            fused qkv output are fine).
        positions: int64/int32 [S], the new tokens' positions (seq_lens - 1; not checked on the device).
        cos_sin: fp32 [max_pos, D] from ``kernels.rope.rope_cos_sin``.
        k_cache, v_cache, k_scale, v_scale: the paged cache, as in ``paged_decode_attention``.
        slot_mapping: int64/int32 [S], each new token's slot (its block-table entry; negative skips).
        block_tables, seq_lens, softmax_scale, num_splits, out, pdl, config: as in ``paged_decode_attention``
            (seq_lens counts the new token).

    Returns:
        out [S, Hq, D] in q's dtype.
    """
    quantized = _check_rope_kv_args(q, k, v, positions, cos_sin, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    _check_decode_args(q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, num_splits, out, config)
    if out is None:
        out = torch.empty_like(q)
    head_args = (k, v, positions, cos_sin, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1))
    consts = {name: val for name, val in quant_constexprs(k_cache).items() if name != "QUANT"}
    launch_decode(_rope_decode_partition_kernel, head_args, consts, q, k_cache, v_cache, block_tables, seq_lens,
                  softmax_scale, k_scale if quantized else None, v_scale if quantized else None, num_splits, out,
                  pdl, config)
    return out


def rope_decode_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, softmax_scale: float, k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The unfused path in plain PyTorch on copies of q and k: ``rope_and_write_kv_ref``, then the decode
    attention's reference."""
    q, k = q.clone(), k.clone()
    rope_and_write_kv_ref(q, k, v, positions, cos_sin, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    return paged_decode_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale, k_scale, v_scale)
