"""rope_and_write_kv vs rope_and_write_kv_ref (apply_rope_ref + write_kv_ref) and vs the two unfused kernels.

Rotated q/k may differ from the fp32 reference by one output ulp (the interpreter's fp32 -> bf16 cast
truncates, CUDA may contract to FMA; bound as in test_rope.py), so the caches are compared twice: loosely with
the composed reference, and exactly (poison in untouched slots and scales included) with write_kv_ref of the
kernel's own rotated k and v (on CUDA fp8/int8 codes within one quantisation step, as in test_kv_write.py).
Against the unfused Triton kernels (same jit helpers) everything is bitwise equal.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from kernels.kv_write import write_kv, write_kv_ref
from kernels.rope import apply_rope_, rope_cos_sin
from kernels.rope_kv_write import rope_and_write_kv, rope_and_write_kv_ref
from tests.kernels.paged_kv_fixtures import DEVICE, assert_cache_matches, cache_bits

LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
MAX_POS = 512
DTYPES = [torch.bfloat16, torch.float8_e4m3fn, torch.int8]
Caches = list[torch.Tensor]


def _caches(shape: tuple[int, int, int, int], dtype: torch.dtype) -> Caches:
    """k_cache, v_cache (+ k_scale, v_scale when quantised) full of poison: NaN, or int8's -128 (no code)."""
    fill = -128 if dtype == torch.int8 else float("nan")
    out = [torch.full(shape, fill, device=DEVICE).to(dtype) for _ in range(2)]
    if dtype != torch.bfloat16:
        out += [torch.full(shape[:3], float("nan"), device=DEVICE) for _ in range(2)]
    return out


def _split(qkv: torch.Tensor, hq: int, hkv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as strided views of one fused buffer (as the engine's qkv projection gives them)."""
    return qkv[:, :hq], qkv[:, hq:hq + hkv], qkv[:, hq + hkv:]


def _inputs(num_tokens: int, hq: int, hkv: int, head_dim: int, num_slots: int,
            seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused qkv [T, hq + 2 hkv, D] bf16, positions [T] and slots [T] (some -1 when T > 2) on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(num_tokens, hq + 2 * hkv, head_dim, generator=gen) * 3).to(torch.bfloat16)
    qkv[0, hq] = 0.0  # an all-zero k head must not produce NaN scales/codes
    positions = torch.randint(0, MAX_POS, (num_tokens,), generator=gen)
    slots = torch.randperm(num_slots, generator=gen)[:num_tokens]
    if num_tokens > 2:
        slots[2] = slots[-1] = -1  # CUDA-graph padding rows: rotated, never written
    return qkv.to(DEVICE), positions.to(DEVICE), slots.to(DEVICE)


def _run(fn: Callable[..., None], qkv: torch.Tensor, hq: int, hkv: int, positions: torch.Tensor,
         cos_sin: torch.Tensor, slots: torch.Tensor, shape: tuple[int, int, int, int],
         dtype: torch.dtype) -> tuple[torch.Tensor, Caches]:
    qkv = qkv.clone()
    caches = _caches(shape, dtype)
    fn(*_split(qkv, hq, hkv), positions, cos_sin, *caches[:2], slots, *caches[2:])
    return qkv, caches


def _assert_same_caches(got: Caches, want: Caches) -> None:
    for g, w in zip(got, want, strict=True):
        # Values, not bits: a -0 code may read back as +0 (the interpreter's fp8 rounding helper drops the
        # sign of zero, in write_kv too).
        assert_cache_matches(g, w, bitwise=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_tokens", "hq", "hkv", "head_dim", "block_size"), [
    (1, 4, 4, 64, 16),      # batch-1 decode, no GQA
    (7, 12, 3, 128, 32),    # GQA 4, heads not a power of two
    (33, 16, 2, 64, 32),    # GQA 8
    (33, 8, 1, 128, 16),    # GQA 8, one kv head
])
def test_matches_reference(dtype: torch.dtype, num_tokens: int, hq: int, hkv: int, head_dim: int,
                           block_size: int) -> None:
    shape = (num_tokens // block_size + 3, block_size, hkv, head_dim)
    qkv, positions, slots = _inputs(num_tokens, hq, hkv, head_dim, shape[0] * block_size, num_tokens + hq)
    cos_sin = rope_cos_sin(head_dim, MAX_POS, 500000.0, LLAMA3, device=DEVICE)
    got_qkv, got = _run(rope_and_write_kv, qkv, hq, hkv, positions, cos_sin, slots, shape, dtype)
    want_qkv, want = _run(rope_and_write_kv_ref, qkv, hq, hkv, positions, cos_sin, slots, shape, dtype)

    assert torch.equal(got_qkv[:, hq + hkv:], qkv[:, hq + hkv:])  # v untouched
    torch.testing.assert_close(got_qkv.float(), want_qkv.float(), rtol=2**-7, atol=1e-6)  # one bf16 ulp
    # The composed reference's cache, within the quantisation step a one-ulp change of k can cause ...
    for g, w in zip(got, want, strict=True):
        gf, wf = g.float().nan_to_num(0), w.float().nan_to_num(0)
        assert torch.equal(g.float().isnan(), w.float().isnan())
        torch.testing.assert_close(gf, wf, rtol=2**-2, atol=1.0 if g.dtype == torch.int8 else 2**-6)
    # ... and exactly what the kernel left in k (and v), stored as write_kv stores it.
    want = _caches(shape, dtype)
    write_kv_ref(*_split(got_qkv, hq, hkv)[1:], *want[:2], slots, *want[2:])
    _assert_same_caches(got, want)
    # Every kept token's slot was written; every other slot still holds the poison.
    written = torch.zeros(shape[0] * block_size, dtype=torch.bool, device=DEVICE)
    written[slots[slots >= 0]] = True
    k_cache = got[0].view(-1, hkv, head_dim).float()
    poisoned = k_cache == -128 if dtype == torch.int8 else k_cache.isnan()
    assert poisoned[~written].all() and not poisoned[written].any()
    if num_tokens > 1:  # the rotation really happened (position 0 is the only identity)
        assert not torch.allclose(got_qkv[:, :hq + hkv].float(), qkv[:, :hq + hkv].float(), atol=0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_equals_unfused_kernels(dtype: torch.dtype) -> None:
    """The engine swaps apply_rope_ + write_kv for the fused kernel: same bits (int32 indices here)."""
    hq, hkv, d, bs = 8, 2, 64, 16
    qkv, positions, slots = _inputs(9, hq, hkv, d, 4 * bs, seed=11)
    positions, slots = positions.int(), slots.int()
    cos_sin = rope_cos_sin(d, MAX_POS, 10000.0, None, device=DEVICE)

    def unfused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, cs: torch.Tensor,
                *cache_args: torch.Tensor | None) -> None:
        apply_rope_(q, k, pos, cs)
        write_kv(k, v, *cache_args)

    got_qkv, got = _run(rope_and_write_kv, qkv, hq, hkv, positions, cos_sin, slots, (4, bs, hkv, d), dtype)
    want_qkv, want = _run(unfused, qkv, hq, hkv, positions, cos_sin, slots, (4, bs, hkv, d), dtype)
    assert torch.equal(got_qkv, want_qkv)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(cache_bits(g), cache_bits(w))


def test_all_padding_rows_rotate_but_write_nothing() -> None:
    hq, hkv, d, bs = 4, 2, 64, 16
    qkv, positions, _ = _inputs(3, hq, hkv, d, 2 * bs, seed=2)
    slots = torch.full((3,), -1, dtype=torch.int64, device=DEVICE)
    cos_sin = rope_cos_sin(d, MAX_POS, 10000.0, None, device=DEVICE)
    got_qkv, got = _run(rope_and_write_kv, qkv, hq, hkv, positions, cos_sin, slots, (2, bs, hkv, d),
                        torch.float8_e4m3fn)
    want_qkv, _ = _run(rope_and_write_kv_ref, qkv, hq, hkv, positions, cos_sin, slots, (2, bs, hkv, d),
                       torch.float8_e4m3fn)
    torch.testing.assert_close(got_qkv.float(), want_qkv.float(), rtol=2**-7, atol=1e-6)
    assert all(t.float().isnan().all() for t in got)


def test_bad_arguments_raise() -> None:
    q, k = torch.zeros(4, 8, 64, dtype=torch.bfloat16), torch.zeros(4, 2, 64, dtype=torch.bfloat16)
    pos, slots = torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    cos_sin = rope_cos_sin(64, 16, 10000.0)
    kc, sc = torch.zeros(3, 8, 2, 64, dtype=torch.int8), torch.zeros(3, 8, 2)
    with pytest.raises(ValueError, match="positions has dtype torch.float32"):
        rope_and_write_kv(q, k, k, pos.float(), cos_sin, kc, kc.clone(), slots, sc, sc.clone())
    with pytest.raises(ValueError, match=r"cos_sin must be a contiguous \[max_pos, 64\] tensor"):
        rope_and_write_kv(q, k, k, pos, cos_sin[:, :32], kc, kc.clone(), slots, sc, sc.clone())
    with pytest.raises(ValueError, match="k_scale is required"):
        rope_and_write_kv(q, k, k, pos, cos_sin, kc, kc.clone(), slots)
    with pytest.raises(ValueError, match=r"v must have shape \(4, 2, 64\)"):
        rope_and_write_kv(q, k, k[:, :1], pos, cos_sin, kc, kc.clone(), slots, sc, sc.clone())
    with pytest.raises(ValueError, match="slot_mapping has dtype torch.float32"):
        rope_and_write_kv(q, k, k, pos, cos_sin, kc, kc.clone(), slots.float(), sc, sc.clone())
