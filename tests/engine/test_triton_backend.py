"""The triton backend (kernels/, on the CPU interpreter without a GPU) against the torch backend.

Triton kernels need their tensors on the GPU when one is present, so every runner here uses ``DEV``.
"""

from __future__ import annotations

import pytest
import torch

from engine.linear import Linear
from policies.types import PrefillChunk, StepPlan
from tests.engine.test_model import chunked_logits, make_seq, runner

pytest.importorskip("kernels.attention_prefill")

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("kv", ["auto", "int8", "fp8"])
def test_triton_backend_matches_torch_backend(tiny_llama, kv):
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randint(0, 300, (n,), generator=gen).tolist() for n in (21, 13))
    out = []
    for backend in ("torch", "triton"):
        r = runner(tiny_llama, dtype="bfloat16", kv_cache_dtype=kv, attention_backend=backend, device=DEV,
                   enforce_eager=True)
        sa, sb = make_seq("a", a, 0), make_seq("b", b, 16)
        first = chunked_logits(r, sa, [9, 11])  # chunked prefill with a cached prefix
        chunked_logits(r, sb, [12])
        sb.num_computed = 12
        # One mixed step: a's last prompt token as a chunk, b's last token as a decode.
        plan = StepPlan(3, 0.0, prefills=[PrefillChunk(sa, 20, 1)], decodes=[sb], num_prefill_tokens=1)
        out.append(torch.cat([first, r.logits(plan, all_rows=True)[0]]))
    torch_out, triton_out = (x.cpu() for x in out)
    assert triton_out.shape == (22, 300)
    torch.testing.assert_close(triton_out, torch_out, atol=0.15 if kv == "fp8" else 8e-2, rtol=0)
    assert (triton_out.argmax(-1) == torch_out.argmax(-1)).float().mean() > 0.85


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_weight_only_quantization_equals_dequantized_weights(tiny_llama_wide, quant):
    """The quantized engine computes the model whose weights are the dequantized ones."""
    ql = pytest.importorskip("kernels.quant_linear")
    ref_fn = ql.int8_linear_ref if quant == "int8" else ql.int4_linear_ref
    ids = list(range(11, 40))
    r = runner(tiny_llama_wide, dtype="bfloat16", quantization=quant, device=DEV, enforce_eager=True)
    assert r.model.layers[0].qkv.weight is None  # really quantized
    got = chunked_logits(r, make_seq("a", ids, 0), [len(ids)])
    ref = runner(tiny_llama_wide, dtype="bfloat16", device=DEV, enforce_eager=True)
    for mine, theirs in zip(r.model.layers, ref.model.layers, strict=True):
        for name in ("qkv", "o", "gate_up", "down"):
            q = getattr(mine, name)
            eye = torch.eye(q.in_features, dtype=torch.float32, device=DEV)
            setattr(theirs, name, Linear(ref_fn(eye, q.qweight).T.to(torch.bfloat16)))
    want = chunked_logits(ref, make_seq("a", ids, 0), [len(ids)])
    base = chunked_logits(runner(tiny_llama_wide, dtype="bfloat16", device=DEV, enforce_eager=True),
                          make_seq("a", ids, 0), [len(ids)])
    assert (want - base).abs().max() > 0.02  # the dequantized model really differs
    err = (got - want).abs() / base.std()  # bf16 rounding differences only
    assert err.max() < 0.25 and err.mean() < 0.02


def test_w8a8_stays_close(tiny_llama_wide):
    pytest.importorskip("kernels.w8a8")
    ids = list(range(11, 40))
    kw = {"dtype": "bfloat16", "device": DEV, "enforce_eager": True}
    base = chunked_logits(runner(tiny_llama_wide, **kw), make_seq("a", ids, 0), [len(ids)])
    w8a8 = runner(tiny_llama_wide, quantization="w8a8", **kw)
    got = chunked_logits(w8a8, make_seq("a", ids, 0), [len(ids)])
    err = (got - base).abs() / base.std()  # int8 weights and per-token int8 activations
    assert 0 < err.mean() < 0.06 and err.max() < 0.4  # measured on an H100: mean 0.037, max 0.33


def test_int4_needs_width_multiple_of_group(tiny_llama):
    pytest.importorskip("kernels.quant_linear")
    with pytest.raises(ValueError, match=r"int4 quantization needs in_features divisible by 128, got a \[96, 64\]"):
        runner(tiny_llama, dtype="bfloat16", quantization="int4", device=DEV)


def test_merged_decode_splits_give_the_reduction_kernels_logits(tiny_llama, monkeypatch):
    """``merge_decode_splits``: a decode split over its context is merged inside the attention kernel
    (no reduction-kernel launch) and gives the reduction kernel's logits."""
    import kernels.attention_decode as attention_decode

    launches = []
    real = attention_decode.decode_reduce_kernel

    class CountingLaunch:  # the reduction kernel, counting its launches
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    monkeypatch.setattr(attention_decode, "decode_reduce_kernel", CountingLaunch())
    ids = torch.randint(0, 300, (201,), generator=torch.Generator().manual_seed(4)).tolist()  # 52 of 64 blocks
    logits, counts = [], []
    for merge in (False, True):
        launches.clear()
        r = runner(tiny_llama, dtype="bfloat16", attention_backend="triton", device=DEV, enforce_eager=True,
                   merge_decode_splits=merge)
        seq = make_seq("a", ids, 0)
        chunked_logits(r, seq, [200])
        seq.num_computed = 200  # decode position 200: 201 keys, two splits of 128 (and the ragged rest)
        logits.append(r.logits(StepPlan(2, 0.0, decodes=[seq]), all_rows=True)[0].cpu())
        counts.append(len(launches))
    assert counts[0] >= 2 and counts[1] == 0  # one reduction a layer without merging, none with it
    torch.testing.assert_close(logits[1], logits[0], atol=2e-2, rtol=0)  # bf16 outputs, one rounding apart


def test_merge_decode_splits_must_be_a_bool():
    from engine.config import EngineConfig

    with pytest.raises(ValueError, match="EngineConfig.merge_decode_splits: must be a bool, got 'yes'"):
        EngineConfig("m", merge_decode_splits="yes")
