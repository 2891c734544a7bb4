"""Rotary position embedding (HF Llama rotate-half convention) with Llama-3 frequency scaling.

cos_sin cache: fp32 [max_pos, head_dim]; row p holds cos(p * inv_freq) in its first half and
sin(p * inv_freq) in its second half (inv_freq has head_dim / 2 entries). apply_rope_ rotates q and k in
place: x1, x2 = halves of x; x1' = x1 cos - x2 sin; x2' = x2 cos + x1 sin (computed in fp32, rounded once).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._util import ACT_DTYPES, check_same_device, check_shape, check_tensor, next_pow2
from kernels.rope_tables import rope_cos_sin, rope_inv_freq

__all__ = ["apply_rope_", "apply_rope_ref", "rope_cos_sin", "rope_inv_freq"]

@triton.jit
def load_cos_sin(cs_ptr, pos, offs, f_ok, HALF: tl.constexpr):
    """cos and sin rows of position ``pos`` as [1, BLOCK_HALF] fp32 (masked lanes: cos 1, sin 0)."""
    row = cs_ptr + pos * (2 * HALF) + offs
    cos = tl.load(row, mask=f_ok, other=1.0)[None, :]
    sin = tl.load(row + HALF, mask=f_ok, other=0.0)[None, :]
    return cos, sin


@triton.jit
def rope_heads_(x_ptr, stride_h, num_heads, cos, sin, offs, f_ok, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rotate the heads of one token in place (x_ptr: the token's first head) and return the result.

    Returns:
        (first halves, second halves) as rounded to the tensor's dtype, each [BLOCK_H, BLOCK_HALF]
        (rows past num_heads and lanes past HALF hold 0).
    """
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h[:, None] < num_heads) & f_ok[None, :]
    p1 = x_ptr + offs_h[:, None] * stride_h + offs[None, :]
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
    y1 = (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty)
    y2 = (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty)
    tl.store(p1, y1, mask=mask)
    tl.store(p1 + HALF, y2, mask=mask)
    return y1, y2


@triton.jit
def rope_token_(q_ptr, k_ptr, pos_ptr, cs_ptr, t, stride_qt, stride_qh, stride_kt, stride_kh, num_q_heads,
                num_k_heads, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr,
                BLOCK_HK: tl.constexpr):
    """Rotate every q and k head of token ``t`` in place at its position.

    Returns:
        (k first halves, k second halves) as stored, each [BLOCK_HK, BLOCK_HALF], and the lane offsets
        and their mask (lanes < HALF).
    """
    pos = tl.load(pos_ptr + t).to(tl.int64)
    offs = tl.arange(0, BLOCK_HALF)
    f_ok = offs < HALF
    cos, sin = load_cos_sin(cs_ptr, pos, offs, f_ok, HALF)
    rope_heads_(q_ptr + t * stride_qt, stride_qh, num_q_heads, cos, sin, offs, f_ok, HALF, BLOCK_HQ)
    k1, k2 = rope_heads_(k_ptr + t * stride_kt, stride_kh, num_k_heads, cos, sin, offs, f_ok, HALF, BLOCK_HK)
    return k1, k2, offs, f_ok


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, pos_ptr, cs_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
    num_q_heads, num_k_heads,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
):
    rope_token_(q_ptr, k_ptr, pos_ptr, cs_ptr, tl.program_id(0).to(tl.int64), stride_qt, stride_qh, stride_kt,
                stride_kh, num_q_heads, num_k_heads, HALF, BLOCK_HALF, BLOCK_HQ, BLOCK_HK)


def _check_args(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    check_tensor("q", q, 3, ACT_DTYPES)
    check_tensor("k", k, 3, (q.dtype,))
    t, _, d = q.shape
    if d % 2:
        raise ValueError(f"q head_dim must be even, got {d}")
    if k.shape[0] != t or k.shape[2] != d:
        raise ValueError(f"k must have shape ({t}, num_kv_heads, {d}), got {tuple(k.shape)}")
    check_positions(positions, cos_sin, t, d)
    check_same_device(q=q, k=k, positions=positions, cos_sin=cos_sin)


def check_positions(positions: torch.Tensor, cos_sin: torch.Tensor, num_tokens: int, head_dim: int) -> None:
    """Raise ValueError unless ``positions`` is an int32/int64 [num_tokens] tensor and ``cos_sin`` a contiguous
    fp32 [max_pos, head_dim] table (:func:`rope_cos_sin`)."""
    check_tensor("positions", positions, 1, (torch.int64, torch.int32))
    check_shape("positions", positions, (num_tokens,))
    check_tensor("cos_sin", cos_sin, 2, (torch.float32,))
    if cos_sin.shape[1] != head_dim or not cos_sin.is_contiguous():
        raise ValueError(f"cos_sin must be a contiguous [max_pos, {head_dim}] tensor, got {tuple(cos_sin.shape)}")


def apply_rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """Rotate q and k in place by their token positions.

    Args:
        q: [T, Hq, D], k: [T, Hkv, D] (same float dtype; token/head strides free, last dim contiguous).
        positions: int64 [T], each in [0, max_pos) (not checked on the device: no host sync).
        cos_sin: fp32 [max_pos, D] from :func:`rope_cos_sin`.
    """
    _check_args(q, k, positions, cos_sin)
    t, hq, d = q.shape
    if t == 0:
        return
    half = d // 2
    _rope_kernel[(t,)](
        q, k, positions, cos_sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1), hq, k.shape[1],
        HALF=half, BLOCK_HALF=next_pow2(half), BLOCK_HQ=next_pow2(hq), BLOCK_HK=next_pow2(k.shape[1]),
        num_warps=4,
    )


def apply_rope_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """Plain PyTorch reference of :func:`apply_rope_` (fp32 math, in place)."""
    _check_args(q, k, positions, cos_sin)
    half = q.shape[2] // 2
    cs = cos_sin[positions.long()]
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    for x in (q, k):
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        x.copy_(rotated.to(x.dtype))
