"""Speculative decoding on the engine: lossless greedy and sampled verification, n-gram and draft-model
proposals, verification rows through the mixed-step staging, and the errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.mixed_inputs import MixedInputs
from engine.ngram_proposer import NgramConfig, NgramProposer
from engine.spec_decode import accept_greedy, accept_sampled
from engine.step_metadata import DecodeRows
from policies.sequence import Sequence
from policies.types import Request, StepPlan
from tests.engine.conftest import build_tiny_llama

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
PROMPTS = [list(range(3, 3 + n)) for n in (5, 17, 9, 30)] + [[7, 8, 9, 10] * 4 + [7]]
MAX_TOKENS = 14


def llm(path, **kw) -> LLM:
    kw.setdefault("num_gpu_blocks", 128)
    return LLM(str(path), dtype="float32", device="cpu", block_size=4, **kw)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    return [o["token_ids"] for o in llm(tiny_llama).generate(PROMPTS, max_tokens=MAX_TOKENS)]


@pytest.fixture(scope="module")
def other_draft(tmp_path_factory):
    """A draft model with other random weights (it rarely agrees with the target)."""
    return build_tiny_llama(tmp_path_factory.mktemp("draft"), seed=1, hidden=32)


@pytest.mark.parametrize("method", ["ngram", "draft-same", "draft-other"])
@pytest.mark.parametrize("kw", [
    {},                                              # all prompts batched
    {"token_budget": 7},                             # chunked prefill beside verification rows
    {"num_gpu_blocks": 16, "token_budget": 24},      # preemption by recompute
    {"num_gpu_blocks": 16, "token_budget": 24, "preemption_mode": "swap", "num_cpu_blocks": 64},
])
def test_greedy_outputs_are_unchanged(tiny_llama, other_draft, reference, method, kw):
    spec = {"ngram": {"speculative_method": "ngram"},
            "draft-same": {"speculative_method": "draft", "draft_model": str(tiny_llama)},
            "draft-other": {"speculative_method": "draft", "draft_model": str(other_draft)}}[method]
    engine = llm(tiny_llama, speculation="fixed:num_draft_tokens=3", **spec, **kw)
    out = engine.generate(PROMPTS, max_tokens=MAX_TOKENS)
    assert [o["token_ids"] for o in out] == reference
    recs = [o["record"] for o in out]
    drafted, accepted = sum(r["draft_tokens"] for r in recs), sum(r["accepted_draft_tokens"] for r in recs)
    assert drafted > 0
    if method == "draft-same":  # the draft is the target: every draft is its greedy choice
        assert accepted == drafted
        assert sum(r["draft_rejections"] for r in recs) == 0
    if "num_gpu_blocks" in kw and kw["num_gpu_blocks"] == 16:
        assert engine.last_scheduler.num_preemptions > 0


def test_accepted_drafts_cut_the_steps(tiny_llama, reference):
    plain = llm(tiny_llama)
    plain.generate(PROMPTS, max_tokens=MAX_TOKENS)
    spec = llm(tiny_llama, speculation="fixed:num_draft_tokens=4", speculative_method="draft",
               draft_model=str(tiny_llama))
    out = spec.generate(PROMPTS, max_tokens=MAX_TOKENS)
    assert [o["token_ids"] for o in out] == reference
    assert len(spec.last_scheduler.step_log) < len(plain.last_scheduler.step_log) / 2


def test_sampled_speculation_is_seeded_and_top_k_one_is_greedy(tiny_llama, reference):
    kw = {"speculation": "fixed:num_draft_tokens=3", "speculative_method": "ngram"}
    engine = llm(tiny_llama, **kw)
    out = engine.generate(PROMPTS, SamplingParams(temperature=0.9, top_k=1), max_tokens=MAX_TOKENS)
    assert [o["token_ids"] for o in out] == reference
    seeded = [SamplingParams(temperature=1.0, top_p=0.9, seed=s) for s in range(len(PROMPTS))]
    a = engine.generate(PROMPTS, seeded, max_tokens=MAX_TOKENS)
    b = llm(tiny_llama, seed=7, **kw).generate(PROMPTS[::-1], seeded[::-1], max_tokens=MAX_TOKENS)
    assert [o["token_ids"] for o in a] == [o["token_ids"] for o in b[::-1]]
    assert [o["token_ids"] for o in a] != reference
    assert all(len(o["token_ids"]) == MAX_TOKENS for o in a)


def test_accept_greedy_counts_the_matching_prefix():
    targets = np.array([[5, 6, 7, 8], [5, 9, 7, 8], [1, 2, 3, 4], [4, 0, 0, 0]])
    drafts = np.array([[5, 6, 7], [5, 6, 7], [9, 2, 3], [4, -1, -1]])
    lens = np.array([3, 3, 3, 1])
    assert accept_greedy(targets, drafts, lens).tolist() == [3, 1, 0, 1]
    assert accept_greedy(targets, drafts, np.array([2, 3, 3, 0])).tolist() == [2, 1, 0, 0]


def test_rejection_sampling_keeps_the_target_distribution():
    """Each emitted token is distributed as its row's target distribution, whatever the drafts."""
    gen = torch.Generator().manual_seed(0)
    vocab, n = 6, 60_000
    p = torch.softmax(torch.randn(3, vocab, generator=gen), dim=-1)  # rows 0..2 of every decode
    probs = p.repeat(n, 1)
    drafts = torch.tensor([int(p[0].argmax()), 3])  # a likely first draft, an arbitrary second
    nxt = torch.tensor([drafts[0], drafts[1], -1]).repeat(n)
    uniforms = torch.rand(3 * n, generator=gen)
    noise = torch.empty(3 * n, vocab).exponential_(generator=gen)
    index = torch.arange(3 * n).view(n, 3)
    accepted, extra = accept_sampled(probs, uniforms, noise, nxt, index, torch.full((n,), 2))
    first = torch.where(accepted > 0, drafts[0], extra)
    freq = torch.bincount(first, minlength=vocab).float() / n
    torch.testing.assert_close(freq, p[0], atol=0.01, rtol=0)
    second = torch.where(accepted > 1, drafts[1], extra)[accepted >= 1]  # given the first was accepted
    freq2 = torch.bincount(second, minlength=vocab).float() / len(second)
    torch.testing.assert_close(freq2, p[1], atol=0.015, rtol=0)
    assert accepted.float().mean().item() == pytest.approx(float(p[0, drafts[0]] * (1 + p[1, 3])), abs=0.01)


def seq_of(tokens: list[int], outputs: list[int] = ()) -> Sequence:
    seq = Sequence(Request("s", 0.0, len(tokens), 50, prompt_token_ids=tuple(tokens)))
    seq.output_ids.extend(outputs)
    seq.total_len += len(outputs)
    return seq


def test_ngram_drafts_continue_the_latest_match():
    prop = NgramProposer(NgramConfig(1, 3))
    a = seq_of([1, 2, 3, 9, 1, 2, 3, 8, 5, 1, 2, 3])  # suffix 1 2 3: latest earlier match is followed by 8 5
    b = seq_of([4, 4, 4])  # period 1: wraps around
    c = seq_of([10, 11, 12])  # nothing matches: the last token repeated
    plan = StepPlan(1, 0.0, decodes=[a, b, c], draft_lens=[3, 2, 2], num_draft_tokens=7)
    assert prop.propose(plan) == [[8, 5, 1], [4, 4], [12, 12]]
    a.output_ids.extend([8, 5])  # the sequence grew: the index takes in only the new tokens
    a.total_len += 2
    plan = StepPlan(2, 0.0, decodes=[a], draft_lens=[4], num_draft_tokens=4)
    assert prop.propose(plan) == [[1, 2, 3, 8]]  # suffix 3 8 5 occurred at positions 6-8, then came 1 2 3 8
    with pytest.raises(ValueError, match="min_n <= max_n"):
        NgramConfig(3, 2)


def test_ngram_skips_decodes_that_draft_nothing_and_catches_up():
    prop = NgramProposer(NgramConfig(1, 3))
    big = (1 << 21) - 1  # the largest id a packed key holds
    a, b = seq_of([big, 7, 8, big, 7]), seq_of([5, 6, 5])
    assert prop.propose(StepPlan(1, 0.0, decodes=[a, b], draft_lens=[0, 2], num_draft_tokens=2)) == [[], [6, 5]]
    assert len(prop) == 1  # a drafted nothing: no history built for it
    a.output_ids.extend([9, big, 7])  # a decoded three tokens meanwhile
    a.total_len += 3
    plan = StepPlan(2, 0.0, decodes=[a], draft_lens=[2], num_draft_tokens=2)
    assert prop.propose(plan) == [[9, big]]  # suffix (big, 7) last seen before 9, big
    bad = seq_of([1 << 21, 3])
    with pytest.raises(ValueError, match=r"token ids outside \[0, 2\^21\)"):
        prop.propose(StepPlan(3, 0.0, decodes=[bad], draft_lens=[1], num_draft_tokens=1))


@pytest.mark.parametrize("method", [None, "ngram"])  # "ngram": a's 3 rows attend as one group of rows
def test_verification_rows_stage_like_the_eager_step(tiny_llama, method):
    """A mixed step whose decode verifies drafts: the captured-step staging gives the eager step's logits."""
    pytest.importorskip("kernels.attention_prefill")
    from engine.model_runner import ModelRunner
    from tests.engine.test_mixed_graphs import mixed_plan

    r = ModelRunner(EngineConfig(str(tiny_llama), dtype="bfloat16", attention_backend="triton", device=DEV,
                                 num_gpu_blocks=64, block_size=4, enforce_eager=True, speculative_method=method))
    assert r.max_group == (4 if method else 1)
    plan, _ = mixed_plan(r, seed=9)
    a, b = plan.decodes
    for s, spare in ((a, 40), (b, 50)):  # blocks for two drafts each, from ids no one holds
        need = -(-(s.num_computed + 3) // 4) - len(s.block_table)
        s.block_table.extend(range(spare, spare + need))
    plan.draft_lens, plan.num_draft_tokens = [2, 1], 3
    rows = DecodeRows.of(plan.decodes, [[11, 12], [13]])
    eager_logits, _, eager_seqs, first = r.run_rows(plan, rows)
    assert first == 1 and eager_seqs[1:] == [a, a, a, b, b]  # eager: the sampling chunk, then the decode rows
    inputs = MixedInputs(64, 8, 8, r.max_blocks_per_seq, 4, r.kv.scratch_block, r.device, r.max_group)
    seqs, grouped = inputs.stage(plan, 32, rows)
    assert seqs == [a, a, a, b, b, eager_seqs[0]] and grouped == bool(method)
    meta = inputs.meta(32, 8)
    if method:
        assert meta.decode_group_lens[:6].tolist() == [3, 0, 0, 2, 0, 1]
        assert inputs.meta(32, 8, grouped=False).decode_group_lens is None
        # the same step without drafts has groups of one only: staged as ungrouped
        plain_rows = DecodeRows.of(plan.decodes)
        plain_plan = dataclasses.replace(plan, draft_lens=[], num_draft_tokens=0)
        assert inputs.stage(plain_plan, 32, plain_rows)[1] is False
        assert r.builder.build(plain_plan, rows=plain_rows).decode_group_lens is None  # eager, likewise
        assert r.builder.build(plan, rows=rows).decode_group_lens[:2].tolist() == [3, 0]
        inputs.stage(plan, 32, rows)
    want = [a.num_computed + j for j in range(3)] + [b.num_computed + j for j in range(2)]
    assert meta.positions[:5].tolist() == want
    assert meta.decode_seq_lens[:5].tolist() == [p + 1 for p in meta.positions[:5].tolist()]
    staged = r.model.forward(meta, r.attention)[:6]
    torch.testing.assert_close(staged[:5].float(), eager_logits[1:].float(), atol=3e-2, rtol=0)
    torch.testing.assert_close(staged[5].float(), eager_logits[0].float(), atol=3e-2, rtol=0)


def test_grouped_verification_rows_give_the_same_tokens(tiny_llama):
    """The triton backend attends a decode's verification rows as one group (pieces of at most
    ``verify_group_rows``): token for token the outputs of attending each row on its own."""
    pytest.importorskip("kernels.attention_decode")
    kw = {"dtype": "bfloat16", "device": DEV, "block_size": 4, "num_gpu_blocks": 96, "attention_backend": "triton",
          "enforce_eager": True, "speculation": "fixed:num_draft_tokens=3", "speculative_method": "ngram"}
    prompts = [PROMPTS[1], PROMPTS[4]]
    outs, groups = [], set()
    for rows in (1, 2, None):  # None: the tiny model's 4 query heads per kv head fill the tile with 4 rows
        engine = LLM(str(tiny_llama), verify_group_rows=rows, **kw)
        attention = engine.runner.attention
        decode = attention._decode

        def spy(*args, decode=decode, **kwargs):
            if kwargs.get("group_lens") is not None:
                groups.add((kwargs["max_group"], max(kwargs["group_lens"].tolist())))
            return decode(*args, **kwargs)

        attention._decode = spy
        outs.append([o["token_ids"] for o in engine.generate(prompts, max_tokens=6)])
    assert outs[1] == outs[0] and outs[2] == outs[0]
    # rows=1 passes no groups; a decode verifying 3 drafts is pieces of 2 + 2 rows, then one of 4
    assert {g for g in groups if g[1] > 1} == {(2, 2), (4, 4)}


def test_default_group_rows_fill_the_tile():
    from engine.attention import verify_group_rows

    assert verify_group_rows(None, 32, 8) == 4  # Llama-3.2-1B: 4 query heads per kv head
    assert verify_group_rows(None, 24, 8) == 5  # 3B: 3 per kv head, 15 of 16 tile rows
    assert verify_group_rows(None, 32, 1) == 1  # 32 heads fill a tile alone
    assert verify_group_rows(6, 32, 8) == 6


def test_row_groups_cut_at_max_group():
    a, b = (Sequence(Request(f"r{i}", 0.0, 4, 4, prompt_token_ids=(1, 2, 3, 4))) for i in range(2))
    rows = DecodeRows.of([a, b], [[5, 6, 7, 8, 9], []])
    assert rows.group_lens(8) == [6, 0, 0, 0, 0, 0, 1]
    assert rows.group_lens(4) == [4, 0, 0, 0, 2, 0, 1]
    assert rows.group_lens(1) == [1] * 7
    assert rows[3:].group_lens(8) == [3, 0, 0, 1]  # a chunk of a group leads its own piece


def test_bad_speculative_settings_name_the_problem(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="speculative_method: must be one of"):
        EngineConfig(str(tiny_llama), speculative_method="medusa")
    with pytest.raises(ValueError, match="draft_model: must be given exactly when speculative_method is 'draft'"):
        EngineConfig(str(tiny_llama), speculative_method="draft")
    with pytest.raises(ValueError, match="draft_model: must be given exactly when"):
        EngineConfig(str(tiny_llama), draft_model=str(tiny_llama))
    with pytest.raises(ValueError, match="decode_lookahead: cannot be combined with speculative decoding"):
        EngineConfig(str(tiny_llama), speculative_method="ngram", decode_lookahead=True)
    with pytest.raises(ValueError, match=r"verify_group_rows: must be None or in \[1, 32\], got 0"):
        EngineConfig(str(tiny_llama), verify_group_rows=0)
    with pytest.raises(ValueError, match="ngram_min: must be >= 1 and <= ngram_max"):
        EngineConfig(str(tiny_llama), ngram_min=4, ngram_max=2)
    with pytest.raises(ValueError, match="a speculation policy needs speculative_method"):
        llm(tiny_llama, speculation="fixed")
    with pytest.raises(ValueError, match="unknown speculation policy 'always'"):
        llm(tiny_llama, speculation="always", speculative_method="ngram")
    other_vocab = build_tiny_llama(tmp_path / "d", seed=2, hidden=32, vocab=301)
    with pytest.raises(ValueError, match="has a vocabulary of 301 tokens; the target's has 300"):
        llm(tiny_llama, speculation="fixed", speculative_method="draft", draft_model=str(other_vocab))


def greedy_gaps(runner, prompt: list[int], out: list[int]) -> list[float]:
    """Per token of ``out``, how far below the best logit its own lies on ``runner``, given the prompt and
    the tokens before it (one teacher-forced prefill; 0 where it is the greedy choice)."""
    from tests.engine.test_model import chunked_logits, make_seq

    ids = list(prompt) + list(out[:-1])
    seq = make_seq("teacher-forced", ids, first_block=0)
    rows = chunked_logits(runner, seq, [len(ids)])[len(prompt) - 1 :]
    chosen = rows.gather(1, torch.tensor(out, device=rows.device)[:, None])[:, 0]
    return (rows.max(dim=1).values - chosen).tolist()


def test_greedy_gaps_measure_distance_from_the_greedy_choice(tiny_llama):
    """The helper above: an engine's own greedy output has gaps of 0; a wrong token has a positive gap."""
    engine = llm(tiny_llama)
    out = engine.generate([PROMPTS[1]], max_tokens=6)[0]["token_ids"]
    assert greedy_gaps(engine.runner, PROMPTS[1], out) == pytest.approx([0.0] * 6, abs=1e-5)
    wrong = out[:5] + [(out[5] + 1) % 300]
    assert greedy_gaps(engine.runner, PROMPTS[1], wrong)[5] > 0


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("method", ["ngram", "draft"])
@pytest.mark.parametrize("sizes", [None, (1, 2, 4)])
def test_graphed_speculation_on_cuda(tiny_llama, method, sizes):
    """Verification rows replay the captured decode and mixed graphs (with decode graphs of at most 4 rows,
    the 6 prompts' 24 verification rows replay the largest on chunks); bf16 outputs match the plain engine's."""
    kw = {"dtype": "bfloat16", "device": "cuda", "block_size": 16, "num_gpu_blocks": 256}
    if sizes is not None:
        kw["cuda_graph_batch_sizes"] = sizes
    plain = LLM(str(tiny_llama), **kw)
    extra = {"draft_model": str(tiny_llama)} if method == "draft" else {}
    engine = LLM(str(tiny_llama), speculation="fixed:num_draft_tokens=3", speculative_method=method, **extra, **kw)
    runner = engine.runner
    assert runner.graphs is not None and runner.mixed_graphs is not None
    graphed: list[bool] = []
    execute = runner.speculative.execute

    def spy(plan):
        graphed.append(runner.uses_graph(plan))
        return execute(plan)

    runner.speculative.execute = spy
    out = engine.generate(PROMPTS, max_tokens=32)
    assert graphed and all(graphed)
    # A bf16 row's logits depend a little on how many rows its GEMMs hold (1-5 plain, up to 20 verifying) and
    # on the attention kernel, so a near-tie may flip and the rest of the output differ: every emitted token
    # must be the plain engine's greedy choice on the emitted prefix, up to bf16 noise.
    gaps = [g for p, o in zip(PROMPTS, out, strict=True) for g in greedy_gaps(plain.runner, p, o["token_ids"])]
    assert len(gaps) == 32 * len(PROMPTS) and max(gaps) <= 0.02, sorted(gaps)[-5:]  # bf16 noise: ~0.004
    recs = [o["record"] for o in out]
    if method == "draft":  # the draft is the target: it proposes the target's own greedy choices
        assert sum(r["accepted_draft_tokens"] for r in recs) >= 0.9 * sum(r["draft_tokens"] for r in recs)
