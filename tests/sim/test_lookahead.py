"""The decode lookahead in the simulator: which steps it serves, and what the others cost.

``tests/engine/test_lookahead.py`` checks the tracker against the engine's own lookahead, step by step;
here its rules are checked by hand and through the simulator's clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.types import Request, SamplingParams, StepResult
from sim.cost_model import CalibratedCostModel, write_profile
from sim.lookahead import LookaheadTracker
from sim.profile import ProfileError
from sim.simulator import simulate
from tests.sim.test_cost_model import make_plan, tiny_profile
from tests.sim.test_decode_surface import STEPS, surface_profile

EXTRA = 1e-3  # what a cold step costs beyond a served one in the profiles below
COLD = STEPS | {"time_s": [[t + EXTRA for t in row] for row in STEPS["time_s"]]}


def served_pattern(prompt: int, output: int, block_size: int = 16, sampling: SamplingParams | None = None,
                   ) -> list[bool | None]:
    """Per step of one request run alone: None for its prefill, else whether the lookahead serves it."""
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=64, block_size=block_size), make_policy("continuous"))
    sched.add_request(Request("a", 0.0, prompt, output, sampling=sampling or SamplingParams()))
    tracker, pattern = LookaheadTracker(block_size, 8), []
    while sched.has_unfinished():
        plan = sched.schedule(0.0)
        served = tracker.served(plan)
        pattern.append(None if plan.prefills else served)
        sched.postprocess(plan, StepResult(1e-3))
    return pattern


def test_served_steps_by_hand() -> None:
    # prompt 12, block 16: decodes write positions 12..20. The step after the prefill is cold; the step
    # writing 15 cannot look ahead (16 opens a new block), so 16 is cold; the rest are served.
    assert served_pattern(12, 10) == [None, False, True, True, True, False, True, True, True, True]
    # prompt 16: position 16 opens block 1 when it is planned; 17..24 stay in it
    assert served_pattern(16, 10) == [None, False, *[True] * 8]
    # sampled requests are never looked ahead
    assert served_pattern(12, 6, sampling=SamplingParams(temperature=0.7)) == [None, *[False] * 5]


def test_a_finished_sequence_makes_the_next_step_cold() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=64, block_size=16), make_policy("continuous"))
    for i, out in enumerate((3, 8)):  # both prefilled in one step; "0" takes its last token at step 3
        sched.add_request(Request(str(i), 0.0, 4, out))
    tracker, pattern = LookaheadTracker(16, 8), []
    while sched.has_unfinished():
        plan = sched.schedule(0.0)
        pattern.append((len(plan.decodes), tracker.served(plan)))
        sched.postprocess(plan, StepResult(1e-3))
    assert pattern == [(0, False), (2, False), (2, True), (1, False), *[(1, True)] * 4]


def test_steps_past_the_largest_graph_and_other_steps_are_never_served() -> None:
    tracker = LookaheadTracker(16, 2)
    assert not tracker.served(make_plan([(5, 0)], [100]))
    with pytest.raises(ValueError, match="block_size >= 1 and max_rows >= 1"):
        LookaheadTracker(16, 0)


def test_cold_steps_cost_the_cold_table_in_the_simulator() -> None:
    served_only = CalibratedCostModel(surface_profile())
    both = CalibratedCostModel(surface_profile() | {"decode_steps_cold": COLD})
    assert served_only.lookahead_rows is None and both.lookahead_rows == 16
    plan = make_plan([], [300, 500])
    assert both.cold_step_time(plan) == pytest.approx(served_only.step_time(plan) + EXTRA, rel=1e-12)
    assert both.step_time(plan) == served_only.step_time(plan)
    mixed = make_plan([(5, 0)], [100])
    assert both.cold_step_time(mixed) == both.step_time(mixed)  # only decode-only steps have a cold price
    cfg, policy = SchedulerConfig(num_gpu_blocks=64, block_size=16), make_policy("continuous")
    for prompt, cold_steps in ((12, 2), (16, 1)):
        req = [Request("a", 0.0, prompt, 10)]
        base = simulate(req, policy, cfg, served_only).requests.iloc[0]
        run = simulate(req, policy, cfg, both)
        got = run.requests.iloc[0]
        # 9 decode steps, the cold ones not served; the summary counts as the engine's replay does
        assert run.summary["lookahead_served_steps"] == 9 - cold_steps
        assert got["ttft_s"] == pytest.approx(base["ttft_s"], rel=1e-12)
        assert got["e2e_s"] - base["e2e_s"] == pytest.approx(cold_steps * EXTRA, rel=1e-9)
    assert "lookahead_served_steps" not in simulate(req, policy, cfg, served_only).summary


def _bad(tmp_path: Path, profile: dict[str, Any]) -> str:
    with pytest.raises(ProfileError) as err:
        write_profile(profile, tmp_path / "p.json")
    return str(err.value)


def test_bad_cold_steps_name_the_field(tmp_path: Path) -> None:
    assert "'decode_steps_cold' needs 'decode_steps'" in _bad(tmp_path, tiny_profile() | {"decode_steps_cold": COLD})
    assert "'decode_steps_cold.batch' must be strictly increasing positive integers" in _bad(
        tmp_path, surface_profile() | {"decode_steps_cold": COLD | {"batch": [4, 1, 8]}})


def test_an_admission_drops_the_looked_ahead_step_and_pays_its_hidden_rest() -> None:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=64, block_size=16), make_policy("continuous"))
    sched.add_request(Request("a", 0.0, 4, 8))
    tracker, log = LookaheadTracker(16, 8), []
    for step in range(5):
        if step == 3:
            sched.add_request(Request("b", 0.0, 4, 2))  # admitted beside "a": the looked-ahead step is dropped
        plan = sched.schedule(0.0)
        log.append((plan, tracker.served(plan), tracker.dropped))
        sched.postprocess(plan, StepResult(1e-3))
    assert [(served, dropped) for _, served, dropped in log[:3]] == [(False, None), (False, None), (True, None)]
    admission, served, dropped = log[3]
    assert admission.prefills and not served and dropped is log[2][0]  # it looked ahead after step 2
    assert log[4][2] is None  # nothing was looked ahead after the mixed step

    cost = CalibratedCostModel(surface_profile() | {"decode_steps_cold": COLD})
    assert cost.dropped_time(log[2][0]) == pytest.approx(cost.step_time(log[2][0]) - cost.step_overhead_s)
    cfg, policy = SchedulerConfig(num_gpu_blocks=64, block_size=16), make_policy("continuous")
    reqs = [Request("a", 0.0, 4, 8)]
    alone = simulate(reqs, policy, cfg, cost).steps
    t_b = float(alone["start_s"].iloc[3]) - 1e-9  # arrives while step 2's looked-ahead successor runs
    steps = simulate([*reqs, Request("b", t_b, 4, 2)], policy, cfg, cost).steps
    mixed, before = steps.iloc[3], steps.iloc[2]
    assert mixed["prefill_tokens"] == 4 and mixed["decodes"] == 1 and before["decodes"] == 1
    price = cost.shape_time(4, 1, 1, mixed["decode_ctx_tokens"], mixed["prefill_attn_pairs"])
    looked_ahead = cost.shape_time(0, 0, 1, before["decode_ctx_tokens"], 0)
    assert mixed["duration_s"] == pytest.approx(price + looked_ahead - cost.step_overhead_s, rel=1e-9)
