"""write_kv vs write_kv_ref: codes and scales, skipped slots untouched, quantisation error bound.

On the CPU interpreter codes and scales must be bitwise equal to the reference (same fp32 operations). On CUDA
the fp32 division may round differently, so codes may differ by one quantisation step and scales by 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from kernels.kv_write import quantize_kv_ref, write_kv, write_kv_ref
from tests.kernels.paged_kv_fixtures import DEVICE, ON_CUDA, assert_cache_matches, cache_bits

DTYPES = [torch.bfloat16, torch.float8_e4m3fn, torch.int8]


def _poisoned_cache(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    # int8 has no NaN: -128 is a code the quantiser never produces (it clamps to +-127).
    if dtype == torch.int8:
        return torch.full(shape, -128, dtype=torch.int8, device=DEVICE)
    return torch.full(shape, float("nan"), device=DEVICE).to(dtype)


def _written(t: torch.Tensor) -> torch.Tensor:
    """Mask of elements holding a written value (not the NaN / -128 poison)."""
    return t != -128 if t.dtype == torch.int8 else ~t.float().isnan()


Caches = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def _run(fn: Callable[..., None], k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor,
         shape: tuple[int, int, int, int], dtype: torch.dtype) -> Caches:
    kc, vc = _poisoned_cache(shape, dtype), _poisoned_cache(shape, dtype)
    ks = vs = None
    if dtype != torch.bfloat16:
        ks, vs = (torch.full(shape[:3], float("nan"), device=DEVICE) for _ in range(2))
    fn(k, v, kc, vc, slots, ks, vs)
    return kc, vc, ks, vs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_tokens", "heads", "head_dim", "block_size"), [(13, 3, 64, 8), (1, 8, 128, 16)])
def test_write_kv_matches_reference(dtype: torch.dtype, num_tokens: int, heads: int, head_dim: int,
                                    block_size: int) -> None:
    gen = torch.Generator().manual_seed(num_tokens * 7 + heads)
    shape = (5, block_size, heads, head_dim)
    # k and v as strided views of one fused buffer (as the engine's qkv split gives them).
    fused = (torch.randn(num_tokens, 2 * heads + 1, head_dim, generator=gen) * 3).to(torch.bfloat16).to(DEVICE)
    k, v = fused[:, :heads], fused[:, heads + 1:]
    k[0, 0] = 0.0  # an all-zero head must not produce NaN scales/codes
    slots = torch.randperm(shape[0] * block_size, generator=gen)[:num_tokens].to(DEVICE)
    if num_tokens > 2:
        slots[2] = -1
    got = _run(write_kv, k, v, slots, shape, dtype)
    want = _run(write_kv_ref, k, v, slots, shape, dtype)
    for g, w in zip(got, want, strict=True):
        if g is None:
            continue
        assert w is not None
        # NaN/-128 poison must survive exactly where the reference leaves it.
        assert torch.equal(cache_bits(g)[~_written(w)], cache_bits(w)[~_written(w)])
        assert_cache_matches(g, w, bitwise=True)  # bf16 stores are exact copies everywhere
    kc = got[0].view(-1, heads, head_dim)
    written = slots[slots >= 0]
    untouched = torch.ones(kc.shape[0], dtype=torch.bool, device=DEVICE)
    untouched[written] = False
    poison = kc[untouched].float()
    assert (poison.isnan() | (poison == -128)).all()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8])
def test_quantisation_error_bound(dtype: torch.dtype) -> None:
    """int8: |deq - x| <= scale / 2 (round to nearest); fp8 e4m3: <= 2^-4 |x| + 2^-10 scale (3 mantissa bits,
    subnormal step 2^-9 scale)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 4, 64, generator=gen) * torch.logspace(-3, 2, 9)[:, None, None]
    x = x.to(torch.bfloat16).to(DEVICE)
    kc = torch.empty(2, 8, 4, 64, dtype=dtype, device=DEVICE)
    vc = torch.empty_like(kc)
    ks, vs = torch.empty(2, 8, 4, device=DEVICE), torch.empty(2, 8, 4, device=DEVICE)
    write_kv(x, x, kc, vc, torch.arange(9, device=DEVICE) + 3, ks, vs)
    codes, scale = kc.view(-1, 4, 64)[3:12].float(), ks.view(-1, 4)[3:12]
    err = (codes * scale[..., None] - x.float()).abs()
    if dtype == torch.int8:
        bound = scale[..., None] * 0.5 * (1 + 1e-5)
    else:
        bound = x.float().abs() * 2**-4 + scale[..., None] * 2**-10
    assert (err <= bound).all()
    if not ON_CUDA:
        ref_codes, ref_scale = quantize_kv_ref(x, dtype)
        assert torch.equal(scale, ref_scale)
        assert torch.equal(cache_bits(kc.view(-1, 4, 64)[3:12]), cache_bits(ref_codes))


def test_bad_arguments_raise() -> None:
    k = torch.zeros(4, 2, 64, dtype=torch.bfloat16)
    kc = torch.zeros(3, 8, 2, 64, dtype=torch.int8)
    sc = torch.zeros(3, 8, 2)
    with pytest.raises(ValueError, match="slot_mapping has dtype torch.float32"):
        write_kv(k, k, kc, kc.clone(), torch.zeros(4), sc, sc.clone())
    with pytest.raises(ValueError, match="k_scale is required"):
        write_kv(k, k, kc, kc.clone(), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"v must have shape \(4, 2, 64\)"):
        write_kv(k, k[:, :1], kc, kc.clone(), torch.zeros(4, dtype=torch.int64), sc, sc.clone())
