"""The wall-clock replay loop against the simulator: same contract, same timeline."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.replay import ReplayStalled, replay, replay_summary
from policies.batching import ContinuousBatching, make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.types import Request, StepPlan, StepResult
from sim.simulator import simulate
from tests.sim.test_simulator import LinearCost


class VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


class TimedExecutor:
    """Advances the virtual clock by the cost model's prediction and returns token ids."""

    def __init__(self, clock: VirtualClock, cost: LinearCost) -> None:
        self.clock, self.cost = clock, cost

    def execute(self, plan: StepPlan) -> StepResult:
        self.clock.t += self.cost.step_time(plan)
        ids = {c.seq.seq_id: [7] for c in plan.prefills if c.samples}
        ids.update({s.seq_id: [7] for s in plan.decodes})
        return StepResult(0.0, ids)


def trace() -> list[Request]:
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.01, 60))
    return [Request(str(i), float(t[i]), int(rng.integers(5, 300)), int(rng.integers(1, 30))) for i in range(60)]


@pytest.mark.parametrize("policy", ["continuous", "static", "dynamic", "prefix-aware"])
def test_replay_with_a_virtual_clock_reproduces_the_simulation(policy: str) -> None:
    cfg = SchedulerConfig(num_gpu_blocks=300, block_size=16)
    cost = LinearCost(0.004, 3e-5)
    clock = VirtualClock()
    sched = Scheduler(cfg, make_policy(policy))
    wall = replay(trace(), sched, TimedExecutor(clock, cost), clock=clock, sleep=clock.sleep)
    real, _, summary = replay_summary(sched, wall)
    sim = simulate(trace(), make_policy(policy), cfg, cost)
    a = real.set_index("request_id").sort_index()
    b = sim.requests.set_index("request_id").sort_index()
    for col in ("first_token_s", "finish_s", "num_preemptions", "output_len"):
        assert np.allclose(a[col].astype(float), b[col].astype(float)), col
    assert summary["num_finished"] == 60
    assert all(len(s.output_ids) == s.output_len for s in sched.finished)


def test_replay_reports_a_stalled_policy() -> None:
    class Never(ContinuousBatching):
        def may_admit(self, now, waiting, view):  # noqa: ANN001, ANN201
            return False

    clock = VirtualClock()
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=10), Never())
    with pytest.raises(ReplayStalled, match="1 waiting"):
        replay([Request("a", 0.0, 5, 2)], sched, TimedExecutor(clock, LinearCost()), clock=clock,
               sleep=clock.sleep)


def test_replay_freezes_the_heap_while_it_runs() -> None:
    """Objects alive at the start stay out of the collector's full passes during the run, and the
    heap is unfrozen afterwards, also when a step fails."""
    import gc

    clock = VirtualClock()
    seen: list[int] = []

    class Recording(TimedExecutor):
        def execute(self, plan: StepPlan) -> StepResult:
            seen.append(gc.get_freeze_count())
            return super().execute(plan)

    sched = Scheduler(SchedulerConfig(num_gpu_blocks=300, block_size=16), make_policy("continuous"))
    replay(trace(), sched, Recording(clock, LinearCost(0.004, 3e-5)), clock=clock, sleep=clock.sleep)
    assert seen and min(seen) > 0
    assert gc.get_freeze_count() == 0

    class Failing(TimedExecutor):
        def execute(self, plan: StepPlan) -> StepResult:
            raise RuntimeError("device lost")

    sched = Scheduler(SchedulerConfig(num_gpu_blocks=300, block_size=16), make_policy("continuous"))
    with pytest.raises(RuntimeError, match="device lost"):
        replay(trace(), sched, Failing(clock, LinearCost(0.004, 3e-5)), clock=clock, sleep=clock.sleep)
    assert gc.get_freeze_count() == 0
