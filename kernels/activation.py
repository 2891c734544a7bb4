"""SwiGLU activation on a fused gate_up projection: ``silu(gate) * up`` (fp32 math)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._gemv_util import FLOAT_DTYPES, prepare_out

_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(gu_ptr, out_ptr, inter, stride_in, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    g = tl.load(gu_ptr + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_in + inter + cols, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-tl.abs(g))  # in (0, 1]: no overflow for large |g|
    sig = tl.where(g >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    y = g * sig * u
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(gate) * up where gate = gate_up[:, :I] and up = gate_up[:, I:].

    Args:
        gate_up: [T, 2I] bf16/fp16/fp32 output of the fused gate/up projection (rows contiguous).
        out: optional [T, I] output buffer of gate_up.dtype.

    Returns:
        [T, I] tensor of gate_up.dtype.
    """
    if not isinstance(gate_up, torch.Tensor) or gate_up.dim() != 2:
        raise ValueError(f"gate_up must be a 2-D tensor [T, 2I], got {getattr(gate_up, 'shape', None)}")
    if gate_up.shape[1] % 2 != 0:
        raise ValueError(f"gate_up's last dimension must be even (2I), got {gate_up.shape[1]}")
    if gate_up.dtype not in FLOAT_DTYPES:
        raise ValueError(f"gate_up must be bfloat16, float16 or float32, got {gate_up.dtype}")
    if gate_up.stride(1) != 1:
        raise ValueError("gate_up must have contiguous rows")
    t, two_i = gate_up.shape
    inter = two_i // 2
    out = prepare_out(gate_up, inter, out)
    if t == 0 or inter == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(inter))
    grid = (t, triton.cdiv(inter, block))
    _silu_and_mul_kernel[grid](gate_up, out, inter, gate_up.stride(0), out.stride(0), BLOCK=block,
                               num_warps=4)
    return out


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference of :func:`silu_and_mul`."""
    inter = gate_up.shape[-1] // 2
    g, u = gate_up[:, :inter].float(), gate_up[:, inter:].float()
    return (torch.nn.functional.silu(g) * u).to(gate_up.dtype)
