"""Which weights each decode layer prefetches into L2 while its attention runs (``EngineConfig.l2_prefetch_mb``).

In a fused batch-1 decode layer (``LlamaModel.hidden_states``) the qkv GEMV is followed by RoPE + KV write
and attention, which read a few hundred KiB but take several microseconds of dependent latency, then by
the o and gate/up GEMVs, which stream ~75 MiB (Llama-3.2-1B) at the memory's bandwidth. The plan hands the
qkv GEMV (``Linear.prefetch``) the bytes to prefetch during that idle phase, in the order they are read:
o's weight, then equal numbers of leading rows of the gate half and the up half of gate_up (the fused
SwiGLU GEMV reads gate row n with up row n, lowest rows first), up to the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from engine.model import LlamaModel


@dataclass(frozen=True)
class L2Plan:
    """What one layer's qkv GEMV prefetches (the same for every layer).

    Args:
        o_rows: leading rows of the o projection's weight.
        gate_up_rows: leading rows of the gate half, and as many of the up half.
        bytes_per_layer: their total.
        mode: ``"bulk"`` or ``"line"`` (``kernels.l2_prefetch``).
    """

    o_rows: int
    gate_up_rows: int
    bytes_per_layer: int
    mode: str

    def summary(self) -> str:
        """One log line."""
        return (f"L2 prefetch per layer ({self.mode}): {self.o_rows} o rows + 2 x {self.gate_up_rows} gate/up "
                f"rows = {self.bytes_per_layer / 2**20:.1f} MiB")


def budget_rows(o: torch.Tensor, gate_up: torch.Tensor, budget_bytes: int) -> tuple[int, int]:
    """``(o rows, gate/up rows per half)`` that fit ``budget_bytes``: o's rows first, then gate and up rows
    in equal numbers."""
    o_row, gu_row = o.shape[1] * o.element_size(), gate_up.shape[1] * gate_up.element_size()
    o_rows = min(o.shape[0], budget_bytes // o_row)
    return o_rows, min(gate_up.shape[0] // 2, (budget_bytes - o_rows * o_row) // (2 * gu_row))


def layer_ranges(o: torch.Tensor, gate_up: torch.Tensor, o_rows: int, gu_rows: int) -> tuple[torch.Tensor, ...]:
    """The contiguous row blocks of one layer's plan: o[:o_rows], gate[:gu_rows], up[:gu_rows]."""
    half = gate_up.shape[0] // 2
    ranges = [o[:o_rows]] if o_rows else []
    if gu_rows:
        ranges += [gate_up[:gu_rows], gate_up[half:half + gu_rows]]
    return tuple(ranges)


def plan_l2_prefetch(model: LlamaModel, budget_bytes: int, mode: str) -> L2Plan:
    """Set every layer's ``qkv.prefetch`` to the o and gate/up rows that fit ``budget_bytes``.

    Args:
        model: a model whose layers run the fused decode path (full-precision o and gate_up weights).
        budget_bytes: most bytes one layer prefetches (> 0).
        mode: ``"bulk"`` or ``"line"``.

    Returns:
        The plan (also set on the layers).

    Raises:
        ValueError: a non-positive budget, or a layer without full-precision o / gate_up weights.
    """
    if budget_bytes <= 0:
        raise ValueError(f"L2 prefetch budget must be > 0 bytes, got {budget_bytes}")
    weights = [(layer.o.weight, layer.gate_up.weight) for layer in model.layers]
    if any(o is None or gu is None for o, gu in weights):
        raise ValueError("L2 prefetch needs full-precision o and gate_up weights (no quantization)")
    o, gu = weights[0]
    o_rows, gu_rows = budget_rows(o, gu, budget_bytes)
    for layer, (ow, gw) in zip(model.layers, weights, strict=True):
        layer.qkv.prefetch = layer_ranges(ow, gw, o_rows, gu_rows)
        layer.qkv.prefetch_mode = mode
    nbytes = o_rows * o.shape[1] * o.element_size() + 2 * gu_rows * gu.shape[1] * gu.element_size()
    return L2Plan(o_rows, gu_rows, nbytes, mode)
