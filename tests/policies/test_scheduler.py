"""Scheduler behaviour per batching policy, preemption and limits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.spec import parse_policy
from policies.types import Request, StepPlan, StepResult

StepHook = Callable[[Scheduler, StepPlan, set[str]], None]


def drive(sched: Scheduler, requests: list[Request], hook: StepHook | None = None,
          step_s: float = 0.01, max_steps: int = 100_000) -> None:
    """A minimal executor loop on a virtual clock (what sim/ does with SimPy)."""
    pending = sorted(requests, key=lambda r: r.arrival_s)
    now = 0.0
    for _ in range(max_steps):
        while pending and pending[0].arrival_s <= now:
            sched.add_request(pending.pop(0))
        if not sched.has_unfinished() and not pending:
            return
        before = {s.seq_id for s in sched.running}
        plan = sched.schedule(now)
        if hook:
            hook(sched, plan, before)
        if plan.is_empty:
            if plan.preempted:
                continue
            wake = sched.next_wake(now)
            nxt = [t for t in (wake, pending[0].arrival_s if pending else None) if t is not None]
            assert nxt, "scheduler stalled"
            now = max(now, min(nxt))
            continue
        sched.postprocess(plan, StepResult(step_s))
        now += step_s
    raise AssertionError("did not finish")


def reqs(n: int, prompt: int = 20, out: int = 5, gap: float = 0.0) -> list[Request]:
    return [Request(str(i), i * gap, prompt, out) for i in range(n)]


def admitted(sched: Scheduler, plan: StepPlan, before: set[str]) -> set[str]:
    return {c.seq.seq_id for c in plan.prefills if c.seq.seq_id not in before}


def test_static_never_admits_mid_batch() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=200, block_size=8), make_policy("static", max_num_seqs=4))
    batches = []

    def hook(s: Scheduler, plan: StepPlan, before: set[str]) -> None:
        new = admitted(s, plan, before)
        if new:
            assert not before, f"admitted {new} while {before} were running"
            batches.append(new)

    drive(sched, reqs(10, out=6, gap=0.004), hook)
    assert len(sched.finished) == 10
    assert all(len(b) <= 4 for b in batches) and len(batches) >= 3


def test_dynamic_waits_for_a_full_batch_or_the_timeout() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=200, block_size=8),
                      make_policy("dynamic", max_num_seqs=3, max_wait_s=0.5))
    starts: list[tuple[float, int]] = []

    def hook(s: Scheduler, plan: StepPlan, before: set[str]) -> None:
        new = admitted(s, plan, before)
        if new:
            starts.append((plan.now, len(new)))

    # three arrive by 0.2 s: a full batch at 0.2; a lone fourth waits its 0.5 s.
    drive(sched, [Request("a", 0.0, 10, 2), Request("b", 0.1, 10, 2), Request("c", 0.2, 10, 2),
                  Request("d", 1.0, 10, 2)], hook)
    assert starts[0] == (pytest.approx(0.2), 3)
    assert starts[1] == (pytest.approx(1.5), 1)


def test_continuous_admits_as_soon_as_a_sequence_finishes() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=200, block_size=8),
                      make_policy("continuous", max_num_seqs=2))
    requests = [Request("short", 0, 10, 2), Request("long", 0, 10, 8), Request("third", 0, 10, 2)]
    log: list[tuple[int, set[str]]] = []
    drive(sched, requests, lambda s, p, before: log.append((p.step_id, admitted(s, p, before))))
    finish_step = next(i for i, (_, new) in enumerate(log) if "third" in new)
    # 'short' finishes in step 2 (prefill + 1 decode); 'third' joins in step 3.
    assert log[finish_step][0] == 3


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_frees_and_later_restores_the_victim(mode: str) -> None:
    cfg = SchedulerConfig(num_gpu_blocks=12, block_size=4, preemption_mode=mode,
                          num_cpu_blocks=12 if mode == "swap" else 0)
    sched = Scheduler(cfg, make_policy("continuous", max_num_seqs=8))
    swaps = {"out": 0, "in": 0}

    def hook(s: Scheduler, plan: StepPlan, before: set[str]) -> None:
        swaps["out"] += len(plan.swap_out)
        swaps["in"] += len(plan.swap_in)
        for victim in plan.preempted:
            if mode == "recompute":
                assert victim.block_table == [] and victim.num_computed == 0
            else:
                assert len(victim.block_table) > 0  # now host block ids
        s.bm.check_invariants(q.block_table for q in s.running)

    drive(sched, reqs(4, prompt=10, out=12), hook)
    assert sched.num_preemptions > 0
    assert sorted(s.num_generated for s in sched.finished) == [12] * 4
    assert sched.bm.num_used == 0
    if mode == "swap":
        assert swaps["out"] > 0 and swaps["out"] == swaps["in"]


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(1, 64), max_seqs=st.integers(1, 6), chunked=st.booleans(),
       lens=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 10)), min_size=1, max_size=12),
       blocks=st.integers(13, 60), policy=st.sampled_from(["continuous", "prefix-aware", "static"]))
def test_limits_are_never_exceeded(budget: int, max_seqs: int, chunked: bool, lens: list[tuple[int, int]],
                                   blocks: int, policy: str) -> None:
    if not chunked:
        budget = max(budget, 50)
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=blocks, block_size=4),
                      make_policy(policy, max_num_seqs=max_seqs, token_budget=budget, chunked_prefill=chunked))
    requests = [Request(str(i), 0.003 * i, p, o, prompt_token_ids=tuple([i % 3] * p))
                for i, (p, o) in enumerate(lens)]

    def hook(s: Scheduler, plan: StepPlan, before: set[str]) -> None:
        assert plan.num_tokens <= budget
        assert len(s.running) <= max_seqs
        s.bm.check_invariants(q.block_table for q in s.running)

    drive(sched, requests, hook)
    assert sorted(s.num_generated for s in sched.finished) == sorted(o for _, o in lens)
    assert sched.bm.num_used == 0


def test_prefix_aware_admits_cached_prompts_first_but_not_forever() -> None:
    shared = tuple(range(32))
    cfg = SchedulerConfig(num_gpu_blocks=100, block_size=8)
    sched = Scheduler(cfg, make_policy("prefix-aware", max_num_seqs=1, max_wait_s=0.05))
    warm = Request("warm", 0.0, 33, 1, prompt_token_ids=shared + (1,))
    cold = Request("cold", 0.001, 33, 1, prompt_token_ids=tuple(range(100, 133)))
    hot = Request("hot", 0.002, 33, 1, prompt_token_ids=shared + (2,))
    order: list[str] = []
    drive(sched, [warm, cold, hot], lambda s, p, b: order.extend(sorted(admitted(s, p, b))), step_s=0.01)
    assert order == ["warm", "hot", "cold"]
    assert next(s for s in sched.finished if s.seq_id == "hot").num_cached_tokens == 32

    starving = Scheduler(cfg, make_policy("prefix-aware", max_num_seqs=1, max_wait_s=0.0))
    order.clear()
    drive(starving, [warm, cold, hot], lambda s, p, b: order.extend(sorted(admitted(s, p, b))), step_s=0.01)
    assert order == ["warm", "cold", "hot"]  # everyone has waited >= 0: plain arrival order


def test_bad_requests_and_configs_are_rejected() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=4, block_size=4), make_policy("continuous"))
    with pytest.raises(ValueError, match="needs 5 KV blocks .* pool has only 4"):
        sched.add_request(Request("big", 0, 15, 5))
    sched.add_request(Request("x", 0, 3, 2))
    with pytest.raises(ValueError, match="duplicate request id 'x'"):
        sched.add_request(Request("x", 0, 3, 2))
    static = Scheduler(SchedulerConfig(num_gpu_blocks=100, block_size=4),
                       make_policy("static", token_budget=16))
    with pytest.raises(ValueError, match="token budget is 16 and chunked prefill is off"):
        static.add_request(Request("long", 0, 20, 2))
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        SchedulerConfig(num_gpu_blocks=10, block_size=0)
    with pytest.raises(ValueError, match="needs num_cpu_blocks"):
        SchedulerConfig(num_gpu_blocks=10, preemption_mode="swap")
    with pytest.raises(ValueError, match="unknown victim policy 'oldest'"):
        SchedulerConfig(num_gpu_blocks=10, victim="oldest")
    with pytest.raises(ValueError, match="unknown eviction policy 'mru'"):
        SchedulerConfig(num_gpu_blocks=10, eviction="mru")


def test_policy_specs() -> None:
    p = parse_policy("continuous:max_num_seqs=7,token_budget=99,chunked_prefill=false")
    assert (p.max_num_seqs, p.token_budget, p.chunked_prefill) == (7, 99, False)
    assert parse_policy("dynamic:max_wait_s=0.25").max_wait_s == 0.25
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        parse_policy("fastest")
    with pytest.raises(ValueError, match="has no parameter 'batch'"):
        parse_policy("static:batch=3")
    with pytest.raises(ValueError, match="'x' is not a valid int"):
        parse_policy("continuous:max_num_seqs=x")
    with pytest.raises(ValueError, match="max_num_seqs must be >= 1"):
        parse_policy("continuous:max_num_seqs=0")
    with pytest.raises(ValueError, match="expected key=value"):
        parse_policy("continuous:max_num_seqs")
