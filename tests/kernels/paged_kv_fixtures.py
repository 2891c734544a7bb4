"""Random paged KV caches for the attention tests (not a test module)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANT = (torch.float8_e4m3fn, torch.int8)
#: Tests run on the GPU when there is one, else on the CPU interpreter (see conftest.py).
ON_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
#: Attention error bounds relative to max|ref| (see test_attention_prefill.py): tensor-core products on CUDA.
FP32_ATOL_REL = 4e-3 if ON_CUDA else 0.0
BF16_ATOL_REL = 2e-2 if ON_CUDA else 2**-7


def cache_bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern view, so NaN poison compares equal to itself."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def assert_cache_matches(got: torch.Tensor, want: torch.Tensor, bitwise: bool) -> None:
    """A written KV cache (codes or scales) against the reference's, NaN poison included.

    Exact on the CPU interpreter and for bf16 (``bitwise``: the same bits; otherwise equal values, so a
    -0 code may read back as +0); fp32 scales within 1e-6 relative on CUDA; fp8/int8 codes on CUDA within
    one code (int8) or 2^-3 relative + 2^-9 (fp8), for the device's rounding of the scale.
    """
    if not ON_CUDA or got.dtype == torch.bfloat16:
        if bitwise:
            assert torch.equal(cache_bits(got), cache_bits(want))
        else:
            torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0, equal_nan=True)
    elif got.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0, equal_nan=True)
    else:
        gf, wf = got.float().nan_to_num(0), want.float().nan_to_num(0)
        step = 1.0 if got.dtype == torch.int8 else 2**-3 * torch.maximum(gf.abs(), wf.abs()) + 2**-9
        assert ((gf - wf).abs() <= step).all()


def assert_fp32_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32 attention output vs reference: rtol 1e-4, atol 2e-5 (+ FP32_ATOL_REL * max|ref| on CUDA)."""
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-5 + FP32_ATOL_REL * float(ref.abs().max()))


@dataclass(frozen=True)
class PagedKV:
    """A filled paged cache: every block holds random data, sequences own random disjoint blocks."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    k_scale: torch.Tensor | None
    v_scale: torch.Tensor | None
    block_tables: torch.Tensor
    seq_lens: torch.Tensor


def _random_codes(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if dtype == torch.int8:
        return torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)
    if dtype == torch.float8_e4m3fn:
        return (torch.randn(shape, generator=gen) * 100).clamp(-448, 448).to(dtype)
    return torch.randn(shape, generator=gen).to(dtype)


def make_paged_kv(ctx_lens: list[int], num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
                  seed: int, spare_blocks: int = 3) -> PagedKV:
    """Random cache of ``dtype`` on DEVICE whose tables give each sequence ceil(ctx / block_size) blocks.

    Blocks are a random permutation (so a wrong block lookup reads unrelated data); table rows are padded
    with block 0 plus one extra column; ``spare_blocks`` unused blocks also hold random data.
    """
    gen = torch.Generator().manual_seed(seed)
    need = [(c + block_size - 1) // block_size for c in ctx_lens]
    num_blocks = sum(need) + spare_blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = _random_codes(shape, dtype, gen), _random_codes(shape, dtype, gen)
    k_scale = v_scale = None
    if dtype in QUANT:
        # Scales near 1/amax keep dequantised values O(1), so softmax is neither flat nor one-hot.
        qmax = 127.0 if dtype == torch.int8 else 448.0
        k_scale = (0.5 + torch.rand(shape[:3], generator=gen)) * 2.0 / qmax
        v_scale = (0.5 + torch.rand(shape[:3], generator=gen)) * 2.0 / qmax
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(ctx_lens), max(need, default=0) + 1, dtype=torch.int32)
    used = 0
    for s, n in enumerate(need):
        tables[s, :n] = perm[used:used + n]
        used += n
    seq_lens = torch.tensor(ctx_lens, dtype=torch.int32)
    k_scale, v_scale = (None, None) if k_scale is None else (k_scale.to(DEVICE), v_scale.to(DEVICE))
    return PagedKV(k_cache.to(DEVICE), v_cache.to(DEVICE), k_scale, v_scale, tables.to(DEVICE), seq_lens.to(DEVICE))
