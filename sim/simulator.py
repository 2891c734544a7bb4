"""The discrete-event simulator: the scheduler against a cost model on a SimPy clock.

Two SimPy processes: arrivals (each request is handed to the scheduler at its
trace arrival time) and the engine loop (``schedule -> cost model -> timeout ->
postprocess``), the same step contract the real engine runs on the wall clock.
A step that ends before the next arrival needs no SimPy event (nothing else can
happen meanwhile): the engine loop keeps its own clock through such stretches
and lets SimPy's catch up before anything that involves the arrivals, so a
step-wise driver (the gym env), which gets one event per step, sees the same
timeline. Stretches of repeated decode-only steps with nothing waiting are booked
in one go (``sim.decode_run``), with the same results as step by step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import simpy
from tqdm import tqdm

from policies.batching import BatchingPolicy
from policies.metrics import SLO, requests_frame, steps_frame, summarize
from policies.scheduler import Scheduler, SchedulerConfig
from policies.speculation import SpeculationPolicy
from policies.types import Request, StepResult
from sim.decode_run import DecodeRun
from sim.lookahead import LookaheadTracker

if TYPE_CHECKING:  # pragma: no cover
    from sim.acceptance import GeometricAcceptance
    from sim.cost_model import CostModel


class SimulationStalled(RuntimeError):
    """The scheduler holds unfinished requests but plans nothing and waits for nothing."""


@dataclass
class SimResult:
    """What a simulation produced."""

    requests: pd.DataFrame
    steps: pd.DataFrame
    summary: dict[str, Any]
    scheduler: Scheduler = field(repr=False)


class Simulator:
    """Runs one trace through one scheduler on a SimPy clock.

    Args:
        requests: the trace (any order; sorted by arrival here).
        scheduler: the scheduler (policies, KV pool), fresh.
        cost_model: predicts each step's duration from its ``StepPlan``.
        progress: show a tqdm bar of finished requests.
        acceptance: accepted draft counts of verifications (required when the scheduler speculates).
        decode_runs: book stretches of repeated decode steps at once where the cost model allows it
            (``sim.decode_run``; the same results, fewer microseconds a step).

    Raises:
        ValueError: a speculating scheduler without an acceptance model.
    """

    def __init__(self, requests: Iterable[Request], scheduler: Scheduler, cost_model: CostModel,
                 progress: bool = False, acceptance: GeometricAcceptance | None = None,
                 decode_runs: bool = True) -> None:
        if scheduler.speculation is not None and acceptance is None:
            raise ValueError("the scheduler speculates but the simulator has no acceptance model "
                             "(sim.acceptance.GeometricAcceptance)")
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.scheduler = scheduler
        self.cost_model = cost_model
        self.acceptance = acceptance
        self.env = simpy.Environment()
        self.num_steps = 0
        self.lookahead: LookaheadTracker | None = None  # set when the loop starts, if the profile has one
        self._arrivals_done = False
        self._wakeup: simpy.Event | None = None
        self._step_event: simpy.Event | None = None  # set by step-wise drivers (gym env)
        self._stepwise = False  # a step-wise driver needs one SimPy event per step
        self._decode_runs = decode_runs and scheduler.speculation is None and getattr(
            cost_model, "prices_by_aggregates", False)
        self.decode_run: DecodeRun | None = None  # set when the loop starts, if runs are on
        self._arrived = 0  # requests handed to the scheduler so far
        self._bar = tqdm(total=len(self.requests), unit="req", desc="simulating", leave=False,
                         disable=not progress)
        self.env.process(self._arrivals())
        self.loop = self.env.process(self._engine_loop())

    # ------------------------------------------------------------ processes
    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        env, sched = self.env, self.scheduler
        for req in self.requests:
            delay = req.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            sched.add_request(req)
            self._arrived += 1
            if self._wakeup is not None and not self._wakeup.triggered:
                self._wakeup.succeed()
        self._arrivals_done = True
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    def _catch_up(self, now: float) -> Generator[simpy.Event, Any, None]:
        """Bring the SimPy clock to ``now`` (the engine loop ran steps ahead of it)."""
        if now > self.env.now:
            yield self.env.timeout(now - self.env.now)

    def _engine_loop(self) -> Generator[simpy.Event, Any, None]:
        # ``now`` is the engine's clock. A step that ends before the next arrival runs without a SimPy event
        # (nothing else can happen meanwhile): ``now`` moves on by the step's duration exactly as the SimPy
        # clock would, and the SimPy clock catches up before anything that involves the other process.
        env, sched = self.env, self.scheduler
        step_time, postprocess = self.cost_model.step_time, sched.postprocess
        # the part of a step after its tokens are out (host bookkeeping), when the cost model prices one
        host_tail = getattr(self.cost_model, "host_tail", None)
        # a profile calibrated with the engine's decode lookahead prices the steps no looked-ahead step serves
        # apart; which ones those are follows from the plans (sim.lookahead)
        rows = getattr(self.cost_model, "lookahead_rows", None)
        self.lookahead = ahead = LookaheadTracker(sched.bm.block_size, rows) if rows else None
        cold_time = getattr(self.cost_model, "cold_step_time", step_time)
        dropped_time = getattr(self.cost_model, "dropped_time", lambda plan: 0.0)
        requests, num_requests, inf = self.requests, len(self.requests), float("inf")
        self.decode_run = runs = DecodeRun(sched, step_time, cold_time, host_tail, ahead, getattr(
            self.cost_model, "decode_pricer", None)) if self._decode_runs else None
        now = env.now
        while True:
            if not (sched.running or sched.waiting or sched.swapped):  # sched.has_unfinished(), inline
                yield from self._catch_up(now)
                if self._arrivals_done:
                    return
                yield from self._sleep(None)
                now = env.now
                continue
            plan = sched.schedule(now)
            if not (plan.decodes or plan.prefills or plan.swap_out or plan.swap_in):  # plan.is_empty, inline
                if plan.preempted:
                    continue  # recompute preemptions only: plan again at once
                yield from self._catch_up(now)
                now = env.now
                wake = sched.next_wake(now)
                if wake is not None and wake <= now:
                    raise SimulationStalled(f"policy asked to wake at {wake} but planned nothing at {now}")
                if wake is None and self._arrivals_done:
                    raise SimulationStalled(
                        f"at t={now:.3f}s {len(sched.waiting)} waiting, {len(sched.running)} running and "
                        f"{len(sched.swapped)} swapped requests, but the scheduler plans nothing"
                    )
                yield from self._sleep(wake)
                now = env.now
                self._decision_done()
                continue
            if ahead is None or ahead.served(plan):
                duration = step_time(plan)
            else:
                duration = cold_time(plan)
                if ahead.dropped is not None:  # plus what of the dropped looked-ahead step the host did not hide
                    duration += dropped_time(ahead.dropped)
            arrived = self._arrived  # the next arrival's time, inline: the simulator's hottest lines
            if now + duration < (requests[arrived].arrival_s if arrived < num_requests else inf) \
                    and not self._stepwise:
                now += duration
            else:
                yield from self._catch_up(now)
                yield env.timeout(duration)
                now = env.now
            # The tokens are out (and the step logged as over) before the host's tail of the step.
            out = duration - min(host_tail(plan), duration) if host_tail is not None else duration
            if plan.num_draft_tokens:
                result = StepResult(out, accepted=self.acceptance.draw(plan.draft_lens))  # type: ignore[union-attr]
            else:
                result = StepResult(out)
            done = postprocess(plan, result)
            self.num_steps += 1
            if done:
                self._bar.update(len(done))
            elif runs is not None and not (plan.prefills or plan.preempted or plan.swap_in or plan.swap_out
                                           or plan.num_draft_tokens or sched.waiting or sched.swapped
                                           or self._stepwise) and len(sched.running) == len(plan.decodes):
                arrived = self._arrived  # sim.decode_run's preconditions, inline
                now, k = runs.extend(plan, now, requests[arrived].arrival_s if arrived < num_requests else inf)
                self.num_steps += k
            if self._step_event is not None:
                self._decision_done()

    def _decision_done(self) -> None:
        """Hand control back to a step-wise driver: a step ran, or an idle wait ended."""
        if self._step_event is not None:
            self._step_event.succeed()
            self._step_event = None

    def _sleep(self, until: float | None) -> Generator[simpy.Event, Any, None]:
        """Wait for the next arrival, or ``until`` (a policy timer), whichever is first."""
        self._wakeup = self.env.event()
        if until is None:
            yield self._wakeup
        else:
            yield self._wakeup | self.env.timeout(until - self.env.now)
        self._wakeup = None

    # --------------------------------------------------------------- driving
    def run(self) -> None:
        """Run until every request has finished."""
        try:
            self.env.run(until=self.loop)
        finally:
            self._bar.close()

    def run_step(self) -> bool:
        """Advance until the next step completes (or an idle wait for work ends).

        Returns:
            False once the simulation is over (no further step will run).
        """
        if not self.loop.is_alive:
            return False
        self._stepwise = True
        self._step_event = self.env.event()
        self.env.run(until=self._step_event | self.loop)
        return self.loop.is_alive

    @property
    def done(self) -> bool:
        return not self.loop.is_alive

    def result(self, wall_s: float | None = None, slo: SLO | None = None) -> SimResult:
        """Per-request rows, the step log and the summary of what ran so far."""
        sched = self.scheduler
        seqs = [*sched.finished, *sched.running, *sched.swapped, *sched.waiting]
        requests = requests_frame(seqs)
        steps = steps_frame(sched.step_log, sched.bm.num_blocks)
        summary = summarize(requests, steps, slo, wall_s)
        if self.lookahead is not None:  # as the engine's replay reports it (experiments.engine_run)
            summary["lookahead_served_steps"] = self.lookahead.hits
        return SimResult(requests, steps, summary, sched)


def simulate(requests: Iterable[Request], policy: BatchingPolicy, scheduler_config: SchedulerConfig,
             cost_model: CostModel, slo: SLO | None = None, progress: bool = False,
             speculation: SpeculationPolicy | None = None,
             acceptance: GeometricAcceptance | None = None, decode_runs: bool = True) -> SimResult:
    """Simulate one trace under one policy.

    Args:
        requests: the trace.
        policy: the batching policy.
        scheduler_config: KV pool and preemption settings (``verify_group_rows`` None: the cost model's,
            e.g. a calibrated profile's).
        cost_model: step-time predictor.
        slo: objectives for goodput.
        progress: show a progress bar.
        speculation: the speculation policy (None: no speculative decoding).
        acceptance: accepted-draft model (required with ``speculation``).
        decode_runs: book repeated decode steps in stretches (``Simulator``; the same results).

    Returns:
        Per-request rows, the step log and the summary (``wall_s`` included).
    """
    t0 = time.perf_counter()
    if scheduler_config.verify_group_rows is None:
        rows = getattr(cost_model, "verify_group_rows", 1)  # optional in the CostModel protocol
        scheduler_config = dataclasses.replace(scheduler_config, verify_group_rows=rows)
    sim = Simulator(requests, Scheduler(scheduler_config, policy, speculation), cost_model, progress, acceptance,
                    decode_runs)
    sim.run()
    result = sim.result(slo=slo)
    result.summary["wall_s"] = time.perf_counter() - t0  # the run and its metrics
    return result
