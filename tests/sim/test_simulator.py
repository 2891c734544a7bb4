"""The SimPy simulator: timing, completeness, stalls, determinism."""

from __future__ import annotations

import pytest

from policies.batching import ContinuousBatching, make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.types import Request, StepPlan
from sim.simulator import SimulationStalled, Simulator, simulate


class LinearCost:
    """A toy cost model: fixed overhead plus per-token costs."""

    def __init__(self, base: float = 0.01, per_prefill: float = 1e-4, per_ctx: float = 0.0) -> None:
        self.base, self.per_prefill, self.per_ctx = base, per_prefill, per_ctx

    def step_time(self, plan: StepPlan) -> float:
        return self.base + self.per_prefill * plan.num_prefill_tokens + self.per_ctx * plan.decode_ctx_tokens


def test_single_request_timeline_matches_the_cost_model() -> None:
    req = Request("a", 1.5, 100, 4)
    res = simulate([req], make_policy("continuous"), SchedulerConfig(num_gpu_blocks=64), LinearCost())
    row = res.requests.iloc[0]
    prefill = 0.01 + 1e-4 * 100
    assert row["first_token_s"] == pytest.approx(1.5 + prefill)
    assert row["ttft_s"] == pytest.approx(prefill)
    assert row["finish_s"] == pytest.approx(1.5 + prefill + 3 * 0.01)  # 3 decode steps
    assert row["tpot_s"] == pytest.approx(0.01)
    assert res.summary["num_finished"] == 1 and res.summary["num_steps"] == 4


def test_idle_gaps_are_skipped_and_every_request_finishes() -> None:
    reqs = [Request(str(i), 10.0 * i, 50, 3) for i in range(5)]
    res = simulate(reqs, make_policy("continuous"), SchedulerConfig(num_gpu_blocks=64), LinearCost())
    assert res.summary["num_finished"] == 5
    assert res.requests["e2e_s"].max() == pytest.approx(0.01 + 5e-3 + 2 * 0.01)
    assert res.summary["makespan_s"] == pytest.approx(40 + 0.035)


def test_runs_are_deterministic_and_queueing_grows_with_load() -> None:
    def run(gap: float) -> dict:
        reqs = [Request(str(i), gap * i, 200, 20) for i in range(200)]
        return simulate(reqs, make_policy("continuous", max_num_seqs=8), SchedulerConfig(num_gpu_blocks=400),
                        LinearCost()).summary

    a, b = run(0.05), run(0.05)
    assert {k: v for k, v in a.items() if k != "wall_s"} == {k: v for k, v in b.items() if k != "wall_s"}
    assert run(0.01)["ttft_p99_s"] > 5 * a["ttft_p99_s"]


def test_dynamic_policy_timer_wakes_the_idle_loop() -> None:
    res = simulate([Request("a", 0.0, 10, 2)], make_policy("dynamic", max_num_seqs=4, max_wait_s=0.3),
                   SchedulerConfig(num_gpu_blocks=64), LinearCost())
    assert res.requests.iloc[0]["first_scheduled_s"] == pytest.approx(0.3)


def test_a_policy_that_never_admits_is_reported_not_hung() -> None:
    class Never(ContinuousBatching):
        def may_admit(self, now, waiting, view):  # noqa: ANN001, ANN201
            return False

    sim = Simulator([Request("a", 0.0, 10, 2)], Scheduler(SchedulerConfig(num_gpu_blocks=64), Never()),
                    LinearCost())
    with pytest.raises(SimulationStalled, match="1 waiting, 0 running"):
        sim.run()


def test_tokens_come_out_before_the_host_tail_of_their_step() -> None:
    """A cost model's ``host_tail``: a step's tokens (and its logged end) come that much before the step
    ends; the next step still starts when it ends, so the timeline's length is unchanged."""

    class Tailed(LinearCost):
        def __init__(self) -> None:
            super().__init__()
            self.host_tail = lambda plan: 0.002 + 1e-5 * plan.num_prefill_tokens

    req = Request("a", 0.0, 100, 3)
    plain = simulate([req], make_policy("continuous"), SchedulerConfig(num_gpu_blocks=64), LinearCost())
    tailed = simulate([Request("a", 0.0, 100, 3)], make_policy("continuous"), SchedulerConfig(num_gpu_blocks=64),
                      Tailed())
    p, t = plain.requests.iloc[0], tailed.requests.iloc[0]
    assert t["ttft_s"] == pytest.approx(p["ttft_s"] - 0.003)  # the prefill step's tail: 2 ms + 100 x 10 us
    assert t["finish_s"] == pytest.approx(p["finish_s"] - 0.002)  # the last decode step's tail
    assert list(tailed.steps["start_s"]) == pytest.approx(list(plain.steps["start_s"]))
    assert list(tailed.steps["duration_s"]) == pytest.approx([0.02 - 0.003, 0.01 - 0.002, 0.01 - 0.002])


def test_swap_preemption_costs_time_in_the_plan() -> None:
    seen = []

    class Recording(LinearCost):
        def step_time(self, plan: StepPlan) -> float:
            seen.append((len(plan.swap_out), len(plan.swap_in)))
            return super().step_time(plan)

    reqs = [Request(str(i), 0.0, 10, 14) for i in range(4)]
    cfg = SchedulerConfig(num_gpu_blocks=12, block_size=4, preemption_mode="swap", num_cpu_blocks=16)
    res = simulate(reqs, make_policy("continuous"), cfg, Recording())
    assert res.summary["preemptions"] > 0 and res.summary["num_finished"] == 4
    assert sum(o for o, _ in seen) == sum(i for _, i in seen) > 0


@pytest.mark.parametrize("policy", ["continuous", "dynamic", "static"])
def test_steps_without_simpy_events_keep_the_timeline(policy: str) -> None:
    """``simulate`` runs the steps that end before the next arrival without SimPy events; a step-wise driver
    (one event per step, as the gym env drives it) must see the same steps at the same times."""
    import numpy as np

    rng = np.random.default_rng(5)
    arrivals = np.cumsum(rng.exponential(0.05, 80))  # sparse: many steps between arrivals
    reqs = [Request(str(i), float(t), int(rng.integers(5, 200)), int(rng.integers(1, 60)))
            for i, t in enumerate(arrivals)]
    cfg, cost = SchedulerConfig(num_gpu_blocks=120, block_size=16), LinearCost(0.004, 3e-5)
    fast = simulate(reqs, make_policy(policy), cfg, cost)
    stepwise = Simulator(reqs, Scheduler(cfg, make_policy(policy)), cost)
    while stepwise.run_step():
        pass
    slow = stepwise.result()
    assert fast.summary["num_steps"] == slow.summary["num_steps"] > 2 * len(reqs)
    a = fast.requests.set_index("request_id").sort_index()
    b = slow.requests.set_index("request_id").sort_index()
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "num_preemptions"):
        assert np.allclose(a[col].astype(float), b[col].astype(float), rtol=1e-12, atol=0), col
    assert np.allclose(fast.steps["start_s"], slow.steps["start_s"], rtol=1e-12, atol=0)
