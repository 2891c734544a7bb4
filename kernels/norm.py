"""RMSNorm and fused residual-add + RMSNorm (one program per row, fp32 math).

``fused_add_rms_norm`` reads x and residual once, writes the new residual (x + residual, summed in fp32
and stored in x.dtype) and the normalised output in the same pass. Normalisation uses the stored (rounded)
residual, so the output equals ``rms_norm`` of the returned residual, as in the HF/vLLM convention.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._gemv_util import FLOAT_DTYPES

# Rows up to this many elements stay in registers (one read); longer rows loop over chunks.
_MAX_SINGLE_BLOCK = 16384
_CHUNK = 4096


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, H, eps,
                     stride_x, stride_r, stride_o, stride_ro,
                     HAS_RES: tl.constexpr, BLOCK: tl.constexpr, SINGLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        mask = cols < H
        v = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            v += tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
            v_st = v.to(res_out_ptr.dtype.element_ty)
            tl.store(res_out_ptr + row * stride_ro + cols, v_st, mask=mask)
            v = v_st.to(tl.float32)  # normalise what was stored
        rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / H + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (v * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, H, BLOCK):
            c = start + cols
            mask = c < H
            v = tl.load(x_ptr + row * stride_x + c, mask=mask, other=0.0).to(tl.float32)
            if HAS_RES:
                v += tl.load(res_ptr + row * stride_r + c, mask=mask, other=0.0).to(tl.float32)
                v_st = v.to(res_out_ptr.dtype.element_ty)
                tl.store(res_out_ptr + row * stride_ro + c, v_st, mask=mask)
                v = v_st.to(tl.float32)
            acc += v * v
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / H + eps)
        for start in range(0, H, BLOCK):
            c = start + cols
            mask = c < H
            if HAS_RES:
                v = tl.load(res_out_ptr + row * stride_ro + c, mask=mask, other=0.0).to(tl.float32)
            else:
                v = tl.load(x_ptr + row * stride_x + c, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + row * stride_o + c, (v * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [T, H], got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.stride(1) != 1:
        raise ValueError("x must have contiguous rows")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must be 1-D of length H={x.shape[1]}, got {getattr(weight, 'shape', None)}")
    if weight.dtype not in FLOAT_DTYPES or not weight.is_contiguous():
        raise ValueError(f"weight must be a contiguous float tensor, got {weight.dtype}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, "
                             f"got {getattr(residual, 'shape', None)}")
        if residual.dtype != x.dtype or residual.stride(1) != 1:
            raise ValueError(f"residual must have x's dtype {x.dtype} and contiguous rows, "
                             f"got {residual.dtype}")


def _launch(x: torch.Tensor, res: torch.Tensor | None, weight: torch.Tensor, eps: float,
            out: torch.Tensor, res_out: torch.Tensor | None) -> None:
    t, h = x.shape
    if t == 0:
        return
    single = triton.next_power_of_2(h) <= _MAX_SINGLE_BLOCK
    block = triton.next_power_of_2(h) if single else _CHUNK
    num_warps = max(1, min(16, block // 256))
    r = res if res is not None else x
    ro = res_out if res_out is not None else out
    _rms_norm_kernel[(t,)](x, r, weight, out, ro, h, float(eps),
                           x.stride(0), r.stride(0), out.stride(0), ro.stride(0),
                           HAS_RES=res is not None, BLOCK=block, SINGLE=single, num_warps=num_warps)


def _out_buffer(x: torch.Tensor, out: torch.Tensor | None, name: str) -> torch.Tensor:
    if out is None:
        return torch.empty_like(x)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype \
            or out.stride(1) != 1:
        raise ValueError(f"{name} must be a {x.dtype} {tuple(x.shape)} tensor with contiguous rows")
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x * rsqrt(mean(x^2) + eps) * weight`` in fp32.

    Args:
        x: [T, H] bf16/fp16/fp32 activations (rows contiguous).
        weight: [H] gain.
        eps: variance epsilon (> 0).
        out: optional [T, H] output buffer of x.dtype (may be x itself).

    Returns:
        [T, H] tensor of x.dtype.
    """
    _check(x, weight, eps)
    out = _out_buffer(x, out, "out")
    _launch(x, None, weight, eps, out, None)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       out: torch.Tensor | None = None,
                       residual_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add and RMSNorm in one pass.

    Args:
        x: [T, H] layer output.
        residual: [T, H] running residual stream (same dtype as x).
        weight: [H] gain.
        eps: variance epsilon (> 0).
        out: optional output buffer (may be x itself).
        residual_out: optional new-residual buffer (may be residual itself).

    Returns:
        (out, new_residual): new_residual = x + residual (fp32 sum, stored in x.dtype),
        out = rms_norm(new_residual, weight, eps).
    """
    _check(x, weight, eps, residual)
    out = _out_buffer(x, out, "out")
    new_res = _out_buffer(x, residual_out, "residual_out")
    _launch(x, residual, weight, eps, out, new_res)
    return out, new_res


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain PyTorch reference of :func:`rms_norm`."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * rstd * weight.float()).to(x.dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch reference of :func:`fused_add_rms_norm`."""
    new_res = (x.float() + residual.float()).to(x.dtype)
    return rms_norm_ref(new_res, weight, eps), new_res
