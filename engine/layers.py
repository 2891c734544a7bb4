"""Elementwise layers of Llama in plain PyTorch, and the switch to the Triton kernels.

The torch functions follow the Hugging Face Llama numerics (fp32 statistics,
results in the activation dtype) and are the CPU path. ``LayerOps`` bundles one
implementation of each op so the model code is the same for both backends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """RoPE inverse frequencies [head_dim / 2] in fp32, with Llama 3 frequency scaling.

    ``scaling`` (a ``LlamaSpec.rope_scaling``) is Llama 3 scaling: it keeps high frequencies (wavelength below
    ``original_max / high_freq_factor``), divides low frequencies (wavelength above
    ``original_max / low_freq_factor``) by ``factor``, and blends linearly between.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    blend = (original / wavelen - low) / (high - low)
    blended = (1 - blend) * scaled / factor + blend * scaled
    middle = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(middle, blended, scaled)


def rope_cos_sin(head_dim: int, max_pos: int, theta: float,
                 scaling: dict[str, Any] | None) -> torch.Tensor:
    """Table [max_pos, head_dim] fp32: cos of the angles in the first half, sin in the second."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    angles = torch.arange(max_pos, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


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
    rope_cos_sin: Callable[..., torch.Tensor]


def torch_ops() -> LayerOps:
    """The plain PyTorch ops (any device)."""
    return LayerOps(rms_norm, fused_add_rms_norm, silu_and_mul, rope_cos_sin)


def triton_ops() -> LayerOps:
    """The Triton kernels of ``kernels/`` (imported only when asked for).

    Raises:
        ImportError: a kernel module is missing, with its name.
    """
    try:
        from kernels import activation, norm, rope
    except ImportError as exc:
        raise ImportError(f"attention_backend 'triton' needs the kernels package: {exc}") from exc
    return LayerOps(norm.rms_norm, norm.fused_add_rms_norm, activation.silu_and_mul,
                    rope.rope_cos_sin)
