"""Shared argument checks and launch heuristics for the linear-layer kernels.

The heuristics pick block shapes from the problem size and the device's SM count so that
batch-1 GEMVs launch enough programs over N for every SM to stream weights at once.
"""

from __future__ import annotations

import os

import torch
import triton

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Rows of x up to this many take the CUDA-core (FMA) GEMV kernels; above it the tensor-core kernels.
FMA_MAX_M = 4
# Rows of x up to this many count as the skinny (decode) regime: one 16-row tile plus small N blocks.
SKINNY_MAX_M = 16
# Programs per SM that the GEMV heuristics aim for (several resident programs hide DRAM latency).
PROGRAMS_PER_SM = 2


def prepare_out(x: torch.Tensor, n: int, out: torch.Tensor | None) -> torch.Tensor:
    """The [M, n] output of an op on rows ``x`` [M, ...]: a new tensor of x's dtype and device, or
    ``out`` checked to be exactly that shape and dtype with contiguous rows (ValueError otherwise)."""
    if out is None:
        return torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
    if tuple(out.shape) != (x.shape[0], n) or out.dtype != x.dtype or out.stride(1) != 1:
        raise ValueError(f"out must be a {x.dtype} [{x.shape[0]}, {n}] tensor with contiguous rows, got "
                         f"{out.dtype} {tuple(out.shape)}")
    return out


def check_activation(x: torch.Tensor, k: int, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a 2-D float tensor [M, k] with contiguous rows."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be bfloat16, float16 or float32, got {x.dtype}")
    if x.shape[1] != k:
        raise ValueError(f"{name} has K={x.shape[1]} but the weight has K={k}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row")
    if x.stride(1) != 1:
        raise ValueError(f"{name} must have contiguous rows (stride(1) == 1), got strides {x.stride()}")


def check_tensor(t: torch.Tensor, name: str, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
    """Raise ValueError unless ``t`` is a contiguous tensor of the given shape and one of ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_same_device(*named: tuple[str, torch.Tensor]) -> None:
    """Raise ValueError when the named tensors live on different devices."""
    devices = {t.device for _, t in named}
    if len(devices) > 1:
        where = ", ".join(f"{n} on {t.device}" for n, t in named)
        raise ValueError(f"tensors must share one device: {where}")


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a nominal 132, an H100's, off CUDA)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def pick_block_n(n: int, device: torch.device, max_block: int = 16, min_block: int = 1) -> int:
    """Largest power-of-two row block (<= max_block) that still gives PROGRAMS_PER_SM programs per SM."""
    target = PROGRAMS_PER_SM * num_sms(device)
    block = max_block
    while block > min_block and triton.cdiv(n, block) < target:
        block //= 2
    return block


def pow2_at_most(value: int, cap: int) -> int:
    """Largest power of two <= min(value, cap), at least 1."""
    v = max(1, min(value, cap))
    return 1 << (v.bit_length() - 1)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, whose numpy tl.dot mishandles bfloat16 (kernels then dot in fp32)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
