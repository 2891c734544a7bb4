"""Scheduler.abort_request from every queue, and finish reasons."""

from __future__ import annotations

import pytest

from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.sequence import SeqStatus
from policies.types import Request, SamplingParams, StepPlan, StepResult

BLOCK = 4


def request(rid: str, prompt: int = 10, out: int = 6, stop: tuple[int, ...] = ()) -> Request:
    sampling = SamplingParams(ignore_eos=not stop, stop_token_ids=stop)
    return Request(rid, 0.0, prompt, out, prompt_token_ids=tuple(range(1, prompt + 1)), sampling=sampling)


def step(sched: Scheduler, now: float, token: int = 7) -> StepPlan:
    """One step where every sampling sequence gets ``token``."""
    plan = sched.schedule(now)
    samplers = [c.seq for c in plan.prefills if c.samples] + list(plan.decodes)
    sched.postprocess(plan, StepResult(0.01, {s.seq_id: [token] for s in samplers}))
    return plan


def run_to_end(sched: Scheduler, now: float = 1.0) -> None:
    for i in range(1000):
        if not sched.has_unfinished():
            return
        step(sched, now + i * 0.01)
    raise AssertionError("did not finish")


def live_tables(sched: Scheduler) -> list[list[int]]:
    return [s.block_table for s in sched.running]


def outputs(sched: Scheduler) -> dict[str, list[int]]:
    return {s.seq_id: list(s.output_ids) for s in sched.finished if s.finish_reason != "abort"}


def test_abort_running_frees_blocks_and_leaves_the_others_unchanged() -> None:
    def fresh() -> Scheduler:
        sched = Scheduler(SchedulerConfig(num_gpu_blocks=32, block_size=BLOCK, enable_prefix_caching=False),
                          make_policy("continuous"))
        for rid in "abc":
            sched.add_request(request(rid))
        return sched

    ref = fresh()
    run_to_end(ref, 0.0)
    sched = fresh()
    step(sched, 0.0)
    step(sched, 0.01)
    used = sched.bm.num_used
    b = next(s for s in sched.running if s.seq_id == "b")
    held = len(b.block_table)
    assert held > 0
    seq = sched.abort_request("b", now=0.5)
    assert seq is b and seq.status is SeqStatus.FINISHED and seq.finish_reason == "abort"
    assert seq.finish_s == 0.5 and seq.block_table == [] and seq in sched.finished
    assert b not in sched.running
    assert sched.bm.num_used == used - held
    sched.bm.check_invariants(live_tables(sched))
    run_to_end(sched)
    assert sched.bm.num_used == 0 and sched.bm.num_free_blocks == 32
    sched.bm.check_invariants()
    want = outputs(ref)
    del want["b"]
    assert outputs(sched) == want
    assert len(b.output_ids) == 2  # what it had generated before the abort, nothing after


def test_abort_waiting_request_never_runs() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=32, block_size=BLOCK), make_policy("static", max_num_seqs=1))
    sched.add_request(request("a"))
    sched.add_request(request("b"))
    step(sched, 0.0)
    assert [s.seq_id for s in sched.waiting] == ["b"]
    assert sched.abort_request("b").finish_reason == "abort"
    assert not sched.waiting
    run_to_end(sched)
    assert [s.seq_id for s in sched.finished] == ["b", "a"]
    assert sched.bm.num_used == 0
    sched.bm.check_invariants()


def test_abort_swapped_request_frees_host_blocks() -> None:
    # 6 device blocks of 4 tokens: two 10-token prompts growing to 15 tokens cannot both stay.
    cfg = SchedulerConfig(num_gpu_blocks=6, block_size=BLOCK, num_cpu_blocks=16, preemption_mode="swap",
                          enable_prefix_caching=False)
    sched = Scheduler(cfg, make_policy("continuous"))
    sched.add_request(request("a", out=6))
    sched.add_request(request("b", out=6))
    for i in range(20):
        step(sched, i * 0.01)
        if sched.swapped:
            break
    assert len(sched.swapped) == 1
    victim = sched.swapped[0]
    host_free = len(sched.bm.free_cpu_ids)
    held = len(victim.block_table)
    assert held > 0
    assert sched.abort_request(victim.seq_id) is victim
    assert len(sched.bm.free_cpu_ids) == host_free + held == 16
    assert not sched.swapped and victim.block_table == []
    run_to_end(sched)
    assert sched.bm.num_used == 0 and len(sched.bm.free_cpu_ids) == 16
    sched.bm.check_invariants()
    other = next(s for s in sched.finished if s is not victim)
    assert other.finish_reason == "length" and other.num_generated == 6


def test_abort_mid_chunked_prefill_keeps_the_cache_consistent() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=16, block_size=BLOCK),
                      make_policy("continuous", token_budget=8))
    sched.add_request(request("long", prompt=30))
    step(sched, 0.0)  # 8 of 30 prompt tokens: two full blocks committed to the prefix cache
    seq = sched.running[0]
    assert 0 < seq.num_computed < seq.prompt_len
    sched.abort_request("long")
    assert sched.bm.num_used == 0 and sched.bm.num_free_blocks == 16
    sched.bm.check_invariants()
    # A new request with the same prompt reuses the committed blocks and finishes normally.
    sched.add_request(request("again", prompt=30))
    run_to_end(sched)
    again = sched.finished[-1]
    assert again.seq_id == "again" and again.num_cached_tokens == 8 and again.finish_reason == "length"
    sched.bm.check_invariants()


def test_abort_finished_or_unknown_request() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=16, block_size=BLOCK), make_policy("continuous"))
    sched.add_request(request("a", out=1))
    step(sched, 0.0)
    assert sched.finished[0].finish_reason == "length"
    assert sched.abort_request("a") is None  # finished already: nothing to do
    assert sched.finished[0].finish_reason == "length"
    with pytest.raises(KeyError, match="no request 'zzz' was added"):
        sched.abort_request("zzz")


def test_finish_reasons_stop_and_length() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=16, block_size=BLOCK), make_policy("continuous"))
    sched.add_request(request("stops", stop=(7,)))
    sched.add_request(request("runs", stop=(9,)))
    run_to_end(sched, 0.0)  # every step emits token 7
    by_id = {s.seq_id: s for s in sched.finished}
    assert by_id["stops"].finish_reason == "stop" and by_id["stops"].output_ids == [7]
    assert by_id["runs"].finish_reason == "length" and by_id["runs"].output_ids == [7] * 6


def test_finish_reason_in_the_simulator_path() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=16, block_size=BLOCK), make_policy("continuous"))
    sched.add_request(Request("x", 0.0, 5, 3))
    for i in range(10):
        if not sched.has_unfinished():
            break
        sched.postprocess(sched.schedule(i * 0.01), StepResult(0.01))  # token ids unknown
    assert sched.finished[0].finish_reason == "length" and sched.finished[0].num_generated == 3
