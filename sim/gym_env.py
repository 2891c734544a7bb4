"""A Gymnasium environment over the simulator, so a learned policy can schedule.

Each ``step(action)`` runs one scheduler iteration on the simulated clock.
The action steers admission of the batching policy (which still enforces its
limits, KV blocks and preemption):

* ``0``: let the base policy decide (a hand-written policy runs through this
  very path with action 0 every step);
* ``k`` in ``1..window``: admit the k-th oldest waiting request first, then the
  base policy's order;
* ``window + 1``: admit nobody new this step (throttle); if nothing runs,
  the clock advances ``hold_s`` (or to the next arrival).

Observation (float32): ``[waiting, running / max_num_seqs, kv_usage, swapped,
last step ms]`` then, for each of the ``window`` oldest waiting requests,
``[present, prompt_len / 1000, waited_s, cached_fraction]``.

Reward: minus the request-seconds spent in the system since the last step
(the integral of the number of arrived, unfinished requests over time); its
sum over an episode is minus the total end-to-end latency of all requests, so
maximising reward minimises mean end-to-end latency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Sequence as Seq
from itertools import islice
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from policies.batching import BatchingPolicy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.sequence import Sequence
from policies.types import Request
from sim.simulator import Simulator

if TYPE_CHECKING:  # pragma: no cover
    from sim.cost_model import CostModel

GLOBAL_FEATURES = 5
SLOT_FEATURES = 4


class SteeredPolicy:
    """A batching policy whose admission order an agent overrides step by step."""

    def __init__(self, base: BatchingPolicy, window: int, hold_s: float) -> None:
        self.base = base
        self.window = window
        self.hold_s = hold_s
        self.max_num_seqs = base.max_num_seqs
        self.token_budget = base.token_budget
        self.chunked_prefill = base.chunked_prefill
        self.action = 0

    def may_admit(self, now: float, waiting: Seq[Sequence], view: Any) -> bool:
        if self.action == self.window + 1:
            return False
        return self.base.may_admit(now, waiting, view)

    def order(self, waiting: Seq[Sequence], now: float, view: Any) -> Iterable[Sequence]:
        ordered = list(self.base.order(waiting, now, view))
        if 1 <= self.action <= min(self.window, len(waiting)):
            first = waiting[self.action - 1]
            ordered.remove(first)
            ordered.insert(0, first)
        return ordered

    def next_wake(self, now: float, waiting: Seq[Sequence], view: Any) -> float | None:
        if self.action == self.window + 1:
            return now + self.hold_s
        return self.base.next_wake(now, waiting, view)


class ServingEnv(gym.Env):
    """Scheduling as a Gymnasium environment.

    Args:
        trace: requests, or a function of the episode seed returning them.
        policy: the base batching policy.
        scheduler_config: KV pool and preemption settings.
        cost_model: step-time predictor.
        window: how many waiting requests the agent sees and can pick.
        max_steps: episode truncation.
        hold_s: how far the clock moves when the agent throttles an idle engine.
    """

    metadata = {"render_modes": []}

    def __init__(self, trace: Seq[Request] | Callable[[int | None], Seq[Request]], policy: BatchingPolicy,
                 scheduler_config: SchedulerConfig, cost_model: CostModel, window: int = 8,
                 max_steps: int = 100_000, hold_s: float = 0.01) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not hold_s > 0:
            raise ValueError(f"hold_s must be > 0, got {hold_s}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.trace = trace
        self.base_policy = policy
        self.scheduler_config = scheduler_config
        self.cost_model = cost_model
        self.window = window
        self.max_steps = max_steps
        self.hold_s = hold_s
        self.action_space = gym.spaces.Discrete(window + 2)
        size = GLOBAL_FEATURES + SLOT_FEATURES * window
        self.observation_space = gym.spaces.Box(0.0, np.float32(3e38), shape=(size,), dtype=np.float32)
        self.sim: Simulator | None = None
        self.policy: SteeredPolicy | None = None
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        requests = self.trace(seed) if callable(self.trace) else self.trace
        self.policy = SteeredPolicy(self.base_policy, self.window, self.hold_s)
        scheduler = Scheduler(self.scheduler_config, self.policy)  # type: ignore[arg-type]
        self.sim = Simulator(requests, scheduler, self.cost_model)
        self._steps = 0
        self._last_duration = 0.0
        self._booked_latency = 0.0
        self._num_booked = 0
        return self._observe(), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.sim is None or self.policy is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside {self.action_space}")
        self.policy.action = int(action)
        before = self.sim.env.now
        area = self._latency_area()
        alive = self.sim.run_step()
        self._last_duration = self.sim.env.now - before
        self._steps += 1
        reward = area - self._latency_area()
        truncated = alive and self._steps >= self.max_steps
        return self._observe(), float(reward), not alive, truncated, self._info()

    def _latency_area(self) -> float:
        """Request-seconds accrued so far: finished latencies plus the age of unfinished requests."""
        assert self.sim is not None
        sched, now = self.sim.scheduler, self.sim.env.now
        done = sched.finished
        for seq in done[self._num_booked :]:
            self._booked_latency += seq.finish_s - seq.request.arrival_s  # type: ignore[operator]
        self._num_booked = len(done)
        live = [*sched.waiting, *sched.running, *sched.swapped]
        return self._booked_latency + sum(now - s.request.arrival_s for s in live)

    def _observe(self) -> np.ndarray:
        assert self.sim is not None
        sched, now = self.sim.scheduler, self.sim.env.now
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        obs[:GLOBAL_FEATURES] = (len(sched.waiting), len(sched.running) / sched.policy.max_num_seqs,
                                 sched.bm.usage, len(sched.swapped), self._last_duration * 1e3)
        for k, seq in enumerate(islice(sched.waiting, self.window)):
            base = GLOBAL_FEATURES + SLOT_FEATURES * k
            cached = sched.cached_prefix_tokens(seq) / seq.prompt_len
            obs[base : base + SLOT_FEATURES] = (1.0, seq.prompt_len / 1e3,
                                                max(0.0, now - seq.request.arrival_s), cached)
        return obs

    def _info(self) -> dict:
        assert self.sim is not None
        sched = self.sim.scheduler
        return {"now": self.sim.env.now, "finished": len(sched.finished), "steps": self._steps}


def make_env(trace: Seq[Request] | Callable[[int | None], Seq[Request]], policy: BatchingPolicy,
             scheduler_config: SchedulerConfig, cost_model: CostModel, **kwargs: Any) -> ServingEnv:
    """Build a ``ServingEnv`` (convenience for ``gymnasium`` style factories)."""
    return ServingEnv(trace, policy, scheduler_config, cost_model, **kwargs)
