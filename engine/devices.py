"""The engine's device and dtype names, resolved to torch objects."""

from __future__ import annotations

import torch

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def pdl_available(device: torch.device) -> bool:
    """Whether the decode kernels can use programmatic dependent launch on ``device``."""
    from kernels.pdl import pdl_supported  # Triton backend only: kernels/ needs triton

    return pdl_supported(device)


def resolve_device(name: str) -> torch.device:
    """``EngineConfig.device`` as a torch device ('auto': CUDA when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"EngineConfig.device is {name!r} but CUDA is not available")
    return dev
