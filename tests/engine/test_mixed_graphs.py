"""Captured mixed steps: static staging (any device, Triton on the CPU interpreter) and graphs (CUDA only)."""

from __future__ import annotations

import pytest
import torch

from engine.mixed_inputs import MixedInputs
from policies.types import PrefillChunk, StepPlan
from tests.engine.test_decode_graphs import decoding_seqs
from tests.engine.test_model import BS, chunked_logits, make_seq, runner

pytest.importorskip("kernels.attention_prefill")

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def mixed_plan(r, seed: int) -> tuple[StepPlan, list]:
    """Two decodes, a fresh prompt's first chunk (no sample) and a cached prompt's last chunk (samples)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = decoding_seqs(r, (9, 14), seed=seed, first_blocks=(0, 10))
    fresh = make_seq("fresh", torch.randint(0, 300, (19,), generator=gen).tolist(), 20)
    cached = make_seq("cached", torch.randint(0, 300, (17,), generator=gen).tolist(), 30)
    chunked_logits(r, cached, [6])  # positions 0..5 already in the cache
    plan = StepPlan(4, 0.0, prefills=[PrefillChunk(fresh, 0, 7), PrefillChunk(cached, 6, 11)],
                    decodes=[a, b], num_prefill_tokens=18)
    return plan, [cached, a, b]


@pytest.fixture
def triton_runner(tiny_llama):
    return runner(tiny_llama, dtype="bfloat16", attention_backend="triton", device=DEV, enforce_eager=True)


def by_seq(logits: torch.Tensor, seqs: list) -> dict[str, torch.Tensor]:
    return {s.seq_id: row for s, row in zip(seqs, logits, strict=True)}


def test_staging_layout_and_logits_match_the_eager_step(triton_runner):
    r = triton_runner
    plan, sampling = mixed_plan(r, seed=5)
    cached, a, b = sampling
    eager, eager_seqs = r.logits(plan)
    assert eager_seqs == [cached, a, b]  # the eager order: sampling chunks, then decodes
    inputs = MixedInputs(64, 8, 8, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    assert inputs.fits(plan)
    seqs, grouped = inputs.stage(plan, 32)
    assert seqs == [a, b, cached] and not grouped  # decodes lead in a captured step
    meta = inputs.meta(32, 8)
    assert meta.padded and meta.num_decodes == 8 and meta.num_prefill_tokens == 32
    assert meta.decode_seq_lens.tolist() == [9, 14, 0, 0, 0, 0, 0, 0]
    assert meta.prefill_cu_seqlens.tolist() == [2, 9, 20, 20, 20, 20, 20, 20, 20]
    assert meta.prefill_seq_lens[:2].tolist() == [7, 17]
    assert meta.logits_indices.tolist() == [0, 1, 19, 0, 0, 0, 0, 0]
    assert meta.positions[:20].tolist() == [8, 13, *range(7), *range(6, 17)]
    assert (meta.slot_mapping[20:] == r.kv.scratch_block * BS).all()
    built = r.builder.build(plan)  # eager order: chunks' tokens, then decodes
    for name in ("slot_mapping", "input_ids"):
        staged, eager_rows = getattr(meta, name), getattr(built, name)
        assert torch.equal(staged[2:20], eager_rows[:18]) and torch.equal(staged[:2], eager_rows[18:]), name
    staged_logits = r.model.forward(meta, r.attention)
    assert staged_logits.shape == (8, 300)
    got, want = by_seq(staged_logits[:3], seqs), by_seq(eager, eager_seqs)
    for sid in want:
        torch.testing.assert_close(got[sid], want[sid], atol=3e-2, rtol=0)


def test_restaging_a_smaller_step_resets_its_padding(triton_runner):
    r = triton_runner
    plan, _ = mixed_plan(r, seed=7)
    inputs = MixedInputs(64, 8, 8, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    inputs.stage(plan, 32)
    small = StepPlan(5, 0.0, prefills=[plan.prefills[1]], num_prefill_tokens=11)
    eager = r.logits(small)[0]
    assert inputs.stage(small, 16) == ([plan.prefills[1].seq], False)
    meta = inputs.meta(16, 8)
    assert meta.prefill_cu_seqlens.tolist() == [0, 11, *[11] * 7]
    assert meta.decode_seq_lens.tolist() == [0] * 8  # the earlier step's decodes are gone
    assert meta.input_ids[11:16].tolist() == [0] * 5 and meta.positions[11:16].tolist() == [0] * 5
    assert meta.logits_indices.tolist() == [10, *[0] * 7]
    torch.testing.assert_close(r.model.forward(meta, r.attention)[:1], eager, atol=3e-2, rtol=0)


def test_staging_errors(triton_runner):
    r = triton_runner
    plan, _ = mixed_plan(r, seed=2)
    with pytest.raises(ValueError, match="max_rows <= max_seqs"):
        MixedInputs(64, 2, 4, 8, BS, 0, r.device)
    small = MixedInputs(16, 3, 3, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    assert not small.fits(plan)  # 20 tokens and 4 sequences
    with pytest.raises(ValueError, match=r"cannot stage a step of 20 tokens, 4 sequences in 16 tokens"):
        small.stage(plan, 16)
    roomy = MixedInputs(64, 8, 8, r.max_blocks_per_seq, BS, r.kv.scratch_block, r.device)
    with pytest.raises(ValueError, match="cannot stage a step of 20 tokens"):
        roomy.stage(plan, 16)  # fewer padded tokens than its own


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_mixed_graph_step_equals_eager_step(tiny_llama):
    graphs = runner(tiny_llama, dtype="bfloat16", device="cuda", max_num_seqs=8, max_num_batched_tokens=40,
                    cuda_graph_batch_sizes=(1, 2), cuda_graph_token_sizes=(16, 32, 64, 128))
    eager = runner(tiny_llama, dtype="bfloat16", device="cuda", enforce_eager=True)
    assert graphs.mixed_graphs is not None and graphs.mixed_graphs.sizes == (16, 32, 64)  # capped past 40
    plan_g, _ = mixed_plan(graphs, seed=5)
    plan_e, _ = mixed_plan(eager, seed=5)
    assert graphs.uses_graph(plan_g) and graphs.mixed_graphs.size_for(plan_g) == 32
    got, seqs = graphs.logits(plan_g)
    want, eager_seqs = eager.logits(plan_e)
    assert [s.seq_id for s in seqs] == ["s0", "s1", "cached"]
    got_by, want_by = by_seq(got, seqs), by_seq(want, eager_seqs)
    for sid in want_by:
        torch.testing.assert_close(got_by[sid], want_by[sid], atol=3e-2, rtol=0)
    res = graphs.execute(plan_g)
    assert [res.token_ids[s.seq_id][0] for s in seqs] == got.argmax(-1).tolist()  # the in-graph argmax
    too_many = StepPlan(6, 0.0, prefills=[PrefillChunk(plan_g.prefills[0].seq, 0, 19)], decodes=plan_g.decodes,
                        num_prefill_tokens=19)
    assert graphs.mixed_graphs.size_for(too_many) == 32
    huge = make_seq("huge", list(range(3, 100)), 40)
    big = StepPlan(7, 0.0, prefills=[PrefillChunk(huge, 0, 97)], num_prefill_tokens=97)
    assert not graphs.uses_graph(big)  # past the largest captured count: eager
