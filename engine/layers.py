"""Elementwise layers of Llama in plain PyTorch, and the switch to the Triton kernels.

The torch functions follow the Hugging Face Llama numerics (fp32 statistics,
results in the activation dtype) and are the CPU path. ``LayerOps`` bundles one
implementation of each op so the model code is the same for both backends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of each row of ``x`` [T, H] (statistics in fp32)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual), x + residual)``."""
    new_residual = x + residual
    return rms_norm(new_residual, weight, eps), new_residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU: ``silu(gate) * up`` for ``gate_up = [gate | up]`` of shape [T, 2I]."""
    inter = gate_up.shape[-1] // 2
    return torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]


def apply_rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """Rotate ``q`` [T, Hq, D] and ``k`` [T, Hkv, D] in place (rotate-half convention)."""
    half = q.shape[-1] // 2
    table = cos_sin[positions]
    cos = table[:, None, :half].to(q.dtype)
    sin = table[:, None, half:].to(q.dtype)
    for x in (q, k):
        x1, x2 = x[..., :half].clone(), x[..., half:]
        x[..., :half] = x1 * cos - x2 * sin
        x[..., half:] = x2 * cos + x1 * sin


@dataclass(frozen=True)
class LayerOps:
    """One implementation of each elementwise op of the model (RoPE is applied by the attention backend)."""

    rms_norm: Callable[..., torch.Tensor]
    fused_add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]


def torch_ops() -> LayerOps:
    """The plain PyTorch ops (any device)."""
    return LayerOps(rms_norm, fused_add_rms_norm, silu_and_mul)


def triton_ops() -> LayerOps:
    """The Triton kernels of ``kernels/`` (imported only when asked for).

    Raises:
        ImportError: a kernel module is missing, with its name.
    """
    try:
        from kernels import activation, norm
    except ImportError as exc:
        raise ImportError(f"attention_backend 'triton' needs the kernels package: {exc}") from exc
    return LayerOps(norm.rms_norm, norm.fused_add_rms_norm, activation.silu_and_mul)
