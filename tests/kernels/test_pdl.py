"""Programmatic dependent launch (kernels/pdl.py): refused off Hopper with a clear error; on a Hopper GPU a
CUDA graph of the decode kernels chained with PDL gives the same bits as the same chain without it."""

from __future__ import annotations

import pytest
import torch

from kernels.attention_decode import paged_decode_attention
from kernels.gemv_bf16 import GemvConfig, candidate_configs, gemv_bf16
from kernels.gemv_fused import fused_candidates, gemv_residual, gemv_rms_norm
from kernels.gemv_rope import gemv_rms_norm_rope
from kernels.pdl import pdl_launch_options, pdl_supported
from kernels.quant_linear import int4_linear, int8_linear, quantize_int4, quantize_int8
from kernels.rope import rope_cos_sin
from kernels.rope_kv_write import rope_and_write_kv
from tests.kernels.paged_kv_fixtures import make_paged_kv

HOPPER = torch.cuda.is_available() and pdl_supported(torch.device("cuda"))


def test_pdl_is_refused_off_hopper_naming_the_flag() -> None:
    cpu = torch.device("cpu")
    assert not pdl_supported(cpu)
    assert pdl_launch_options(False, cpu) == {}
    with pytest.raises(ValueError, match="pdl=True needs a CUDA device of compute capability >= 9.0"):
        pdl_launch_options(True, cpu)
    x, w = torch.randn(1, 64, dtype=torch.bfloat16), torch.randn(48, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="pdl=True needs"):
        gemv_bf16(x, w, config=GemvConfig(8, 64, 4, pdl=True))
    with pytest.raises(ValueError, match="pdl=True needs"):
        int4_linear(torch.randn(1, 128, dtype=torch.bfloat16), quantize_int4(torch.randn(48, 128)), pdl=True)
    with pytest.raises(ValueError, match="pdl=True needs"):
        int8_linear(x, quantize_int8(w.float().cpu()), pdl=True)
    kv = make_paged_kv([5], 2, 64, 16, torch.bfloat16, seed=0)
    kc, vc, tables, lens = (t.cpu() for t in (kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens))
    q = torch.randn(1, 4, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="pdl=True needs"):
        paged_decode_attention(q, kc, vc, tables, lens, 0.125, pdl=True)
    k, v = torch.randn(1, 2, 64, dtype=torch.bfloat16), torch.randn(1, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="pdl=True needs"):
        rope_and_write_kv(q, k, v, torch.tensor([4]), rope_cos_sin(64, 16, 500000.0, None), kc, vc,
                          torch.tensor([4]), pdl=True)


def test_pdl_configs() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="GemvConfig.pdl must be a bool, got 1"):
        GemvConfig(pdl=1)
    assert GemvConfig(8, 512, 4, pdl=True).label == "n8k512w4p"
    plain, pdl = candidate_configs(3072, 2048, cpu), candidate_configs(3072, 2048, cpu, pdl=True)
    assert [GemvConfig(c.block_n, c.block_k, c.num_warps, c.split_k, True) for c in plain] == pdl
    assert all(c.pdl and c.split_k == 1 and c.block_n >= 2 for c in fused_candidates(16384, 2048, cpu, True, True))


def _chain(pdl: bool, tensors: dict, fused_rope: bool = False, late_trigger: bool = False) -> torch.Tensor:
    """A decode layer's kernels in order, each reading the previous one's output (``fused_rope``: RoPE and
    the KV write in the qkv GEMV's epilogue, kernels/gemv_rope.py; ``late_trigger``: the separate RoPE +
    KV-write kernel lets the next one launch after its stores)."""
    t = tensors
    cfg = GemvConfig(8, 512, 4, pdl=pdl)
    kv = t["kv"]
    if fused_rope:
        qkv = gemv_rms_norm_rope(t["r"], t["nw"], 1e-5, t["w_qkv"], t["pos"], t["cos_sin"], kv.k_cache, kv.v_cache,
                                 t["slot"], 4, config=cfg)
    else:
        qkv = gemv_rms_norm(t["r"], t["nw"], 1e-5, t["w_qkv"], config=cfg)
    q = qkv[:, :256].reshape(1, 4, 64)
    k = qkv[:, 256:384].reshape(1, 2, 64)
    v = qkv[:, 384:].reshape(1, 2, 64)
    if not fused_rope:
        rope_and_write_kv(q, k, v, t["pos"], t["cos_sin"], kv.k_cache, kv.v_cache, t["slot"], pdl=pdl,
                          late_trigger=late_trigger)
    attn = paged_decode_attention(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.seq_lens, 0.125, pdl=pdl,
                                  num_splits=4)
    r = gemv_residual(attn.reshape(1, 256), t["w_o"], t["r"], config=GemvConfig(4, 256, 4, split_k=2, pdl=pdl))
    h = gemv_rms_norm(r, t["nw"], 1e-5, t["w_gu"], config=GemvConfig(8, 256, 4, pdl=pdl), glu=True)
    return gemv_residual(h, t["w_down"], r, config=cfg)


@pytest.mark.skipif(not HOPPER, reason="PDL needs a CUDA GPU of compute capability >= 9.0")
@pytest.mark.parametrize(("fused_rope", "late_trigger"), [(False, False), (False, True), (True, False)])
def test_pdl_chain_in_a_graph_equals_the_plain_chain(fused_rope: bool, late_trigger: bool) -> None:
    dev = torch.device("cuda")
    outs = []
    for pdl in (False, True):
        kv = make_paged_kv([600], 2, 64, 16, torch.bfloat16, seed=1)  # on the GPU (DEVICE)
        g = torch.Generator().manual_seed(2)

        def rnd(*shape: int, g: torch.Generator = g) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) * 0.1).to(torch.bfloat16).to(dev)

        slot = (kv.block_tables[0, 599 // 16] * 16 + 599 % 16).reshape(1).long()
        tensors = {"r": rnd(1, 320), "nw": rnd(320) + 1, "w_qkv": rnd(512, 320), "w_o": rnd(320, 256),
                   "w_gu": rnd(2 * 960, 320), "w_down": rnd(320, 960), "kv": kv,
                   "pos": torch.tensor([599], device=dev), "slot": slot,
                   "cos_sin": rope_cos_sin(64, 1024, 500000.0, None).to(dev)}
        _chain(pdl, tensors, fused_rope, late_trigger)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _chain(pdl, tensors, fused_rope, late_trigger)
        graph.replay()
        torch.cuda.synchronize()
        outs.append(out.clone())
    assert torch.isfinite(outs[0].float()).all()
    assert torch.equal(outs[0], outs[1])


@pytest.mark.skipif(not HOPPER, reason="PDL needs a CUDA GPU of compute capability >= 9.0")
@pytest.mark.parametrize("rows", [1, 3])
def test_pdl_quantized_gemvs_in_a_graph_equal_the_plain_ones(rows: int) -> None:
    """int4 -> int8 -> int4, each reading the last one's output, captured with and without PDL."""
    g = torch.Generator().manual_seed(rows)
    dev = torch.device("cuda")
    w1, w2 = (torch.randn(n, k, generator=g) * 0.05 for n, k in ((384, 256), (256, 384)))
    q1, q2, q3 = quantize_int4(w1.to(dev), group_size=128), quantize_int8(w2.to(dev)), quantize_int4(w1.to(dev))
    x = torch.randn(rows, 256, generator=g).to(torch.bfloat16).to(dev)
    outs = []
    for pdl in (False, True):
        def chain(pdl: bool = pdl) -> torch.Tensor:
            return int4_linear(int8_linear(int4_linear(x, q1, pdl=pdl), q2, pdl=pdl), q3, pdl=pdl)

        chain()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = chain()
        graph.replay()
        torch.cuda.synchronize()
        outs.append(out.clone())
    assert torch.isfinite(outs[0].float()).all()
    assert torch.equal(outs[0], outs[1])
