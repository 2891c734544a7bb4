"""SwiGLU fused into the down-projection GEMV for decode: ``(silu(g) * u) @ w_down.T`` from ``[g | u]``.

Each program computes ``silu(g) * u`` for its K tile in registers (rounded to the activation dtype, as
``kernels.activation.silu_and_mul`` stores it) and feeds it straight into the GEMV, so the [M, I] product
is never written to memory and the step saves the activation kernel's launch. The kernel body is the one of
``kernels.gemv_bf16`` (its SWIGLU variant), launched with the same :class:`GemvConfig` shapes.
"""

from __future__ import annotations

import torch

from kernels._gemv_util import FMA_MAX_M, check_same_device, prepare_out
from kernels.gemv_bf16 import GemvConfig, check_weight, launch_gemv


def silu_mul_gemv(gate_up: torch.Tensor, w_down: torch.Tensor, out: torch.Tensor | None = None,
                  config: GemvConfig | None = None) -> torch.Tensor:
    """``(silu(gate) * up) @ w_down.T`` with ``gate = gate_up[:, :I]``, ``up = gate_up[:, I:]``.

    Args:
        gate_up: [M, 2I] output of the fused gate/up projection, 1 <= M <= 4, w_down's dtype, rows
            contiguous.
        w_down: [N, I] bf16 or fp16 down-projection weight (rows contiguous).
        out: optional [M, N] output buffer of gate_up.dtype.
        config: launch shape for the [N, I] weight (None: ``kernels.gemv_bf16.default_config``).

    Returns:
        [M, N] tensor of gate_up.dtype.
    """
    n, inter = check_weight(w_down, "w_down")
    if not isinstance(gate_up, torch.Tensor) or gate_up.dim() != 2:
        raise ValueError(f"gate_up must be a 2-D [M, 2I] tensor, got {getattr(gate_up, 'shape', None)}")
    if gate_up.shape[1] != 2 * inter:
        raise ValueError(f"gate_up has {gate_up.shape[1]} columns but w_down [{n}, {inter}] needs "
                         f"2 * {inter}")
    if gate_up.dtype != w_down.dtype:
        raise ValueError(f"gate_up must have w_down's dtype {w_down.dtype}, got {gate_up.dtype}")
    m = gate_up.shape[0]
    if not 1 <= m <= FMA_MAX_M:
        raise ValueError(f"gate_up has M={m} rows; silu_mul_gemv takes 1 to {FMA_MAX_M}")
    if gate_up.stride(1) != 1:
        raise ValueError(f"gate_up must have contiguous rows, got strides {gate_up.stride()}")
    check_same_device(("gate_up", gate_up), ("w_down", w_down))
    return launch_gemv(gate_up, w_down, prepare_out(gate_up, n, out), inter, config, swiglu=True)


def silu_mul_gemv_ref(gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference of :func:`silu_mul_gemv`: product rounded to the input dtype, fp32 matmul."""
    inter = gate_up.shape[1] // 2
    g, u = gate_up[:, :inter].float(), gate_up[:, inter:].float()
    act = (torch.nn.functional.silu(g) * u).to(gate_up.dtype)
    return (act.float() @ w_down.float().T).to(gate_up.dtype)
