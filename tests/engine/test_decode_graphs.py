"""The captured-decode path: static input staging (any device), and graphs and GEMV choice (CUDA only)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.decode_inputs import DecodeInputs
from engine.step_metadata import SEGMENT_ALIGN, TABLE_WIDTH_MULTIPLE
from policies.types import PrefillChunk, SamplingParams, StepPlan
from tests.engine.conftest import build_tiny_llama
from tests.engine.test_model import BS, chunked_logits, make_seq, runner

CUDA = torch.cuda.is_available()


def decoding_seqs(r, lens: tuple[int, ...], seed: int, first_blocks: tuple[int, ...] | None = None) -> list:
    """Sequences with their prompts but the last token prefilled, ready to decode."""
    gen = torch.Generator().manual_seed(seed)
    firsts = first_blocks or tuple(10 * i for i in range(len(lens)))
    seqs = [make_seq(f"s{i}", torch.randint(0, 300, (n,), generator=gen).tolist(), f)
            for i, (n, f) in enumerate(zip(lens, firsts, strict=True))]
    for s in seqs:
        chunked_logits(r, s, [s.prompt_len - 1])
        s.num_computed = s.prompt_len - 1
    return seqs


@pytest.fixture
def cpu_runner(tiny_llama):
    return runner(tiny_llama)


def test_staging_matches_builder_and_eager_logits(cpu_runner):
    r = cpu_runner
    seqs = decoding_seqs(r, (7, 13, 3), seed=4)
    inputs = DecodeInputs(8, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    inputs.stage(seqs, 8)
    meta = inputs.meta(8)
    built = r.builder.build(StepPlan(5, 0.0, decodes=seqs), pad_decodes_to=8,
                            decode_table_width=r.max_blocks_per_seq)
    for name in ("input_ids", "positions", "slot_mapping"):
        assert torch.equal(getattr(meta, name), getattr(built, name)), name
    assert torch.equal(meta.decode_seq_lens, built.decode_seq_lens)
    for i, s in enumerate(seqs):
        assert meta.decode_block_tables[i, : len(s.block_table)].tolist() == s.block_table
    assert (meta.decode_block_tables[3:, 0] == r.kv.scratch_block).all()
    assert meta.decode_block_tables.shape[1] % TABLE_WIDTH_MULTIPLE == 0
    eager = r.logits(StepPlan(5, 0.0, decodes=seqs))[0]
    staged = r.model.forward(meta, r.attention)
    assert staged.shape == (8, 300)
    torch.testing.assert_close(staged[:3], eager, atol=1e-5, rtol=1e-5)


def test_restaging_fewer_rows_over_stale_tables_stays_exact(cpu_runner):
    """A row reused by a shorter sequence keeps stale table entries past its blocks; nothing reads them."""
    r = cpu_runner
    long_seq, short_seq = decoding_seqs(r, (30, 5), seed=6, first_blocks=(0, 20))
    inputs = DecodeInputs(4, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    inputs.stage([long_seq, short_seq], 2)
    inputs.stage([short_seq], 2)  # short_seq now in row 0, over long_seq's table; row 1 is padding
    meta = inputs.meta(2)
    assert meta.decode_block_tables[0, len(short_seq.block_table)].item() == long_seq.block_table[
        len(short_seq.block_table)]
    assert meta.decode_seq_lens.tolist() == [short_seq.num_computed + 1, 1]
    eager = r.logits(StepPlan(5, 0.0, decodes=[short_seq]))[0]
    torch.testing.assert_close(r.model.forward(meta, r.attention)[:1], eager, atol=1e-5, rtol=1e-5)


def test_staging_errors(cpu_runner):
    r = cpu_runner
    seqs = decoding_seqs(r, (4, 5, 6), seed=1)
    inputs = DecodeInputs(2, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    with pytest.raises(ValueError, match="cannot stage 3 decodes in 2 rows"):
        inputs.stage(seqs, 2)
    with pytest.raises(ValueError, match=r"cannot stage 1 decodes in 4 rows \(at most 2\)"):
        inputs.stage(seqs[:1], 4)
    with pytest.raises(ValueError, match="max_rows must be >= 1, got 0"):
        DecodeInputs(0, 8, BS, 0, r.device)


def test_step_metadata_views_are_aligned(cpu_runner):
    """Aligned views and padded table widths keep Triton on one specialisation per kernel."""
    r = cpu_runner
    a, b = decoding_seqs(r, (9, 6), seed=2)
    fresh = make_seq("f", list(range(3, 14)), 40)
    plan = StepPlan(3, 0.0, prefills=[PrefillChunk(fresh, 0, 11)], decodes=[a, b], num_prefill_tokens=11)
    meta = r.builder.build(plan)
    for name in ("input_ids", "positions", "slot_mapping", "logits_indices", "prefill_cu_seqlens",
                 "prefill_seq_lens", "prefill_block_tables", "decode_seq_lens", "decode_block_tables"):
        t = getattr(meta, name)
        assert t.data_ptr() % SEGMENT_ALIGN == 0, name
    assert meta.prefill_block_tables.shape[1] == meta.decode_block_tables.shape[1] == TABLE_WIDTH_MULTIPLE


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_graph_decode_equals_eager_decode(tiny_llama):
    graphs = runner(tiny_llama, dtype="bfloat16", device="cuda", cuda_graph_batch_sizes=(1, 2, 4))
    eager = runner(tiny_llama, dtype="bfloat16", device="cuda", enforce_eager=True)
    assert graphs.graphs is not None and graphs.graphs.sizes == (1, 2, 4)
    seqs_g = decoding_seqs(graphs, (7, 13, 3), seed=4)
    seqs_e = decoding_seqs(eager, (7, 13, 3), seed=4)
    plan_g, plan_e = StepPlan(5, 0.0, decodes=seqs_g), StepPlan(5, 0.0, decodes=seqs_e)
    assert graphs.uses_graph(plan_g) and not eager.uses_graph(plan_e)
    got, want = graphs.logits(plan_g)[0], eager.logits(plan_e)[0]
    torch.testing.assert_close(got, want, atol=3e-2, rtol=0)
    res_g, res_e = graphs.execute(plan_g), eager.execute(plan_e)
    assert [res_g.token_ids[s.seq_id][0] for s in seqs_g] == got.argmax(-1).tolist()  # the in-graph argmax
    top2 = want.topk(2, dim=-1).values
    for s, margin in zip(seqs_g, (top2[:, 0] - top2[:, 1]).tolist(), strict=True):
        if margin > 0.1:  # bf16 rounding may only flip near-ties
            assert res_g.token_ids[s.seq_id] == res_e.token_ids[s.seq_id]
    for s in seqs_g:  # random sampling on the graph's logits
        s.request = dataclasses.replace(s.request, sampling=SamplingParams(temperature=1.0, seed=3))
    sampled = graphs.execute(plan_g).token_ids
    assert set(sampled) == {s.seq_id for s in seqs_g}
    assert all(0 <= t[0] < 300 for t in sampled.values())


@pytest.mark.skipif(not CUDA, reason="the GEMV choice is timed on a GPU")
def test_gemv_choice_and_forced_gemv_keep_results(tiny_llama):
    from kernels.gemv_bf16 import gemv_bf16

    r = runner(tiny_llama, dtype="bfloat16", device="cuda", enforce_eager=True)
    assert {t.kind for t in r.gemv_timings} == {"qkv", "o", "gate_up", "down", "lm_head"}
    assert all(t.linear_us > 0 for t in r.gemv_timings)
    assert r.fused_choice is not None and len(r.fused_choice.roles) == 4 and r.fused_choice.unfused_us > 0
    plain = runner(tiny_llama, dtype="bfloat16", device="cuda", enforce_eager=True, small_batch_gemv=False)
    assert plain.gemv_timings == []
    for lins in r.model.linears().values():  # every layer through the GEMV kernel, whatever was chosen
        for lin in lins:
            lin.gemv = gemv_bf16
    seqs_r = decoding_seqs(r, (7, 13, 3), seed=4)
    seqs_p = decoding_seqs(plain, (7, 13, 3), seed=4)
    got = r.logits(StepPlan(5, 0.0, decodes=seqs_r))[0]
    want = plain.logits(StepPlan(5, 0.0, decodes=seqs_p))[0]
    # bf16 rounding order only (the fused decode layers, when chosen, round the residual sums once less).
    err = ((got - want).abs().max() / want.std()).item()
    assert err < 0.05, f"GEMV path differs from F.linear by {err:.3f} std"


def test_pdl_is_ignored_off_hopper(cpu_runner):
    assert cpu_runner.config.pdl and not cpu_runner.pdl  # the default asks for it; the CPU cannot


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability()[0] < 9, reason="PDL needs a Hopper GPU")
@pytest.mark.parametrize("quantization", [None, "int4"])
def test_pdl_graph_decode_equals_plain_graph_decode(tiny_llama, tmp_path, quantization):
    """Programmatic dependent launch changes when kernels start, never what they compute: with the GEMV
    choice off (the same kernels both ways) the captured decode gives the same logits bit for bit."""
    if quantization == "int4":  # int4 groups of 128 input channels need a wider model
        tiny_llama = build_tiny_llama(tmp_path / "wide", hidden=128)
    kw = {"dtype": "bfloat16", "device": "cuda", "cuda_graph_batch_sizes": (1, 2, 4), "small_batch_gemv": False,
          "quantization": quantization}
    with_pdl, without = runner(tiny_llama, pdl=True, **kw), runner(tiny_llama, pdl=False, **kw)
    assert with_pdl.pdl and not without.pdl
    seqs_a = decoding_seqs(with_pdl, (7, 13, 3), seed=4)
    seqs_b = decoding_seqs(without, (7, 13, 3), seed=4)
    plan_a, plan_b = StepPlan(5, 0.0, decodes=seqs_a), StepPlan(5, 0.0, decodes=seqs_b)
    assert with_pdl.uses_graph(plan_a)
    assert torch.equal(with_pdl.logits(plan_a)[0], without.logits(plan_b)[0])
    res_a, res_b = with_pdl.execute(plan_a), without.execute(plan_b)
    assert [res_a.token_ids[s.seq_id] for s in seqs_a] == [res_b.token_ids[s.seq_id] for s in seqs_b]


def test_grouped_staging_reads_only_the_leaders_tables(tiny_llama):
    """With row groups only a group leader's table row is written; the others keep another sequence's
    stale table, which the decode kernel never reads: the logits equal those of ungrouped staging."""
    pytest.importorskip("kernels.attention_decode")
    from engine.step_metadata import DecodeRows

    r = runner(tiny_llama, dtype="bfloat16", attention_backend="triton", speculative_method="ngram",
               device="cuda" if CUDA else "cpu")
    assert r.max_group == 4  # 8 query heads over 2 kv heads: 4 rows fill the 16-row tile
    a, b, c = decoding_seqs(r, (9, 21, 13), seed=8, first_blocks=(0, 20, 40))
    rows = DecodeRows.of([a, b], [[11, 12, 13, 14, 15], [16, 17]])  # a: pieces of 4 + 2 rows; b: 3 rows
    grouped = DecodeInputs(16, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device, max_group=4)
    grouped.host["block_tables"][:9, : len(c.block_table)] = c.block_table  # every row holds c's table
    assert grouped.stage(rows, 16)  # rows in groups: the grouped kernel's step
    tables = grouped.host["block_tables"]
    assert grouped.host["group_lens"][:9].tolist() == [4, 0, 0, 0, 2, 0, 3, 0, 0]
    assert [tables[i, 0] for i in range(9)] == [0, 40, 40, 40, 0, 40, 20, 40, 40]  # leaders only
    plain = DecodeInputs(16, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    assert not plain.stage(rows, 16)  # no groups at all
    assert plain.meta(16).decode_group_lens is None
    want = r.model.forward(plain.meta(16), r.attention)[:9]
    torch.testing.assert_close(r.model.forward(grouped.meta(16), r.attention)[:9], want, atol=0, rtol=0)


def test_plain_steps_replay_the_ungrouped_graph(tiny_llama):
    """With row groups each size has two steps: verification rows replay the grouped one, plain decodes
    (groups of one, which the ungrouped kernel runs faster) the ungrouped one; both give the eager logits."""
    pytest.importorskip("kernels.attention_decode")
    from engine.cuda_graphs import DecodeGraphs
    from engine.step_metadata import DecodeRows

    r = runner(tiny_llama, dtype="bfloat16", attention_backend="triton", speculative_method="ngram",
               device="cuda" if CUDA else "cpu", enforce_eager=True)
    inputs = DecodeInputs(8, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device, max_group=r.max_group)
    graphs = DecodeGraphs(r._graph_forward, (2, 8), inputs, r.device, eager=not CUDA)
    assert set(graphs.graphs) == set(graphs.grouped) == {2, 8}
    a, b = decoding_seqs(r, (9, 21), seed=6)
    logits, _ = graphs.run([a, b])
    assert logits.data_ptr() == graphs.graphs[2].logits.data_ptr()
    want = r.logits(StepPlan(1, 0.0, decodes=[a, b]))[0]
    torch.testing.assert_close(logits.float(), want, atol=3e-2, rtol=0)
    rows = DecodeRows.of([a, b], [[5, 6], []])  # a verifies two drafts: one group of 3 rows, then b alone
    logits, _ = graphs.run(rows)
    assert logits.shape[0] == 4 and logits.data_ptr() == graphs.grouped[8].logits.data_ptr()
    plan = StepPlan(2, 0.0, decodes=[a, b], draft_lens=[2, 0], num_draft_tokens=2)
    eager = r.model.forward(r.builder.build(plan, rows=rows), r.attention)
    torch.testing.assert_close(logits.float(), eager.float(), atol=3e-2, rtol=0)


def test_restaging_writes_every_table_change(cpu_runner):
    """Staging skips table entries a row already holds, compared by value: a grown table, a table of the
    same length with other blocks (swap-in, recompute), another sequence in the row and a row that was
    padding all end up exactly in the mirror."""
    r = cpu_runner
    a, b, c = decoding_seqs(r, (9, 21, 13), seed=3, first_blocks=(0, 20, 40))
    inputs = DecodeInputs(4, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    tables = inputs.host["block_tables"]

    def staged(seqs: list, rows: int) -> None:
        inputs.stage(seqs, rows)
        for i, s in enumerate(seqs):
            assert tables[i, : len(s.block_table)].tolist() == s.block_table, (i, s.seq_id)

    staged([a, b], 4)
    staged([a, b], 4)  # unchanged
    a.block_table.append(60)  # grown by a block
    staged([a, b], 4)
    b.block_table[:] = list(range(30, 30 + len(b.block_table)))  # same length, other blocks
    staged([a, b], 4)
    staged([b, a], 2)  # the rows swap sequences
    staged([c], 1)  # row 0 to another sequence; row 1 keeps a's table
    staged([c, a, b], 4)  # row 2 was padding
    assert (tables[3, :1] == r.kv.scratch_block).all()


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_graph_decode_with_fused_rope_equals_eager_decode_without(tiny_llama):
    """A captured batch-1 decode whose qkv GEMV also applies RoPE and writes the KV cache
    (``EngineConfig.fused_rope``) gives the eager unfused-RoPE decode's logits within bf16 rounding."""
    graphs = runner(tiny_llama, dtype="bfloat16", device="cuda", cuda_graph_batch_sizes=(1, 2), fused_rope=True)
    if not (graphs.fused_choice is not None and graphs.fused_choice.chosen):
        pytest.skip("the fused decode layers lost their timing on this GPU, so there is no fused path to test")
    assert graphs.model.fused_rope and graphs.model.layers[0].qkv.norm_rope_gemv is not None
    eager = runner(tiny_llama, dtype="bfloat16", device="cuda", enforce_eager=True)
    for n in (9, 16, 17):  # the decoded token attends to its own K/V, which the fused GEMV wrote
        seqs_g = decoding_seqs(graphs, (n,), seed=6)
        seqs_e = decoding_seqs(eager, (n,), seed=6)
        plan_g, plan_e = StepPlan(5, 0.0, decodes=seqs_g), StepPlan(5, 0.0, decodes=seqs_e)
        assert graphs.uses_graph(plan_g)
        torch.testing.assert_close(graphs.logits(plan_g)[0], eager.logits(plan_e)[0], atol=3e-2, rtol=0)
