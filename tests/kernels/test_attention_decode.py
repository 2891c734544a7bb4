"""paged_decode_attention vs paged_decode_attention_ref, across split counts (split-KV + reduction).

Error bounds as for prefill (see test_attention_prefill.py): on the CPU interpreter fp32 q/out
|out - ref| <= 1e-4 |ref| + 2e-5 and bf16 q/out <= 2^-7 max|ref|; on CUDA 4e-3 resp. 2e-2 max|ref|.
fp8 / int8 caches are compared on the same dequantised values, so the same bounds apply.
"""

from __future__ import annotations

import pytest
import torch

from kernels.attention_decode import paged_decode_attention, paged_decode_attention_ref
from kernels.decode_launch import DecodeConfig, default_decode_config, default_num_splits
from tests.kernels.paged_kv_fixtures import BF16_ATOL_REL, DEVICE, assert_fp32_close, make_paged_kv

# (context per sequence, Hq, Hkv, head_dim, block_size, kv dtype, num_splits). A sequence is split only
# into slices of >= 128 keys (_MIN_KEYS_PER_SPLIT), so split cases need a context above 128.
CASES = [
    ([1], 4, 4, 64, 16, torch.bfloat16, None),  # one-token context, GQA 1
    ([5, 1, 700, 33], 8, 2, 64, 16, torch.bfloat16, 3),  # mixed lengths: 700 in 3 splits, the rest in 1
    ([570, 1, 23], 8, 1, 128, 8, torch.int8, None),  # GQA 8, head_dim 128, default splits (570 in 5)
    ([570, 3, 23], 32, 8, 64, 16, torch.float8_e4m3fn, 4),  # Llama-3.2-1B head layout, 570 in 4 splits
    ([150, 17], 24, 8, 128, 32, torch.int8, 1),  # Llama-3.2-3B head layout, no split
    ([541], 12, 4, 64, 8, torch.bfloat16, 8),  # non-power-of-two group, more splits asked than usable
    ([300, 1, 77], 24, 8, 128, 16, torch.bfloat16, None),  # Llama-3.2-3B heads, bf16: the small-batch shape
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
    args = _inputs([37, 5, 640], 8, 2, 64, 16, torch.bfloat16, torch.bfloat16, seed=7)  # 640: 2 splits
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
    cpu = torch.device("cpu")  # a nominal 8 SMs: the occupancy rule targets 16 programs
    # The length rule, ceil(max_context / 512), now dominates at large batches (occupancy alone gives 1
    # there, and one long context would then be walked serially by one program); since each sequence
    # uses only ceil(seq_len / keys_per_split) of the splits, short contexts still run unsplit.
    assert default_num_splits(256, 8, 32768, cpu) == 64  # length 64 (the cap)
    assert default_num_splits(256, 8, 8192, cpu) == 16
    assert default_num_splits(256, 8, 512, cpu) == 1  # short bound: no split
    assert default_num_splits(1, 8, 4096, cpu) == 8  # length 8 > occupancy 2 x 8 SMs / 8 programs
    # small batch (programs x finest splits <= 4 x 16): the finest split, 128 keys, up to the cap of 64
    assert default_num_splits(1, 1, 4096, cpu) == 32
    assert default_num_splits(2, 2, 1024, cpu) == 8
    assert default_num_splits(1, 1, 10**5, cpu) == 64
    assert default_num_splits(1, 1, 100, cpu) == 1  # short contexts are not split
    assert default_num_splits(1, 8, 10**6, cpu) == 64  # capped at _MAX_SPLITS


# One batch: a 1-token and a 0-length (graph padding) sequence, short ones and long ones, no length a
# multiple of the block size. With num_splits=4 (max_context 1024 or 1008 -> 256 keys per split) the
# sequences use 1, 1, 1, 2, 4 (last one ragged) and 3 splits; the default (2 splits of 512 keys by the
# length rule) splits 1000 and 613 in two.
MIXED_LENS = [1, 0, 37, 300, 1000, 613]


@pytest.mark.parametrize("splits", [4, None])
@pytest.mark.parametrize(("hq", "hkv", "bs", "dtype"), [
    (4, 4, 16, torch.bfloat16),  # GQA 1
    (8, 2, 8, torch.int8),  # GQA 4, quantized
    (8, 2, 16, torch.float8_e4m3fn),  # GQA 4, quantized
])
def test_decode_mixed_lengths_dynamic_splits(hq: int, hkv: int, bs: int, dtype: torch.dtype,
                                             splits: int | None) -> None:
    args = _inputs(MIXED_LENS, hq, hkv, 64, bs, dtype, torch.float32, seed=hq * 10 + bs)
    out = torch.full_like(args[0], float("nan"))  # poison: an unwritten head or a skipped merge fails
    paged_decode_attention(*args, num_splits=splits, out=out)
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # the padding sequence gives exact zeros
    assert_fp32_close(out, paged_decode_attention_ref(*args))


def test_decode_wide_block_table_matches_one_split() -> None:
    """CUDA-graph layout: 512-block table rows (8192 keys) far wider than the sequences; num_splits=64.

    The slice length comes from the table width (128 keys here): 700, 512 and 260 keys use 6 (ragged), 4
    (all full) and 3 (ragged) splits, the short and padding sequences one. The spare table columns point at
    random blocks of other sequences, so reading past a sequence's end would change its output.
    """
    ctx_lens = [700, 0, 512, 9, 260]
    args = list(_inputs(ctx_lens, 8, 2, 64, 16, torch.int8, torch.float32, seed=11))
    tables = args[3]
    gen = torch.Generator().manual_seed(12)
    num_blocks = args[1].shape[0]
    wide = torch.randint(0, num_blocks, (len(ctx_lens), 512), generator=gen, dtype=torch.int32).to(DEVICE)
    wide[:, :tables.shape[1]] = tables
    args[3] = wide
    out_wide = paged_decode_attention(*args, num_splits=64, out=torch.full_like(args[0], float("nan")))
    out_one = paged_decode_attention(*args, num_splits=1, out=torch.full_like(args[0], float("nan")))
    assert_fp32_close(out_wide, out_one)
    assert_fp32_close(out_wide, paged_decode_attention_ref(*args))


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
    with pytest.raises(ValueError, match="config must be a DecodeConfig or None, got dict"):
        paged_decode_attention(*args, config={"block_n": 32})


@pytest.mark.parametrize("config", [DecodeConfig(32, 2, 1), DecodeConfig(64, 1, 2)])
def test_decode_launch_config_keeps_results(config: DecodeConfig) -> None:
    """Other tile / warp / stage shapes (the benchmark sweeps them) give the reference's result."""
    args = _inputs([300, 1, 77], 8, 2, 64, 16, torch.bfloat16, torch.float32, seed=11)  # 300: splits of 128
    out = torch.full_like(args[0], float("nan"))
    paged_decode_attention(*args, out=out, config=config)
    assert_fp32_close(out, paged_decode_attention_ref(*args))


def test_default_launch_shapes() -> None:
    cuda = torch.device("cuda")  # only the device type is read
    assert default_decode_config(128, False, cuda, 1) == DecodeConfig(128, 8, 2)  # 3B heads, small batch
    assert default_decode_config(128, False, cuda, 16) == DecodeConfig(128, 8, 2)
    assert default_decode_config(128, False, cuda, 64) == DecodeConfig(64, 4, 3)
    assert default_decode_config(128, True, cuda, 1) == DecodeConfig(128, 4, 3)  # quantised cache
    assert default_decode_config(64, False, cuda, 1) == DecodeConfig(128, 4, 3)  # 1B heads
    assert default_decode_config(128, False, torch.device("cpu"), 1) == DecodeConfig(16, 4, 1)  # interpreter


@pytest.mark.parametrize("kwargs,match", [
    ({"block_n": 48}, r"DecodeConfig.block_n must be a power of two in \[16, 256\], got 48"),
    ({"block_n": 512}, r"DecodeConfig.block_n must be a power of two in \[16, 256\], got 512"),
    ({"num_warps": 16}, r"DecodeConfig.num_warps must be 1, 2, 4 or 8, got 16"),
    ({"num_stages": 0}, r"DecodeConfig.num_stages must be in \[1, 6\], got 0"),
    ({"num_stages": 2.0}, r"DecodeConfig.num_stages must be an int, got 2.0"),
])
def test_bad_decode_configs_name_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DecodeConfig(**kwargs)


def _grouped_inputs(groups: list[tuple[int, int]], hq: int, hkv: int, d: int, bs: int, dtype: torch.dtype,
                    max_group: int, seed: int) -> tuple[tuple, torch.Tensor]:
    """Rows of verification groups: ``(longest context c, rows n)`` gives rows at contexts c - n + 1 .. c over
    one block table (a decode and its n - 1 drafts); ``group_lens`` cut into pieces of <= ``max_group``."""
    kv = make_paged_kv([c for c, _ in groups], hkv, d, bs, dtype, seed)
    owner = [g for g, (_, n) in enumerate(groups) for _ in range(n)]
    lens = [c - n + 1 + i for c, n in groups for i in range(n)]
    group_lens = []
    for _, n in groups:
        for a in range(0, n, max_group):
            piece = min(max_group, n - a)
            group_lens += [piece] + [0] * (piece - 1)
    gen = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(len(lens), hq, d, generator=gen) * 2).to(DEVICE)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables[owner], torch.tensor(lens, dtype=torch.int32, device=DEVICE),
            d**-0.5, kv.k_scale, kv.v_scale)
    return args, torch.tensor(group_lens, dtype=torch.int32, device=DEVICE)


# (groups as (longest context, rows), Hq, Hkv, head_dim, block size, kv dtype, max_group, num_splits). With
# num_splits 4 over the widest table the slices are 128 keys (the minimum) or longer: groups straddle them.
GROUP_CASES = [
    ([(130, 5), (1, 1), (40, 3), (600, 7)], 8, 2, 64, 16, torch.bfloat16, 4, 4),  # 1B GQA 4; 126..130 straddle
    ([(300, 5), (17, 2), (257, 4)], 24, 8, 128, 16, torch.bfloat16, 5, None),  # 3B GQA 3, 15-row tile
    ([(129, 4), (513, 8), (5, 5)], 4, 4, 64, 8, torch.int8, 8, 6),  # GQA 1, int8, one group of 8 rows
    ([(700, 6), (2, 2), (260, 3)], 8, 2, 64, 16, torch.float8_e4m3fn, 8, None),  # fp8, a 32-row tile
]


@pytest.mark.parametrize(("groups", "hq", "hkv", "d", "bs", "dtype", "max_group", "splits"), GROUP_CASES)
def test_decode_row_groups_match_reference(groups: list[tuple[int, int]], hq: int, hkv: int, d: int, bs: int,
                                           dtype: torch.dtype, max_group: int, splits: int | None) -> None:
    """Grouped rows (each row at its own position over a shared table) equal ungrouped rows and the reference."""
    args, group_lens = _grouped_inputs(groups, hq, hkv, d, bs, dtype, max_group, seed=sum(c for c, _ in groups))
    out = torch.full_like(args[0], float("nan"))  # poison: a row no program wrote fails
    paged_decode_attention(*args, num_splits=splits, out=out, group_lens=group_lens, max_group=max_group)
    assert_fp32_close(out, paged_decode_attention_ref(*args))
    plain = paged_decode_attention(*args, num_splits=splits, out=torch.full_like(args[0], float("nan")))
    assert_fp32_close(out, plain)
    # merged in the partition kernel (each group counts under its first row), twice on one buffer
    counters = torch.zeros(len(group_lens) * hkv, dtype=torch.int32, device=DEVICE)
    for _ in range(2):
        merged = torch.full_like(args[0], float("nan"))
        paged_decode_attention(*args, num_splits=splits, out=merged, group_lens=group_lens, max_group=max_group,
                               merge_counters=counters)
        assert torch.allclose(merged, out, rtol=1e-5, atol=1e-6)
        assert torch.equal(counters, torch.zeros_like(counters))


def test_decode_row_groups_bad_arguments_raise() -> None:
    args, group_lens = _grouped_inputs([(20, 3)], 8, 2, 64, 16, torch.bfloat16, 4, seed=3)
    with pytest.raises(ValueError, match="group_lens has dtype torch.int64"):
        paged_decode_attention(*args, group_lens=group_lens.long(), max_group=4)
    with pytest.raises(ValueError, match=r"group_lens must have shape \(3,\)"):
        paged_decode_attention(*args, group_lens=group_lens[:2], max_group=4)
    with pytest.raises(ValueError, match="max_group must be a positive int, got 0"):
        paged_decode_attention(*args, group_lens=group_lens, max_group=0)


@pytest.mark.parametrize(("ctx_lens", "hq", "hkv", "d", "bs", "dtype", "splits"),
                         [case for case in CASES if case[6] != 1])
def test_decode_merged_in_the_partition_kernel_matches_reference(ctx_lens: list[int], hq: int, hkv: int, d: int,
                                                                 bs: int, dtype: torch.dtype,
                                                                 splits: int | None) -> None:
    """With ``merge_counters`` the last program of each split sequence merges the partials (no reduction
    kernel): the same results as with the reduction kernel, twice in a row on one counter buffer (the
    kernel leaves it zero), extra counters untouched."""
    args = _inputs(ctx_lens, hq, hkv, d, bs, dtype, torch.float32, seed=sum(ctx_lens) + 3 * hq)
    counters = torch.zeros(len(ctx_lens) * hkv + 5, dtype=torch.int32, device=DEVICE)
    ref = paged_decode_attention_ref(*args)
    with_reduce = paged_decode_attention(*args, num_splits=splits)
    for _ in range(2):
        out = torch.full_like(args[0], float("nan"))
        paged_decode_attention(*args, num_splits=splits, out=out, merge_counters=counters)
        assert_fp32_close(out, ref)
        assert torch.allclose(out, with_reduce, rtol=1e-5, atol=1e-6)
        assert torch.equal(counters, torch.zeros_like(counters))


def test_decode_merged_bf16_and_bad_counters() -> None:
    args = _inputs([37, 5, 640, 0], 8, 2, 64, 16, torch.bfloat16, torch.bfloat16, seed=9)  # 640: 2 splits
    counters = torch.zeros(8, dtype=torch.int32, device=DEVICE)
    out = torch.full_like(args[0], float("nan"))
    paged_decode_attention(*args, num_splits=2, out=out, merge_counters=counters)
    ref = paged_decode_attention_ref(*args).float()
    assert (out.float() - ref).abs().max() <= BF16_ATOL_REL * ref.abs().max()
    assert torch.equal(out[3], torch.zeros_like(out[3]))  # an empty context: zeros
    with pytest.raises(ValueError, match="merge_counters has 7 counters, needs num_seqs \\* num_kv_heads = 8"):
        paged_decode_attention(*args, num_splits=2, merge_counters=counters[:7])
    with pytest.raises(ValueError, match="merge_counters"):
        paged_decode_attention(*args, num_splits=2, merge_counters=counters.to(torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="concurrent programs need a GPU")
def test_decode_merged_under_graph_replays_on_the_gpu() -> None:
    """On a GPU the programs of a sequence finish in any order, concurrently: replayed in one CUDA graph
    many times, the merged kernel keeps giving the reduction kernel's output and leaves the counters zero."""
    args = _inputs([8000, 3, 4100, 700, 1, 6000], 32, 8, 64, 16, torch.bfloat16, torch.bfloat16, seed=11)
    want = paged_decode_attention(*args)
    counters = torch.zeros(6 * 8, dtype=torch.int32, device=DEVICE)
    outs = [torch.full_like(want, float("nan")) for _ in range(8)]
    paged_decode_attention(*args, out=outs[0], merge_counters=counters)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for out in outs:
            paged_decode_attention(*args, out=out, merge_counters=counters)
    for _ in range(25):
        for out in outs:
            out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for out in outs:
            assert torch.allclose(out.float(), want.float(), rtol=0, atol=2e-2 * want.float().abs().max().item())
    assert torch.equal(counters, torch.zeros_like(counters))
