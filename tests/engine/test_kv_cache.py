"""KV cache: layout, sizing arithmetic and swapping blocks to the host pool and back."""

from __future__ import annotations

import pytest
import torch

from engine.kv_cache import KVCache, block_bytes

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8, torch.float8_e4m3fn])
def test_swap_round_trip(dtype):
    kv = KVCache(3, 7, 4, 2, 8, dtype, CPU, num_cpu_blocks=5)
    raw = kv.data.view(torch.uint8)
    raw.copy_(torch.randint(1, 100, raw.shape, dtype=torch.uint8))
    if kv.scales is not None:
        kv.scales.uniform_()
    before = kv.data.view(torch.uint8).clone()
    scales = kv.scales.clone() if kv.scales is not None else None
    kv.swap_out([(1, 4), (5, 0)])
    kv.data.zero_()
    if kv.scales is not None:
        kv.scales.zero_()
    kv.swap_in([(4, 2), (0, 6)])
    got = kv.data.view(torch.uint8)
    assert torch.equal(got[:, :, 2], before[:, :, 1]) and torch.equal(got[:, :, 6], before[:, :, 5])
    assert not got[:, :, [0, 1, 3, 4, 5]].any()
    if scales is not None:
        assert torch.equal(kv.scales[:, :, 2], scales[:, :, 1])


def test_layer_views_and_sizes():
    kv = KVCache(2, 10, 16, 4, 32, torch.int8, CPU)
    k, v, ks, vs = kv.layer(1)
    assert k.shape == (11, 16, 4, 32) and ks.shape == (11, 16, 4)  # one scratch block
    assert kv.scratch_block == 10 and k.is_contiguous() and ks.is_contiguous()
    assert block_bytes(2, 16, 4, 32, torch.int8) == 2 * 16 * 4 * (2 * 32 + 8)
    assert block_bytes(2, 16, 4, 32, torch.bfloat16) == 2 * 16 * 4 * 2 * 32 * 2


def test_swap_errors():
    kv = KVCache(1, 4, 4, 1, 8, torch.bfloat16, CPU)
    with pytest.raises(RuntimeError, match="no host blocks"):
        kv.swap_out([(0, 0)])
    kv = KVCache(1, 4, 4, 1, 8, torch.bfloat16, CPU, num_cpu_blocks=2)
    with pytest.raises(IndexError, match=r"swap_in: block pair \(2, 0\) out of range"):
        kv.swap_in([(2, 0)])
