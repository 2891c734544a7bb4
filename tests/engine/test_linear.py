"""engine.linear.Linear: bytes read per full pass, for every storage format."""

from __future__ import annotations

import pytest
import torch

from engine.linear import Linear


@pytest.mark.parametrize(("quantization", "per_weight"), [(None, 2.0), ("int8", 1.0), ("int4", 0.5)])
def test_weight_bytes_counts_the_stored_tensors(quantization: str | None, per_weight: float) -> None:
    n, k = 384, 256  # two int4 groups of 128 per row
    layer = Linear(torch.randn(n, k, dtype=torch.bfloat16), quantization)
    got = layer.weight_bytes()
    assert got >= n * k * per_weight  # the weights themselves
    assert got <= n * k * per_weight + n * (k // 128) * 8 + n * 8  # plus at most scales and zero points
    if quantization == "int4":
        q = layer.qweight
        want = sum(t.numel() * t.element_size() for t in (q.packed, q.scales, q.zeros) if t is not None)
        assert got == want
