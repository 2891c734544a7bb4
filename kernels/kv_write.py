"""Write new tokens' K/V into the paged cache, quantising to FP8 e4m3 / INT8 with per-token-per-head scales.

Layout (KERNEL_API.md): caches [num_blocks, block_size, num_kv_heads, head_dim]; slot of a token =
block_id * block_size + offset; slot -1 means "do not write this token". Quantized caches store
q = round(x / scale) with scale = max(amax, tiny) / QMAX per (token, head) and dequantise as q * scale.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._util import (
    ACT_DTYPES,
    QMAX,
    check_kv_cache,
    check_same_device,
    check_shape,
    check_tensor,
    next_pow2,
    round_to_fp8e4m3,
)

#: Floor of amax so an all-zero head gets a positive scale (its codes are 0 either way).
_AMAX_FLOOR = 1e-12


@triton.jit
def kv_scale(amax, QMAX_C: tl.constexpr, AMAX_FLOOR: tl.constexpr):
    """Per-(token, head) scale from the heads' fp32 amax [H]: max(amax, floor) / QMAX."""
    return tl.maximum(amax, AMAX_FLOOR) / QMAX_C


@triton.jit
def kv_codes(x, scale, QMAX_C: tl.constexpr, IS_INT8: tl.constexpr, SOFT_FP8: tl.constexpr):
    """Codes of x [H, N] (any float dtype) under the row scales [H], as fp32 ready to cast to the cache."""
    xq = x.to(tl.float32) / scale[:, None]
    # Clamp first: rounding error can push |x / scale| a hair above QMAX.
    xq = tl.minimum(tl.maximum(xq, -QMAX_C), QMAX_C)
    if IS_INT8:
        # Round half away from zero (the reference uses the same rule).
        xq = tl.where(xq >= 0, tl.floor(xq + 0.5), -tl.floor(-xq + 0.5))
    elif SOFT_FP8:
        # Interpreter only: its fp32 -> fp8 cast mis-rounds, so round exactly first (see _util).
        xq = round_to_fp8e4m3(xq)
    return xq


def quant_constexprs(cache: torch.Tensor) -> dict[str, bool | float]:
    """Compile-time constants of the quantising store into ``cache`` (QUANT, IS_INT8, SOFT_FP8, QMAX_C,
    AMAX_FLOOR), as keyword arguments of a launch whose kernel stores through kv_scale / kv_codes."""
    return {"QUANT": cache.dtype in QMAX, "IS_INT8": cache.dtype == torch.int8,
            "SOFT_FP8": cache.device.type != "cuda", "QMAX_C": QMAX.get(cache.dtype, 1.0),
            "AMAX_FLOOR": _AMAX_FLOOR}


@triton.jit
def _kv_write_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    num_heads, head_dim,
    QUANT: tl.constexpr, IS_INT8: tl.constexpr, SOFT_FP8: tl.constexpr, QMAX_C: tl.constexpr,
    AMAX_FLOOR: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per token, all kv heads at once.
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    valid = slot >= 0
    # (slot + 0 * offs_h) makes the skip flag a tensor: the interpreter rejects scalar-bool masks.
    hmask = (offs_h < num_heads) & ((slot + 0 * offs_h) >= 0)
    mask = hmask[:, None] & (offs_d[None, :] < head_dim)
    slot_safe = tl.where(valid, slot, 0).to(tl.int64)
    cache_off = slot_safe * num_heads * head_dim + offs_h[:, None] * head_dim + offs_d[None, :]
    k = tl.load(k_ptr + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask, other=0.0)
    v = tl.load(v_ptr + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask, other=0.0)
    if QUANT:
        k_sc = kv_scale(tl.max(tl.abs(k.to(tl.float32)), axis=1), QMAX_C, AMAX_FLOOR)
        v_sc = kv_scale(tl.max(tl.abs(v.to(tl.float32)), axis=1), QMAX_C, AMAX_FLOOR)
        kq = kv_codes(k, k_sc, QMAX_C, IS_INT8, SOFT_FP8)
        vq = kv_codes(v, v_sc, QMAX_C, IS_INT8, SOFT_FP8)
        tl.store(kc_ptr + cache_off, kq.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc_ptr + cache_off, vq.to(vc_ptr.dtype.element_ty), mask=mask)
        tl.store(ks_ptr + slot_safe * num_heads + offs_h, k_sc, mask=hmask)
        tl.store(vs_ptr + slot_safe * num_heads + offs_h, v_sc, mask=hmask)
    else:
        tl.store(kc_ptr + cache_off, k.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc_ptr + cache_off, v.to(vc_ptr.dtype.element_ty), mask=mask)


def _check_args(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None,
) -> tuple[int, int, int, bool]:
    _, _, hkv, d, quantized = check_kv_cache(k_cache, v_cache, k_scale, v_scale)
    check_tensor("k", k, 3, ACT_DTYPES)
    check_tensor("v", v, 3, ACT_DTYPES)
    num_tokens = k.shape[0]
    check_shape("k", k, (num_tokens, hkv, d))
    check_shape("v", v, (num_tokens, hkv, d))
    check_tensor("slot_mapping", slot_mapping, 1, (torch.int64, torch.int32))
    check_shape("slot_mapping", slot_mapping, (num_tokens,))
    check_same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping,
                      k_scale=k_scale, v_scale=v_scale)
    return num_tokens, hkv, d, quantized


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
) -> None:
    """Store ``k``/``v`` of ``T`` tokens into the paged caches in place.

    Args:
        k, v: [T, num_kv_heads, head_dim] bf16/fp16/fp32 (token/head strides free, last dim contiguous).
        k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] in bf16/fp16/fp8 e4m3/int8.
        slot_mapping: int64 [T]; slot = block_id * block_size + offset, -1 skips the token.
        k_scale, v_scale: fp32 [num_blocks, block_size, num_kv_heads] for fp8/int8 caches, else None.
    """
    num_tokens, hkv, d, quantized = _check_args(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    if num_tokens == 0:
        return
    _kv_write_kernel[(num_tokens,)](
        k, v, k_cache, v_cache,
        k_scale if quantized else k_cache, v_scale if quantized else v_cache,  # dummies when unused
        slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        hkv, d,
        **quant_constexprs(k_cache), BLOCK_H=next_pow2(hkv), BLOCK_D=next_pow2(d),
        num_warps=4,
    )


def quantize_kv_ref(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(token, head) symmetric quantisation of x [..., head_dim] to fp8 e4m3 or int8.

    Returns:
        (codes of ``dtype`` with x's shape, fp32 scales of shape x.shape[:-1]).
    """
    qmax = QMAX[dtype]
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp_min(_AMAX_FLOOR) / qmax
    q = (xf / scale[..., None]).clamp(-qmax, qmax)
    if dtype == torch.int8:
        q = torch.sign(q) * torch.floor(q.abs() + 0.5)
    return q.to(dtype), scale


def write_kv_ref(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
) -> None:
    """Plain PyTorch reference of :func:`write_kv` (same arguments, same in-place effect)."""
    _check_args(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    for src, cache, scale in ((k[keep], k_cache, k_scale), (v[keep], v_cache, v_scale)):
        flat = cache.view(-1, hkv, d)
        if scale is None:
            flat[slots] = src.to(cache.dtype)
        else:
            codes, sc = quantize_kv_ref(src, cache.dtype)
            flat[slots] = codes
            scale.view(-1, hkv)[slots] = sc
