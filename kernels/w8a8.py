"""W8A8 linear: dynamic per-token INT8 activations times per-channel INT8 weights on int8 tensor cores.

y[m, n] = (sum_k xq[m, k] * wq[n, k]) * xs[m] * ws[n], the sum exact in int32 (tl.dot on int8), the rescale
in the epilogue, output in x.dtype. Activation scale xs = amax(|x[m]|) / 127; q = round-half-away-from-zero
(x / xs) clamped to [-127, 127] (the reference rounds the same way, so it matches the kernel exactly in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._gemv_util import (
    FLOAT_DTYPES,
    SKINNY_MAX_M,
    check_activation,
    pick_block_n,
    prepare_out,
)
from kernels._quant_linear_kernels import store_tile, tile_coords
from kernels.quant_linear import Int8Weight, check_int8_call

_MAX_SINGLE_BLOCK = 16384
_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class W8A8Weight(Int8Weight):
    """Per-output-channel symmetric INT8 weight for W8A8: w ~= qweight * scale[:, None] (``Int8Weight``'s
    layout and checks; its own type so that ``w8a8_linear`` only takes weights quantised for it)."""


@triton.jit
def _round_clamp_i8(v):
    q = tl.where(v >= 0, v + 0.5, v - 0.5).to(tl.int32)  # float -> int truncates: half away from zero
    return tl.minimum(tl.maximum(q, -127), 127).to(tl.int8)


@triton.jit
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        mask = cols < K
        v = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(v), axis=0) / 127.0, 1e-10)
        tl.store(q_ptr + row * stride_q + cols, _round_clamp_i8(v / scale), mask=mask)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, K, BLOCK):
            c = start + cols
            v = tl.load(x_ptr + row * stride_x + c, mask=c < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(v))
        scale = tl.maximum(tl.max(amax, axis=0) / 127.0, 1e-10)
        for start in range(0, K, BLOCK):
            c = start + cols
            v = tl.load(x_ptr + row * stride_x + c, mask=c < K, other=0.0).to(tl.float32)
            tl.store(q_ptr + row * stride_q + c, _round_clamp_i8(v / scale), mask=c < K)
    tl.store(s_ptr + row, scale)


@triton.jit
def _w8a8_mm_kernel(xq_ptr, xs_ptr, wq_ptr, ws_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    m64, n64, mmask, nmask = tile_coords(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        kmask = k < K
        amask = mmask[:, None] & kmask[None, :]
        bmask = nmask[None, :] & kmask[:, None]
        a = tl.load(xq_ptr + m64[:, None] * stride_xm + k[None, :], mask=amask, other=0)
        b = tl.load(wq_ptr + n64[None, :] * stride_wn + k[:, None], mask=bmask, other=0)
        acc = tl.dot(a, b, acc=acc, out_dtype=tl.int32)  # 3.6 asserts acc dtype == out_dtype
    xs = tl.load(xs_ptr + m64, mask=mmask, other=0.0)
    ws = tl.load(ws_ptr + n64, mask=nmask, other=0.0)
    store_tile(out_ptr, m64, n64, mmask, nmask, stride_om, acc.to(tl.float32) * xs[:, None] * ws[None, :])


def quantize_w8a8(w: torch.Tensor) -> W8A8Weight:
    """Per-channel symmetric INT8 weight: scale = amax(|w[n]|) / 127, q = round(w / scale) in [-127, 127].

    Args:
        w: [N, K] float weight.

    Returns:
        W8A8Weight on w's device.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.dtype not in FLOAT_DTYPES:
        raise ValueError(f"w must be a 2-D float [N, K] tensor, got {getattr(w, 'dtype', type(w).__name__)} "
                         f"{tuple(getattr(w, 'shape', ()))}")
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / 127.0).clamp_min(1e-10)
    q = torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return W8A8Weight(q.contiguous(), scale.contiguous())


def quantize_act_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token (per-row) symmetric INT8 quantisation of activations.

    Args:
        x: [M, K] bf16/fp16/fp32 (rows contiguous).

    Returns:
        (xq int8 [M, K], xs float32 [M]) with x ~= xq * xs[:, None].
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [M, K], got {getattr(x, 'shape', type(x).__name__)}")
    check_activation(x, x.shape[1])
    mrows, k = x.shape
    xq = torch.empty((mrows, k), dtype=torch.int8, device=x.device)
    xs = torch.empty((mrows,), dtype=torch.float32, device=x.device)
    single = triton.next_power_of_2(k) <= _MAX_SINGLE_BLOCK
    block = triton.next_power_of_2(k) if single else _CHUNK
    _act_quant_kernel[(mrows,)](x, xq, xs, k, x.stride(0), xq.stride(0), BLOCK=block, SINGLE=single,
                                num_warps=max(1, min(16, block // 256)))
    return xq, xs


def w8a8_linear(x: torch.Tensor, w: W8A8Weight, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = dequant(quantize_act_per_token(x)) @ dequant(w).T on int8 tensor cores.

    Args:
        x: [M, K] bf16/fp16/fp32 activations (rows contiguous).
        w: W8A8Weight of shape [N, K].
        out: optional [M, N] output buffer of x.dtype.

    Returns:
        [M, N] tensor of x.dtype.
    """
    n, k = check_int8_call(x, w, W8A8Weight)
    m = x.shape[0]
    out = prepare_out(x, n, out)
    xq, xs = quantize_act_per_token(x)
    if m <= SKINNY_MAX_M:
        cfg = {"BLOCK_M": 16, "BLOCK_N": pick_block_n(n, x.device, 64, 16), "BLOCK_K": 128,
               "num_warps": 4, "num_stages": 4}
    elif m <= 64:
        cfg = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4}
    else:
        cfg = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "num_warps": 8, "num_stages": 3}
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _w8a8_mm_kernel[grid](xq, xs, w.qweight, w.scale, out, m, n, k, xq.stride(0), w.qweight.stride(0),
                          out.stride(0), GROUP_M=8, **cfg)
    return out


def quantize_act_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch reference of :func:`quantize_act_per_token` (same rounding rule)."""
    xf = x.float()
    xs = (xf.abs().amax(dim=1) / 127.0).clamp_min(1e-10)
    v = xf / xs[:, None]
    q = torch.where(v >= 0, v + 0.5, v - 0.5).trunc().clamp_(-127, 127).to(torch.int8)
    return q, xs


def w8a8_linear_ref(x: torch.Tensor, w: W8A8Weight) -> torch.Tensor:
    """Plain PyTorch reference of :func:`w8a8_linear` (integer product in float64, exact)."""
    xq, xs = quantize_act_per_token_ref(x)
    acc = xq.double() @ w.qweight.double().T
    return (acc.float() * xs[:, None] * w.scale[None, :]).to(x.dtype)
