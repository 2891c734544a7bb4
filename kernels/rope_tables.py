"""RoPE tables in plain PyTorch (no Triton): Llama-3 scaled inverse frequencies and the cos/sin cache.

cos_sin cache: fp32 [max_pos, head_dim]; row p holds cos(p * inv_freq) in its first half and
sin(p * inv_freq) in its second half (inv_freq has head_dim / 2 entries). Both attention backends of the
engine and the RoPE kernels (``kernels.rope``) read this one table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

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
