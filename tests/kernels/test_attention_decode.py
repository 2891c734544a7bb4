"""paged_decode_attention vs paged_decode_attention_ref, across split counts (split-KV + reduction).

Error bounds as for prefill (see test_attention_prefill.py): on the CPU interpreter fp32 q/out
|out - ref| <= 1e-4 |ref| + 2e-5 and bf16 q/out <= 2^-7 max|ref|; on CUDA 4e-3 resp. 2e-2 max|ref|.
fp8 / int8 caches are compared on the same dequantised values, so the same bounds apply.
"""

from __future__ import annotations

import pytest
import torch

from kernels.attention_decode import default_num_splits, paged_decode_attention, paged_decode_attention_ref
from tests.kernels.paged_kv_fixtures import BF16_ATOL_REL, DEVICE, assert_fp32_close, make_paged_kv

# (context per sequence, Hq, Hkv, head_dim, block_size, kv dtype, num_splits)
CASES = [
    ([1], 4, 4, 64, 16, torch.bfloat16, None),  # one-token context, GQA 1
    ([5, 1, 100, 33], 8, 2, 64, 16, torch.bfloat16, 3),  # mixed lengths, 3 splits (some empty)
    ([70, 1, 23], 8, 1, 128, 8, torch.int8, None),  # GQA 8, head_dim 128
    ([70, 3, 23], 32, 8, 64, 16, torch.float8_e4m3fn, 4),  # Llama-3.2-1B head layout
    ([150, 17], 24, 8, 128, 32, torch.int8, 1),  # Llama-3.2-3B head layout, no split
    ([41], 12, 4, 64, 8, torch.bfloat16, 8),  # non-power-of-two group, more splits than key tiles
]


def _inputs(ctx_lens: list[int], hq: int, hkv: int, d: int, bs: int, dtype: torch.dtype, q_dtype: torch.dtype,
            seed: int) -> tuple:
    kv = make_paged_kv(ctx_lens, hkv, d, bs, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(len(ctx_lens), hq, d, generator=gen) * 2).to(q_dtype).to(DEVICE)
    return q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, d**-0.5, kv.k_scale, kv.v_scale


@pytest.mark.parametrize(("ctx_lens", "hq", "hkv", "d", "bs", "dtype", "splits"), CASES)
def test_decode_fp32_matches_reference(ctx_lens: list[int], hq: int, hkv: int, d: int, bs: int,
                                       dtype: torch.dtype, splits: int | None) -> None:
    args = _inputs(ctx_lens, hq, hkv, d, bs, dtype, torch.float32, seed=sum(ctx_lens) + hq)
    out = torch.full_like(args[0], float("nan"))  # poison: unwritten heads fail
    paged_decode_attention(*args, num_splits=splits, out=out)
    assert_fp32_close(out, paged_decode_attention_ref(*args))


@pytest.mark.parametrize("splits", [1, 2])
def test_decode_bf16_io(splits: int) -> None:
    args = _inputs([37, 5, 64], 8, 2, 64, 16, torch.bfloat16, torch.bfloat16, seed=7)
    out = torch.full_like(args[0], float("nan"))
    paged_decode_attention(*args, num_splits=splits, out=out)
    ref = paged_decode_attention_ref(*args).float()
    assert (out.float() - ref).abs().max() <= BF16_ATOL_REL * ref.abs().max()


def test_decode_empty_sequence_gives_zeros() -> None:
    """A zero-length context (CUDA-graph padding) must give zeros, not NaN, with or without splits."""
    args = _inputs([9, 0], 4, 2, 64, 16, torch.bfloat16, torch.float32, seed=2)
    for splits in (1, 2):
        out = paged_decode_attention(*args, num_splits=splits)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        assert_fp32_close(out[0], paged_decode_attention_ref(*args)[0])


def test_default_num_splits() -> None:
    cpu = torch.device("cpu")
    assert default_num_splits(256, 8, 32768, cpu) == 1  # many programs already
    assert default_num_splits(1, 8, 32768, cpu) == 2  # 2 x nominal 8 SMs / 8 programs
    assert default_num_splits(1, 1, 100, cpu) == 1  # short contexts are not split


def test_decode_bad_arguments_raise() -> None:
    args = list(_inputs([3, 4], 8, 2, 64, 16, torch.int8, torch.float32, seed=1))
    with pytest.raises(ValueError, match="num_splits must be a positive int"):
        paged_decode_attention(*args, num_splits=0)
    bad = args.copy()
    bad[4] = args[4][:1]
    with pytest.raises(ValueError, match=r"seq_lens must have shape \(2,\)"):
        paged_decode_attention(*bad)
    bad = args.copy()
    bad[6] = args[6].double()
    with pytest.raises(ValueError, match="k_scale has dtype torch.float64"):
        paged_decode_attention(*bad)
