"""Rotary embedding of q/k fused with the paged KV-cache write: one launch instead of apply_rope_ + write_kv.

Per token, one program rotates all q heads and all k heads in place (kernels/rope.py numerics: fp32 math,
rounded once to the activation dtype), then stores the rotated k, rounded as the caller now sees it, and v
into the cache at the token's slot, quantised exactly as kernels/kv_write.py does (the same jit helpers).
A negative slot skips the cache write of that token (its q and k are still rotated), as in write_kv.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._util import next_pow2
from kernels.kv_write import _check_args as _check_write_args
from kernels.kv_write import kv_codes, kv_scale, quant_constexprs, write_kv_ref
from kernels.pdl import pdl_enter, pdl_launch_options, pdl_trigger, pdl_wait
from kernels.rope import _check_args as _check_rope_args
from kernels.rope import apply_rope_ref, rope_token_


@triton.jit
def _rope_kv_write_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, cs_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, slot_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    num_q_heads, num_kv_heads,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr,
    QUANT: tl.constexpr, IS_INT8: tl.constexpr, SOFT_FP8: tl.constexpr, QMAX_C: tl.constexpr,
    AMAX_FLOOR: tl.constexpr, PDL: tl.constexpr, LATE_TRIGGER: tl.constexpr,
):
    # One program per token; every head is handled as two [heads, HALF] tiles (the rotate-half pairs).
    if LATE_TRIGGER:
        pdl_wait(PDL)
    else:
        pdl_enter(PDL)
    t = tl.program_id(0).to(tl.int64)
    k1, k2, offs, f_ok = rope_token_(q_ptr, k_ptr, pos_ptr, cs_ptr, t, stride_qt, stride_qh, stride_kt, stride_kh,
                                     num_q_heads, num_kv_heads, HALF, BLOCK_HALF, BLOCK_HQ, BLOCK_HKV)

    slot = tl.load(slot_ptr + t)
    offs_h = tl.arange(0, BLOCK_HKV)
    # (slot + 0 * offs_h) makes the skip flag a tensor: the interpreter rejects scalar-bool masks.
    hmask = (offs_h < num_kv_heads) & ((slot + 0 * offs_h) >= 0)
    mask = hmask[:, None] & f_ok[None, :]
    v1_ptr = v_ptr + t * stride_vt + offs_h[:, None] * stride_vh + offs[None, :]
    v1 = tl.load(v1_ptr, mask=mask, other=0.0)
    v2 = tl.load(v1_ptr + HALF, mask=mask, other=0.0)
    # Row of (slot, head) in the flattened [num_blocks * block_size * num_kv_heads] cache.
    row = tl.where(slot >= 0, slot, 0).to(tl.int64) * num_kv_heads + offs_h
    c1 = row[:, None] * (2 * HALF) + offs[None, :]
    ety = kc_ptr.dtype.element_ty
    if QUANT:
        # Masked lanes hold 0, so the amax of the two halves is the amax of the whole head.
        k_sc = kv_scale(tl.maximum(tl.max(tl.abs(k1.to(tl.float32)), axis=1),
                                   tl.max(tl.abs(k2.to(tl.float32)), axis=1)), QMAX_C, AMAX_FLOOR)
        v_sc = kv_scale(tl.maximum(tl.max(tl.abs(v1.to(tl.float32)), axis=1),
                                   tl.max(tl.abs(v2.to(tl.float32)), axis=1)), QMAX_C, AMAX_FLOOR)
        tl.store(kc_ptr + c1, kv_codes(k1, k_sc, QMAX_C, IS_INT8, SOFT_FP8).to(ety), mask=mask)
        tl.store(kc_ptr + c1 + HALF, kv_codes(k2, k_sc, QMAX_C, IS_INT8, SOFT_FP8).to(ety), mask=mask)
        tl.store(vc_ptr + c1, kv_codes(v1, v_sc, QMAX_C, IS_INT8, SOFT_FP8).to(ety), mask=mask)
        tl.store(vc_ptr + c1 + HALF, kv_codes(v2, v_sc, QMAX_C, IS_INT8, SOFT_FP8).to(ety), mask=mask)
        tl.store(ks_ptr + row, k_sc, mask=hmask)
        tl.store(vs_ptr + row, v_sc, mask=hmask)
    else:
        tl.store(kc_ptr + c1, k1.to(ety), mask=mask)
        tl.store(kc_ptr + c1 + HALF, k2.to(ety), mask=mask)
        tl.store(vc_ptr + c1, v1.to(ety), mask=mask)
        tl.store(vc_ptr + c1 + HALF, v2.to(ety), mask=mask)
    if LATE_TRIGGER:
        pdl_trigger(PDL)


def _check_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None, v_scale: torch.Tensor | None,
) -> bool:
    """Both kernels' checks (ValueError naming the argument); returns whether the cache is quantised."""
    _check_rope_args(q, k, positions, cos_sin)
    return _check_write_args(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)[3]


def rope_and_write_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None, pdl: bool = False,
    late_trigger: bool = False,
) -> None:
    """Rotate q and k in place, then store the rotated k and v of ``T`` tokens into the paged caches.

    Same effect as ``apply_rope_(q, k, positions, cos_sin)`` followed by ``write_kv(k, v, k_cache, v_cache,
    slot_mapping, k_scale, v_scale)``, in one launch.

    Args:
        q: [T, Hq, D]; k, v: [T, Hkv, D] (q and k of one float dtype, v bf16/fp16/fp32; token/head strides
            free, last dim contiguous: views into a fused qkv output are fine).
        positions: int64/int32 [T], each in [0, max_pos) (not checked on the device).
        cos_sin: fp32 [max_pos, D] from :func:`kernels.rope.rope_cos_sin`.
        k_cache, v_cache: [num_blocks, block_size, Hkv, D] in bf16/fp16/fp8 e4m3/int8.
        slot_mapping: int64/int32 [T]; slot = block_id * block_size + offset, negative skips the write.
        k_scale, v_scale: fp32 [num_blocks, block_size, Hkv] for fp8/int8 caches, else None.
        pdl: launch with programmatic dependent launch (``kernels.pdl``; ValueError off Hopper).
        late_trigger: with ``pdl``, let the next kernel launch only after the stores (else right after
            the wait for the previous kernel).
    """
    quantized = _check_args(q, k, v, positions, cos_sin, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    num_tokens, hq, d = q.shape
    if num_tokens == 0:
        return
    hkv, half = k.shape[1], d // 2
    launch = pdl_launch_options(pdl, q.device)
    _rope_kv_write_kernel[(num_tokens,)](
        q, k, v, positions, cos_sin, k_cache, v_cache,
        k_scale if quantized else k_cache, v_scale if quantized else v_cache,  # dummies when unused
        slot_mapping,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        hq, hkv,
        HALF=half, BLOCK_HALF=next_pow2(half), BLOCK_HQ=next_pow2(hq), BLOCK_HKV=next_pow2(hkv),
        **quant_constexprs(k_cache), PDL=pdl, LATE_TRIGGER=late_trigger, num_warps=4, **launch,
    )


def rope_and_write_kv_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
) -> None:
    """Plain PyTorch reference of :func:`rope_and_write_kv`: apply_rope_ref, then write_kv_ref."""
    _check_args(q, k, v, positions, cos_sin, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    apply_rope_ref(q, k, positions, cos_sin)
    write_kv_ref(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
