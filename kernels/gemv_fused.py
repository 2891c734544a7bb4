"""Decode GEMVs with their neighbours fused in: RMSNorm before, SwiGLU or the residual add after.

At batch 1 a Llama layer's norms and activation are tiny kernels whose launches cost about as much as
the small projections themselves. These wrappers run them inside the GEMV (``kernels._gemv_kernel``):

- :func:`gemv_rms_norm`: ``rms_norm(x) @ w.T`` (the QKV projection after the input norm), or with
  ``glu`` ``silu(gate) * up`` of it (the gate/up projection after the post-attention norm);
- :func:`gemv_residual`: ``x @ w.T + residual`` (the o and down projections, whose sum is the next
  residual stream).

A decoder layer is then four launches besides attention instead of seven. Numerics follow the unfused
kernels: normalised activations and the two GLU halves are rounded to the model dtype where the unfused
path stores them, accumulation is fp32, and the residual sum is rounded once.
"""

from __future__ import annotations

import dataclasses

import torch

from kernels._gemv_kernel import launch_gemv
from kernels._gemv_util import check_same_device, prepare_out
from kernels.activation import silu_and_mul_ref
from kernels.gemv_bf16 import GemvConfig, candidate_configs, check_rows, check_weight, resolve_config
from kernels.norm import rms_norm_ref


def glu_config(config: GemvConfig) -> GemvConfig:
    """``config`` made valid for ``glu``: at least 2 weight rows per program, no split of K."""
    return dataclasses.replace(config, block_n=max(2, config.block_n), split_k=1)


def fused_candidates(n: int, k: int, device: torch.device, glu: bool = False, pdl: bool = False) -> list[GemvConfig]:
    """The ``kernels.gemv_bf16.candidate_configs`` of a weight [n, k] (``pdl``: with PDL launches), made valid
    for ``glu`` when set."""
    configs = candidate_configs(n, k, device, pdl)
    return list(dict.fromkeys(glu_config(c) for c in configs)) if glu else configs


def check_norm(norm_weight: torch.Tensor, eps: float, k: int) -> None:
    """Raise ValueError unless ``norm_weight`` is a contiguous float [k] tensor and ``eps`` > 0."""
    if not isinstance(norm_weight, torch.Tensor) or tuple(norm_weight.shape) != (k,):
        raise ValueError(f"norm_weight must be 1-D of length K={k}, got {getattr(norm_weight, 'shape', None)}")
    if not norm_weight.is_floating_point() or not norm_weight.is_contiguous():
        raise ValueError(f"norm_weight must be a contiguous float tensor, got {norm_weight.dtype}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def gemv_rms_norm(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor,
                  out: torch.Tensor | None = None, config: GemvConfig | None = None,
                  glu: bool = False) -> torch.Tensor:
    """``rms_norm(x, norm_weight, eps) @ w.T``, or with ``glu`` ``silu(gate) * up`` of that product.

    Args:
        x: [M, K] residual stream, 1 <= M <= 16, w's dtype, rows contiguous.
        norm_weight: [K] RMSNorm weight (contiguous float).
        eps: RMSNorm epsilon (> 0).
        w: [N, K] bf16/fp16 weight; with ``glu`` a fused [gate | up] weight (N = 2I, even).
        out: optional [M, N] ([M, I] with ``glu``) output of x's dtype; must not overlap x.
        config: launch shape for w (None: the default); with ``glu`` its ``block_n`` counts weight rows
            (gate and up), is raised to 2 if smaller, and K is not split.
        glu: return ``silu(gate) * up`` [M, I] instead of the [M, 2I] projection.

    Returns:
        [M, N] (or [M, I]) tensor of x's dtype.
    """
    n, k = check_weight(w)
    check_rows(x, w, k, "gemv_rms_norm")
    check_norm(norm_weight, eps, k)
    if glu and n % 2:
        raise ValueError(f"glu needs a [gate | up] weight with an even number of rows, got {n}")
    check_same_device(("x", x), ("norm_weight", norm_weight), ("w", w))
    cfg = resolve_config(config, n, k, x.device)
    if glu:
        cfg = glu_config(cfg)
    return launch_gemv(x, w, prepare_out(x, n // 2 if glu else n, out), cfg, norm=(norm_weight, eps), glu=glu)


def gemv_residual(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor, out: torch.Tensor | None = None,
                  config: GemvConfig | None = None) -> torch.Tensor:
    """``x @ w.T + residual``, summed in fp32 and rounded once.

    Args:
        x: [M, K] activations, 1 <= M <= 16, w's dtype, rows contiguous.
        w: [N, K] bf16/fp16 weight.
        residual: [M, N] tensor of x's dtype with contiguous rows (``out`` may be ``residual`` itself:
            every element is read before it is written, by the same program).
        out: optional [M, N] output of x's dtype; must not overlap x.
        config: launch shape (None: the default of the shape).

    Returns:
        [M, N] tensor of x's dtype.
    """
    n, k = check_weight(w)
    check_rows(x, w, k, "gemv_residual")
    if not isinstance(residual, torch.Tensor) or tuple(residual.shape) != (x.shape[0], n):
        raise ValueError(f"residual must have shape {(x.shape[0], n)}, got {getattr(residual, 'shape', None)}")
    if residual.dtype != x.dtype or residual.stride(1) != 1:
        raise ValueError(f"residual must have x's dtype {x.dtype} and contiguous rows, got {residual.dtype} "
                         f"with strides {residual.stride()}")
    check_same_device(("x", x), ("w", w), ("residual", residual))
    cfg = resolve_config(config, n, k, x.device)
    return launch_gemv(x, w, prepare_out(x, n, out), cfg, residual=residual)


def gemv_rms_norm_ref(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor,
                      glu: bool = False) -> torch.Tensor:
    """Plain PyTorch reference of :func:`gemv_rms_norm`: ``kernels.norm.rms_norm_ref`` (rows rounded to x's
    dtype), fp32 matmul rounded, then ``kernels.activation.silu_and_mul_ref`` with ``glu``."""
    y = (rms_norm_ref(x, norm_weight, eps).float() @ w.float().T).to(x.dtype)
    return silu_and_mul_ref(y) if glu else y


def gemv_residual_ref(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference of :func:`gemv_residual` (fp32 matmul and add, one rounding)."""
    return (x.float() @ w.float().T + residual.float()).to(x.dtype)
