"""paged_prefill_attention vs paged_prefill_attention_ref (same cache, fp32 softmax reference).

Error bounds (CPU interpreter, where every product is fp32): fp32 q/out |out - ref| <= 1e-4 |ref| + 2e-5;
bf16 q/out adds only the output rounding (one bf16 ulp from the reference's own): <= 2^-7 max|ref|.
On CUDA the products use tensor cores (tf32 for fp32 q, bf16 P for bf16 q): <= 4e-3 resp. 2e-2 max|ref|.
Quantized caches are compared on the same dequantised values, so the same bounds apply to fp8 / int8 KV.
"""

from __future__ import annotations

import pytest
import torch

from kernels.attention_prefill import paged_prefill_attention, paged_prefill_attention_ref
from tests.kernels.paged_kv_fixtures import BF16_ATOL_REL, DEVICE, assert_fp32_close, make_paged_kv

# (new tokens per sequence, total context per sequence, Hq, Hkv, head_dim, block_size, kv dtype)
CASES = [
    ([1], [1], 4, 4, 64, 16, torch.bfloat16),  # one token, no prefix, GQA 1
    ([5, 1, 37], [5, 20, 50], 8, 2, 64, 16, torch.bfloat16),  # mixed: fresh, decode-like, chunk with prefix
    ([7, 1, 23], [30, 1, 23], 8, 1, 128, 8, torch.int8),  # GQA 8, head_dim 128, 8-token pages
    ([19, 2], [45, 33], 16, 4, 64, 32, torch.float8_e4m3fn),  # GQA 4, pages larger than the key tile
    ([3, 9], [3, 70], 12, 4, 64, 16, torch.int8),  # 3 query heads per kv head (non-power-of-two group)
    ([4, 0, 2], [9, 6, 2], 8, 2, 64, 16, torch.bfloat16),  # a sequence with no new tokens this step
]


def _inputs(q_lens: list[int], ctx_lens: list[int], hq: int, hkv: int, d: int, bs: int, dtype: torch.dtype,
            q_dtype: torch.dtype, seed: int) -> tuple:
    kv = make_paged_kv(ctx_lens, hkv, d, bs, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(sum(q_lens), hq, d, generator=gen) * 2).to(q_dtype).to(DEVICE)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return q, kv.k_cache, kv.v_cache, kv.block_tables, cu, kv.seq_lens, d**-0.5, kv.k_scale, kv.v_scale


@pytest.mark.parametrize(("q_lens", "ctx_lens", "hq", "hkv", "d", "bs", "dtype"), CASES)
def test_prefill_fp32_matches_reference(q_lens: list[int], ctx_lens: list[int], hq: int, hkv: int, d: int,
                                        bs: int, dtype: torch.dtype) -> None:
    args = _inputs(q_lens, ctx_lens, hq, hkv, d, bs, dtype, torch.float32, seed=sum(ctx_lens) + hq)
    out = torch.full_like(args[0], float("nan"))  # poison: unwritten rows fail
    paged_prefill_attention(*args, out=out)
    assert_fp32_close(out, paged_prefill_attention_ref(*args))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_prefill_bf16_io(dtype: torch.dtype) -> None:
    args = _inputs([4, 11, 1], [4, 29, 17], 8, 2, 64, 16, dtype, torch.bfloat16, seed=3)
    out = torch.full_like(args[0], float("nan"))
    paged_prefill_attention(*args, out=out)
    ref = paged_prefill_attention_ref(*args).float()
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= BF16_ATOL_REL * ref.abs().max()


def test_rows_before_the_first_sequence_are_left_alone() -> None:
    """cu_seqlens_q starting past 0 (rows another kernel owns, e.g. decodes) and a padded tail: those rows
    keep what they held, the sequences' rows match the reference."""
    q_lens, ctx_lens = [5, 37, 1], [5, 50, 20]
    args = list(_inputs(q_lens, ctx_lens, 8, 2, 64, 16, torch.bfloat16, torch.float32, seed=21))
    lead, tail = 70, 9  # 70 rows: more than two 32-row query tiles before the first sequence
    q = args[0]
    gen = torch.Generator().manual_seed(5)
    shifted = torch.randn(lead + q.shape[0] + tail, *q.shape[1:], generator=gen).to(DEVICE)
    shifted[lead : lead + q.shape[0]] = q
    args[0], args[4] = shifted, args[4] + lead
    out = torch.full_like(shifted, float("nan"))
    paged_prefill_attention(*args, out=out)
    assert out[:lead].isnan().all() and out[lead + q.shape[0] :].isnan().all()
    ref = paged_prefill_attention_ref(*args)
    assert_fp32_close(out[lead : lead + q.shape[0]], ref[lead : lead + q.shape[0]])


def test_prefill_is_causal_and_reads_only_its_context() -> None:
    """Changing keys after a query's position or past seq_len must not change that query's output."""
    args = list(_inputs([6], [10], 4, 2, 64, 4, torch.bfloat16, torch.float32, seed=11))
    first = paged_prefill_attention(*args).clone()
    k_cache, bt = args[1], args[3]
    # Token 9 (the last) sits in the 3rd page at offset 1; only query 5 (position 9) may see it.
    k_cache[bt[0, 2], 1] += 5.0
    second = paged_prefill_attention(*args)
    assert torch.equal(first[:5], second[:5])
    assert not torch.equal(first[5], second[5])
    k_cache[bt[0, 2], 2:] = float("nan")  # slots past seq_len in the last page
    k_cache[bt[0, 3]] = float("nan")  # the table's padding entry
    assert not paged_prefill_attention(*args).isnan().any()


def test_prefill_bad_arguments_raise() -> None:
    args = list(_inputs([2], [5], 8, 2, 64, 16, torch.int8, torch.float32, seed=1))
    bad_cu = args.copy()
    bad_cu[4] = args[4].long()
    with pytest.raises(ValueError, match="cu_seqlens_q has dtype torch.int64"):
        paged_prefill_attention(*bad_cu)
    bad_heads = args.copy()
    bad_heads[0] = torch.zeros(2, 5, 64, device=DEVICE)
    with pytest.raises(ValueError, match="q has 5 heads, not a multiple of the cache's 2 kv heads"):
        paged_prefill_attention(*bad_heads)
    with pytest.raises(ValueError, match="k_scale is required"):
        paged_prefill_attention(*args[:7])
    with pytest.raises(ValueError, match=r"num_splits must be in \[1, 16\], got 0"):
        paged_prefill_attention(*args, num_splits=0)


# Split-KV: short chunks on long prefixes (and a fresh one, whose later splits hold no key), awkward sizes.
SPLIT_CASES = [
    ([3, 40, 1], [203, 90, 77], 8, 2, 64, 16, torch.bfloat16, 3),
    ([1, 17], [150, 17], 8, 1, 128, 8, torch.int8, 16),  # GQA 8, more splits than most sequences need
    ([5, 2, 9], [5, 300, 61], 16, 4, 64, 16, torch.float8_e4m3fn, 7),
    ([2], [97], 4, 4, 64, 16, torch.bfloat16, 2),  # GQA 1
]


@pytest.mark.parametrize(("q_lens", "ctx_lens", "hq", "hkv", "d", "bs", "dtype", "splits"), SPLIT_CASES)
def test_split_kv_matches_reference(q_lens: list[int], ctx_lens: list[int], hq: int, hkv: int, d: int, bs: int,
                                    dtype: torch.dtype, splits: int) -> None:
    args = _inputs(q_lens, ctx_lens, hq, hkv, d, bs, dtype, torch.float32, seed=sum(ctx_lens) + splits)
    out = torch.full_like(args[0], float("nan"))
    paged_prefill_attention(*args, out=out, num_splits=splits)
    ref = paged_prefill_attention_ref(*args)
    assert_fp32_close(out, ref)
    assert_fp32_close(out, paged_prefill_attention(*args, num_splits=1))


def test_split_kv_leaves_rows_outside_the_sequences_alone() -> None:
    q_lens, ctx_lens = [4, 1], [120, 66]
    args = list(_inputs(q_lens, ctx_lens, 8, 2, 64, 16, torch.bfloat16, torch.float32, seed=8))
    lead, tail = 40, 7
    q = args[0]
    shifted = torch.randn(lead + q.shape[0] + tail, *q.shape[1:], generator=torch.Generator().manual_seed(2))
    shifted = shifted.to(DEVICE)
    shifted[lead : lead + q.shape[0]] = q
    args[0], args[4] = shifted, args[4] + lead
    out = torch.full_like(shifted, float("nan"))
    paged_prefill_attention(*args, out=out, num_splits=4)
    assert out[:lead].isnan().all() and out[lead + q.shape[0] :].isnan().all()
    assert_fp32_close(out[lead : lead + q.shape[0]], paged_prefill_attention_ref(*args)[lead : lead + q.shape[0]])


def test_default_splits_only_for_few_tiles_on_long_contexts() -> None:
    from kernels.attention_prefill import default_num_splits

    assert default_num_splits(1, 8, 8192, torch.device("cpu")) == 1
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        assert default_num_splits(1, 8, 8192, dev) == 16  # one tile per kv head: split
        assert default_num_splits(65, 8, 8192, dev) == 1  # a 2048-token step fills the SMs
        assert default_num_splits(1, 8, 512, dev) == 1  # a short table: nothing to split
