"""rope_decode_attention vs its reference (rope_and_write_kv_ref, then the decode reference) and vs the two
unfused kernels: outputs within the decode bounds of test_attention_decode.py, caches as write_kv leaves
them (poisoned new slots must be written), q/k/v inputs untouched."""

from __future__ import annotations

import pytest
import torch

from kernels.attention_decode import paged_decode_attention, paged_decode_attention_ref
from kernels.attention_decode_rope import rope_decode_attention, rope_decode_attention_ref
from kernels.rope import apply_rope_ref, rope_cos_sin
from kernels.rope_kv_write import rope_and_write_kv
from tests.kernels.paged_kv_fixtures import DEVICE, assert_fp32_close, make_paged_kv

LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def _step(ctx_lens: list[int], hq: int, hkv: int, d: int, bs: int, dtype: torch.dtype, seed: int) -> dict:
    """A decode step over a random paged cache: new qkv (fp32), positions ctx - 1, their slots poisoned."""
    kv = make_paged_kv(ctx_lens, hkv, d, bs, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    qkv = (torch.randn(len(ctx_lens), hq + 2 * hkv, d, generator=gen) * 2).to(DEVICE)
    lens = kv.seq_lens.long()
    positions = lens - 1
    tables = kv.block_tables.long()
    slots = tables.gather(1, (positions // bs)[:, None]).squeeze(1) * bs + positions % bs
    poison = -128 if dtype == torch.int8 else float("nan")
    for cache in (kv.k_cache, kv.v_cache):  # the kernel must write the new token before reading it
        cache.view(-1, hkv, d)[slots] = torch.tensor(poison).to(dtype).to(DEVICE)
    return {"q": qkv[:, :hq], "k": qkv[:, hq:hq + hkv], "v": qkv[:, hq + hkv:], "positions": positions,
            "cos_sin": rope_cos_sin(d, 4096, 500000.0, LLAMA3, device=DEVICE), "k_cache": kv.k_cache,
            "v_cache": kv.v_cache, "slot_mapping": slots, "block_tables": kv.block_tables,
            "seq_lens": kv.seq_lens, "softmax_scale": d**-0.5, "k_scale": kv.k_scale, "v_scale": kv.v_scale}


def _copy(step: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in step.items()}


def _assert_caches_close(got: dict, want: dict) -> None:
    for name in ("k_cache", "v_cache", "k_scale", "v_scale"):
        if got[name] is None:
            continue
        g, w = got[name].float(), want[name].float()
        assert not g.isnan().any(), name  # every poisoned slot was written
        # A rotated k may differ by one ulp from the reference's; a quantised code then by one step.
        torch.testing.assert_close(g, w, rtol=2**-2, atol=1.0 if got[name].dtype == torch.int8 else 2**-6)


@pytest.mark.parametrize("splits", [4, None])
@pytest.mark.parametrize(("ctx_lens", "hq", "hkv", "d", "bs", "dtype"), [
    ([1, 37, 300, 1000], 4, 4, 64, 16, torch.bfloat16),  # GQA 1; 1000 keys in up to 4 splits
    ([613, 9, 130], 8, 2, 64, 8, torch.int8),  # GQA 4, quantised
    ([257, 16], 16, 2, 128, 16, torch.float8_e4m3fn),  # GQA 8, head_dim 128, a block-aligned context
    ([700, 3, 41], 12, 4, 64, 16, torch.bfloat16),  # non-power-of-two group
])
def test_matches_reference(ctx_lens: list[int], hq: int, hkv: int, d: int, bs: int, dtype: torch.dtype,
                           splits: int | None) -> None:
    step = _step(ctx_lens, hq, hkv, d, bs, dtype, seed=sum(ctx_lens) + hq)
    got, want = _copy(step), _copy(step)
    out = torch.full_like(step["q"], float("nan"))
    rope_decode_attention(**got, num_splits=splits, out=out)
    # Loosely, the composed reference (its bf16 cache stores round to nearest; the interpreter's truncate) ...
    ref = rope_decode_attention_ref(**want)
    assert (out - ref).abs().max() <= 2**-6 * ref.abs().max()
    _assert_caches_close(got, want)
    # ... and tightly, attention over the cache the kernel itself wrote, with the reference's rotated q.
    q = step["q"].clone()
    apply_rope_ref(q, step["k"].clone(), step["positions"], step["cos_sin"])
    exact = paged_decode_attention_ref(q, got["k_cache"], got["v_cache"], step["block_tables"], step["seq_lens"],
                                       step["softmax_scale"], got["k_scale"], got["v_scale"])
    assert_fp32_close(out, exact)
    for name in ("q", "k", "v"):  # inputs are read, not rotated in place
        assert torch.equal(got[name], step[name]), name


def test_close_to_the_unfused_kernels() -> None:
    step = _step([5, 290, 1], 8, 2, 64, 16, torch.bfloat16, seed=3)
    step.update({n: step[n].to(torch.bfloat16) for n in ("q", "k", "v")})
    fused, unfused = _copy(step), _copy(step)
    out = rope_decode_attention(**fused)
    u = unfused
    rope_and_write_kv(u["q"], u["k"], u["v"], u["positions"], u["cos_sin"], u["k_cache"], u["v_cache"],
                      u["slot_mapping"])
    want = paged_decode_attention(u["q"], u["k_cache"], u["v_cache"], u["block_tables"], u["seq_lens"],
                                  u["softmax_scale"])
    ref = want.float()
    assert (out.float() - ref).abs().max() <= 2**-6 * ref.abs().max()
    _assert_caches_close(fused, unfused)


def test_negative_slot_writes_nothing() -> None:
    step = _step([20, 33], 4, 2, 64, 16, torch.bfloat16, seed=5)
    before = step["k_cache"].clone()
    step["slot_mapping"] = torch.full_like(step["slot_mapping"], -1)
    rope_decode_attention(**step)
    assert torch.equal(step["k_cache"].float().isnan(), before.float().isnan())  # the poison stays


def test_bad_arguments_are_named() -> None:
    step = _step([20, 33], 4, 2, 64, 16, torch.bfloat16, seed=5)
    with pytest.raises(ValueError, match="num_splits must be a positive int"):
        rope_decode_attention(**step, num_splits=0)
    step["slot_mapping"] = step["slot_mapping"][:1]
    with pytest.raises(ValueError, match="slot_mapping"):
        rope_decode_attention(**step)
