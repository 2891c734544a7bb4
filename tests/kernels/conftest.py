"""Kernel tests run the Triton kernels on the CPU interpreter when no CUDA device is present.

TRITON_INTERPRET must be set before any kernel module is imported (triton.jit reads it at decoration time),
which a conftest does: pytest imports it before the test modules of this folder.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
