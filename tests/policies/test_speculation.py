"""Speculation policies and the scheduler's handling of draft tokens (allocation, caps, booking)."""

from __future__ import annotations

import random

import pytest

from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.sequence import SeqStatus
from policies.spec import parse_speculation
from policies.speculation import (
    AdaptiveSpeculation,
    BatchAwareSpeculation,
    SpeculationPolicy,
    expected_tokens,
    group_reads,
    make_speculation,
)
from policies.types import Request, SamplingParams, StepPlan, StepResult


def sched_with(spec: SpeculationPolicy | None, blocks: int = 200, bs: int = 4, **policy) -> Scheduler:
    return Scheduler(SchedulerConfig(num_gpu_blocks=blocks, block_size=bs), make_policy("continuous", **policy), spec)


def used_blocks_match(sched: Scheduler) -> bool:
    """The block manager's count equals the blocks the live tables hold (no prefix sharing here)."""
    held = sum(len(s.block_table) for s in [*sched.running, *sched.waiting])
    return sched.bm.num_used == held


def run(sched: Scheduler, requests: list[Request], accept: float, seed: int = 0) -> list[StepPlan]:
    """Drive to completion, accepting each draft with probability ``accept`` (the simulator's path)."""
    rng = random.Random(seed)
    for r in requests:
        sched.add_request(r)
    plans, now = [], 0.0
    while sched.has_unfinished():
        plan = sched.schedule(now)
        assert not plan.is_empty
        accepted = None
        if plan.num_draft_tokens:
            accepted = []
            for k in plan.draft_lens:
                a = 0
                while a < k and rng.random() < accept:
                    a += 1
                accepted.append(a)
        sched.postprocess(plan, StepResult(0.01, accepted=accepted))
        assert used_blocks_match(sched)
        plans.append(plan)
        now += 0.01
    return plans


def test_expected_tokens_is_the_geometric_sum():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_policies_choose_draft_lengths():
    sched = sched_with(None)
    seqs = [sched.add_request(Request(str(i), 0.0, 8, 20)) for i in range(10)]
    assert SpeculationPolicy(3).draft_lens(seqs, sched) == [3] * 10
    assert BatchAwareSpeculation(3, max_batch=10).draft_lens(seqs, sched) == [3] * 10
    assert BatchAwareSpeculation(3, max_batch=9).draft_lens(seqs, sched) == [0] * 10
    adaptive = AdaptiveSpeculation(num_draft_tokens=6, row_cost=0.05)
    good, bad = seqs[0], seqs[1]
    good.num_accepted_tokens, good.num_rejections = 90, 10
    bad.num_accepted_tokens, bad.num_rejections = 1, 40
    lens = adaptive.draft_lens([good, bad], sched)
    assert lens[0] > lens[1]
    assert lens[1] == 0  # accepting ~2.4%: a draft row is not worth 5% of a step
    assert lens[0] == max(range(7), key=lambda k: expected_tokens(adaptive.alpha(good), k) / (1 + 0.05 * k))


def test_bad_speculation_specs_name_the_problem():
    with pytest.raises(ValueError, match="unknown speculation policy 'often'"):
        parse_speculation("often")
    with pytest.raises(ValueError, match="speculation policy 'fixed' has no parameter 'k'"):
        parse_speculation("fixed:k=3")
    with pytest.raises(ValueError, match="num_draft_tokens must be >= 1"):
        make_speculation("fixed", num_draft_tokens=0)
    with pytest.raises(ValueError, match="row_cost must be >= 0"):
        parse_speculation("adaptive:row_cost=-1")
    assert parse_speculation("none") is None
    assert parse_speculation("batch-aware:max_batch=2,num_draft_tokens=5") == BatchAwareSpeculation(5, 2)


def test_drafts_are_capped_by_output_length_and_budget():
    sched = sched_with(SpeculationPolicy(4), token_budget=5)
    a = sched.add_request(Request("a", 0.0, 3, 3))   # 3 tokens to generate: at most 1 draft after the first
    b = sched.add_request(Request("b", 0.0, 2, 50))
    sched.postprocess(plan := sched.schedule(0.0), StepResult(0.01))  # both prefills
    assert not plan.draft_lens and a.num_generated == b.num_generated == 1
    plan = sched.schedule(0.01)
    assert plan.decodes == [a, b]
    assert plan.draft_lens == [1, 2]  # a: 2 tokens left -> 1 draft; b: the budget's 5 - 2 decodes - 1
    assert plan.num_draft_tokens == 3 and plan.num_tokens == 5
    # decode rows' contexts, each with its own token: a's rows read 4 and 5 keys, b's 3, 4 and 5
    assert plan.decode_ctx_tokens == (4 + 5) + (3 + 4 + 5)
    assert plan.draft_ctx_tokens == 5 + (4 + 5)  # the draft rows' part of it
    assert all(len(s.block_table) * 4 >= s.num_computed + 1 + k for s, k in zip(plan.decodes, plan.draft_lens,
                                                                             strict=True))


def test_speculation_never_preempts():
    # 4 blocks of 4 tokens. After the prefills a (7 tokens) holds 2 blocks, b (4 tokens) 1; b's decode at
    # position 4 takes the last free block, so a's drafts (positions 8..11, a third block) get none, while
    # b's two drafts (positions 5, 6) fit in the block b already holds.
    sched = sched_with(SpeculationPolicy(4), blocks=4, bs=4)
    a = sched.add_request(Request("a", 0.0, 7, 9))
    b = sched.add_request(Request("b", 0.0, 4, 4))
    sched.postprocess(sched.schedule(0.0), StepResult(0.01))
    plan = sched.schedule(0.01)
    assert not plan.preempted and plan.decodes == [a, b]
    assert plan.draft_lens == [0, 2]
    assert sched.num_preemptions == 0 and sched.bm.num_free_blocks == 0


def test_booking_with_token_ids_and_stop_tokens_inside_drafts():
    sched = sched_with(SpeculationPolicy(3))
    stop = SamplingParams(ignore_eos=False, stop_token_ids=(99,))
    a = sched.add_request(Request("a", 0.0, 4, 20, prompt_token_ids=(5, 6, 7, 8)))
    b = sched.add_request(Request("b", 0.0, 4, 20, prompt_token_ids=(5, 6, 7, 9), sampling=stop))
    sched.postprocess(sched.schedule(0.0), StepResult(0.01, {"a": [1], "b": [2]}))
    plan = sched.schedule(0.01)
    assert plan.draft_lens == [3, 3]
    computed = a.num_computed
    # a: 2 of 3 drafts accepted (+1 token from the target); b: a stop token among the accepted drafts
    done = sched.postprocess(plan, StepResult(0.01, {"a": [10, 11, 12], "b": [20, 99, 21, 22]}))
    assert a.output_ids == [1, 10, 11, 12] and a.num_computed == computed + 3
    assert (a.num_draft_tokens, a.num_accepted_tokens, a.num_rejections) == (3, 2, 1)
    assert done == [b] and b.output_ids == [2, 20, 99] and b.status is SeqStatus.FINISHED
    assert b.token_times == [0.01, 0.02, 0.02]
    assert (b.num_draft_tokens, b.num_accepted_tokens, b.num_rejections) == (3, 3, 0)


def test_results_that_do_not_fit_the_plan_are_errors():
    sched = sched_with(SpeculationPolicy(2))
    sched.add_request(Request("a", 0.0, 4, 20))
    sched.postprocess(sched.schedule(0.0), StepResult(0.01))
    plan = sched.schedule(0.01)
    assert plan.draft_lens == [2]
    with pytest.raises(ValueError, match="has neither token ids nor one accepted count per decode"):
        sched.postprocess(plan, StepResult(0.01))
    with pytest.raises(ValueError, match="verified 2 draft tokens but the result emits 4 tokens"):
        sched.postprocess(plan, StepResult(0.01, {"a": [1, 2, 3, 4]}))


@pytest.mark.parametrize("accept", [0.0, 0.5, 1.0])
def test_every_request_gets_exactly_its_tokens(accept):
    sched = sched_with(AdaptiveSpeculation(num_draft_tokens=5, row_cost=0.0), blocks=60, token_budget=64)
    rng = random.Random(1)
    requests = [Request(str(i), 0.0, rng.randint(1, 30), rng.randint(1, 40)) for i in range(12)]
    plans = run(sched, requests, accept)
    for seq in sched.finished:
        assert seq.num_generated == seq.output_len == len(seq.token_times)
        assert seq.num_accepted_tokens <= seq.num_draft_tokens
    steps = len(plans)
    base = len(run(sched_with(None, blocks=60, token_budget=64), requests, accept))
    if accept == 1.0:
        assert steps < base  # every draft accepted: several tokens per step
        assert sum(s.num_rejections for s in sched.finished) == 0
    if accept == 0.0:
        assert sum(s.num_accepted_tokens for s in sched.finished) == 0


def test_swapped_in_decodes_keep_draft_lens_parallel():
    cfg = SchedulerConfig(num_gpu_blocks=12, block_size=4, num_cpu_blocks=40, preemption_mode="swap")
    sched = Scheduler(cfg, make_policy("continuous", token_budget=64), SpeculationPolicy(2))
    rng = random.Random(3)
    requests = [Request(str(i), 0.0, rng.randint(4, 12), rng.randint(5, 20)) for i in range(6)]
    for r in requests:
        sched.add_request(r)
    now = 0.0
    while sched.has_unfinished():
        plan = sched.schedule(now)
        if plan.draft_lens:
            assert len(plan.draft_lens) == len(plan.decodes)
        accepted = [k for k in plan.draft_lens] if plan.num_draft_tokens else None
        sched.postprocess(plan, StepResult(0.01, accepted=accepted))
        now += 0.01
    assert sched.num_preemptions > 0
    assert all(s.num_generated == s.output_len for s in sched.finished)


def test_group_reads_count_one_read_per_piece_after_the_first():
    # one row at a time: draft row j reads ctx + j keys
    assert [group_reads(100, k, 1) for k in range(5)] == [k * 100 + k * (k + 1) // 2 for k in range(5)]
    # pieces of 4 rows: rows 0-3 read with the decode, rows 4-7 add one read of 107 keys, row 8 one of 108
    assert [group_reads(100, k, 4) for k in (0, 3, 4, 7, 8)] == [0, 0, 104, 107, 107 + 108]
    assert group_reads(100, 6, 32) == 0


def test_draft_context_follows_the_executors_row_groups():
    """``SchedulerConfig.verify_group_rows`` sets what ``draft_ctx_tokens`` counts (the plan is otherwise the
    same): with pieces of 2 rows, b's 3 drafts (rows 0..3 at 3..6 keys) add one read of 6 keys."""
    plans = []
    for rows in (1, 2):
        sched = Scheduler(SchedulerConfig(num_gpu_blocks=200, block_size=4, verify_group_rows=rows),
                          make_policy("continuous"), SpeculationPolicy(3))
        sched.add_request(Request("b", 0.0, 2, 50))
        sched.postprocess(sched.schedule(0.0), StepResult(0.01))
        plans.append(sched.schedule(0.01))
    one, two = plans
    assert one.draft_lens == two.draft_lens == [3]
    assert one.draft_ctx_tokens == 4 + 5 + 6 and two.draft_ctx_tokens == 6
    assert one.decode_ctx_tokens - one.draft_ctx_tokens == two.decode_ctx_tokens - two.draft_ctx_tokens == 3
    with pytest.raises(ValueError, match="verify_group_rows must be >= 1 or None, got 0"):
        SchedulerConfig(num_gpu_blocks=4, verify_group_rows=0)
