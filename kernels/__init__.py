"""Triton kernels with plain PyTorch references (see each module)."""
