"""Trace replay on the wall clock: the engine's twin of ``sim.simulator``.

Requests are handed to the scheduler at their trace arrival times (measured
from the start of the replay); each step's duration is the wall time from
``schedule(now)`` to the end of ``execute(plan)``, so scheduling overhead is
part of it, exactly as a calibrated simulator should predict it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from engine.heap import frozen_heap
from policies.metrics import SLO, requests_frame, steps_frame, summarize
from policies.scheduler import Scheduler
from policies.types import Request, StepPlan, StepResult


class Executor(Protocol):
    def execute(self, plan: StepPlan) -> StepResult: ...


class ReplayStalled(RuntimeError):
    """The scheduler holds unfinished requests but plans nothing and waits for nothing."""


def replay(requests: Iterable[Request], scheduler: Scheduler, executor: Executor,
           clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep,
           on_step: Callable[[int], None] | None = None) -> float:
    """Feed ``requests`` to ``scheduler`` on the wall clock and run every step on ``executor``.

    Args:
        requests: the trace (token ids required by a real engine).
        scheduler: a fresh scheduler.
        executor: runs plans (the engine's ModelRunner, or any ``execute(plan)``).
        clock: seconds, monotonic.
        sleep: waits while idle.
        on_step: called with the number of requests finished in each step (progress bars).

    Returns:
        The replay's wall time in seconds.
    """
    pending = deque(sorted(requests, key=lambda r: r.arrival_s))
    with frozen_heap():  # no full garbage collection over the engine's objects mid-run (engine.heap)
        return _loop(pending, scheduler, executor, clock, sleep, on_step)


def _loop(pending: deque[Request], scheduler: Scheduler, executor: Executor, clock: Callable[[], float],
          sleep: Callable[[float], None], on_step: Callable[[int], None] | None) -> float:
    start = clock()
    while pending or scheduler.has_unfinished():
        now = clock() - start
        while pending and pending[0].arrival_s <= now:
            scheduler.add_request(pending.popleft())
        if not scheduler.has_unfinished():
            sleep(max(0.0, pending[0].arrival_s - now))
            continue
        plan = scheduler.schedule(now)
        if plan.is_empty:
            if plan.preempted:
                continue
            wake = scheduler.next_wake(now)
            times = [t for t in (wake, pending[0].arrival_s if pending else None) if t is not None]
            if not times:
                raise ReplayStalled(f"at t={now:.3f}s the scheduler holds {len(scheduler.waiting)} waiting "
                                    f"requests but plans nothing")
            sleep(max(0.0, min(times) - now))
            continue
        result = executor.execute(plan)
        done = scheduler.postprocess(plan, StepResult(clock() - start - now, result.token_ids))
        if on_step is not None:
            on_step(len(done))
    return clock() - start


def replay_summary(scheduler: Scheduler, wall_s: float, slo: SLO | None = None) -> tuple:
    """Per-request rows, step log and summary of a finished replay (same format as the simulator)."""
    requests = requests_frame(scheduler.finished)
    steps = steps_frame(scheduler.step_log, scheduler.bm.num_blocks)
    return requests, steps, summarize(requests, steps, slo, wall_s)
