"""Rotary position embedding (HF Llama rotate-half convention) with Llama-3 frequency scaling.

cos_sin cache: fp32 [max_pos, head_dim]; row p holds cos(p * inv_freq) in its first half and
sin(p * inv_freq) in its second half (inv_freq has head_dim / 2 entries). apply_rope_ rotates q and k in
place: x1, x2 = halves of x; x1' = x1 cos - x2 sin; x2' = x2 cos + x1 sin (computed in fp32, rounded once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import triton
import triton.language as tl

from kernels._util import ACT_DTYPES, check_same_device, check_shape, check_tensor, next_pow2

_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _rope_type(scaling: Mapping[str, object] | None) -> str:
    if scaling is None:
        return "default"
    if not isinstance(scaling, Mapping):
        raise ValueError(f"scaling must be a dict or None, got {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ValueError(f"scaling rope_type {kind!r} is not supported (only 'default' and 'llama3')")
    return str(kind)


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, object] | None = None) -> torch.Tensor:
    """fp32 [head_dim // 2] inverse frequencies, Llama-3 scaled when scaling['rope_type'] == 'llama3'.

    Args:
        head_dim: rotary dimension (even).
        theta: RoPE base (rope_theta).
        scaling: None, or a dict with rope_type ('default' | 'llama3'; older 'type' also read) and, for
            llama3, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings. Extra
            keys (e.g. rope_theta of transformers 5 rope_parameters) are ignored.
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
    if theta <= 0:
        raise ValueError(f"theta must be positive, got {theta}")
    kind = _rope_type(scaling)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if kind == "default":
        return inv_freq
    assert scaling is not None
    missing = [key for key in _LLAMA3_KEYS if key not in scaling]
    if missing:
        raise ValueError(f"scaling of rope_type 'llama3' lacks {missing}")
    factor = float(scaling["factor"])  # type: ignore[arg-type]
    low = float(scaling["low_freq_factor"])  # type: ignore[arg-type]
    high = float(scaling["high_freq_factor"])  # type: ignore[arg-type]
    old_ctx = float(scaling["original_max_position_embeddings"])  # type: ignore[arg-type]
    if not (factor > 0 and high > low > 0 and old_ctx > 0):
        raise ValueError(f"scaling has invalid llama3 parameters: {dict(scaling)}")
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, the band between blended.
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(
    head_dim: int, max_pos: int, theta: float, scaling: Mapping[str, object] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Build the cos/sin cache, fp32 [max_pos, head_dim] (first half cos, second half sin).

    Args:
        head_dim: rotary dimension (even).
        max_pos: number of positions (rows).
        theta: RoPE base.
        scaling: see :func:`rope_inv_freq`.
        device: where to put the cache (default CPU).
    """
    if max_pos <= 0:
        raise ValueError(f"max_pos must be positive, got {max_pos}")
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    freqs = torch.arange(max_pos, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)


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
    check_tensor("positions", positions, 1, (torch.int64, torch.int32))
    check_shape("positions", positions, (t,))
    check_tensor("cos_sin", cos_sin, 2, (torch.float32,))
    if cos_sin.shape[1] != d or not cos_sin.is_contiguous():
        raise ValueError(f"cos_sin must be a contiguous [max_pos, {d}] tensor, got {tuple(cos_sin.shape)}")
    check_same_device(q=q, k=k, positions=positions, cos_sin=cos_sin)


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
