"""Runs of repeated decode steps, booked in one go: the simulator's fast path between events.

Between two events that change a batch (an arrival, a sequence's last token, a KV pool too full to grow
a block table), the scheduler plans the same decode-only step again and again: the same sequences in the
same order, each one token further. On a sparse trace (one to three requests in flight) such stretches are
most of a run's million steps, and the generic ``schedule -> cost model -> postprocess`` round costs
several microseconds a step. ``DecodeRun.extend`` books a stretch at once, exactly as that many rounds
would: the same KV blocks allocated in the same order at the same steps, the same served / cold pricing
as ``LookaheadTracker`` decides it, the same float sums for the clock and token times, the same step-log
rows. It stops *before* any step it cannot vouch for, and the simulator's loop plans that one as usual:

* the step in which some sequence takes its last token (the batch changes after it);
* a step that would end at or after the next arrival (the arrival must reach the scheduler first);
* a step whose new KV blocks the pool cannot give (``schedule`` would preempt).

Preconditions, checked by ``Simulator`` before each call: the step just booked was decode-only (no
prefill, swap, preemption or draft token) and finished nobody; nothing is waiting or swapped (so no
policy is asked anything: ``may_admit`` and ``order`` only see waiting requests); every running sequence
was in it; the scheduler does not speculate; the cost model prices plans by their aggregates
(``prices_by_aggregates``), so re-pricing one plan object with its context updated is the same as pricing a
fresh plan per step; no step-wise driver is attached (it needs one event per step).
``tests/sim/test_decode_run.py`` checks every request and step-log row against the step-wise driver.
"""

from __future__ import annotations

from collections.abc import Callable

from policies.scheduler import Scheduler
from policies.sequence import Sequence
from policies.types import StepPlan
from sim.lookahead import LookaheadTracker

Pricer = Callable[[int], float]  # decode_ctx_tokens -> seconds of a decode-only step of a fixed batch


class DecodeRun:
    """Books stretches of repeated decode-only steps for one simulation.

    Args:
        scheduler: the simulation's scheduler.
        step_time: the cost model's ``step_time``.
        cold_time: the price of a step no looked-ahead step serves (``step_time`` without a tracker).
        host_tail: the cost model's ``host_tail`` (None: tokens are out at the step's end).
        ahead: the decode-lookahead tracker, or None.
        decode_pricer: the cost model's ``decode_pricer`` (``CalibratedCostModel``), or None: each step's
            plan is priced.
    """

    def __init__(self, scheduler: Scheduler, step_time: Callable[[StepPlan], float],
                 cold_time: Callable[[StepPlan], float], host_tail: Callable[[StepPlan], float] | None,
                 ahead: LookaheadTracker | None,
                 decode_pricer: Callable[[int, bool], Callable[[int], float] | None] | None = None) -> None:
        self.scheduler = scheduler
        self.step_time = step_time
        self.cold_time = cold_time
        self.host_tail = host_tail
        self.ahead = ahead
        self.decode_pricer = decode_pricer
        self.steps = 0  # steps booked by runs so far (a share of the simulator's num_steps)

    def extend(self, plan: StepPlan, now: float, next_arrival: float) -> tuple[float, int]:
        """Book the decode steps that repeat ``plan`` (just booked) from ``now`` on.

        Args:
            plan: the decode-only step the scheduler just booked (see the module's preconditions).
            now: the engine clock after ``plan``.
            next_arrival: when the next request arrives (inf: none left).

        Returns:
            The engine clock after the booked steps, and how many were booked (0: none; state unchanged).
        """
        sched = self.scheduler
        decodes = plan.decodes
        horizon = min([s.output_len - s.num_generated for s in decodes]) - 1  # the first finishing step
        if horizon <= 0:
            return now, 0
        bm, bs, nb = sched.bm, sched.block_size, len(decodes)
        # steps (from this run's first, 0) at which each sequence's next token opens a new block
        need_at = [len(s.block_table) * bs - s.num_computed for s in decodes]
        next_need = min(need_at)
        ahead = self.ahead
        warm, cold = self._pricers(decodes, ahead is not None)
        # a run step is served when the step before it looked ahead: no new block for its tokens
        # (the other conditions hold for the whole run: nobody takes a last token before the run ends)
        looks = ahead is not None and nb <= ahead.max_rows and all(
            s.request.sampling.temperature == 0.0 for s in decodes)
        served = ahead is not None and ahead.looked_ahead  # whether plan looked ahead (run step 0)
        # d - min(tail, d), the step's result.duration_s, is d exactly without a tail (tail 0.0)
        tail = self.host_tail(plan) if self.host_tail is not None else 0.0
        ctx0 = ctx = plan.decode_ctx_tokens
        starts: list[float] = []
        outs: list[float] = []
        used: list[int] = []  # KV blocks in use after each step (its step-log column)
        hits = k = 0
        while k < horizon:
            need = k == next_need
            if k:
                served = looks and not need
            d = warm(ctx + nb) if served else cold(ctx + nb)
            if not now + d < next_arrival:
                break
            if need:
                grow = [i for i, at in enumerate(need_at) if at == k]
                if bm.num_used + len(grow) > bm.num_blocks:
                    break
                for i in grow:  # in running order, as schedule allocates them
                    bm.allocate(decodes[i].block_table, decodes[i].num_computed + k + 1)
                    need_at[i] += bs
                next_need = min(need_at)
            ctx += nb
            starts.append(now)
            outs.append(d - tail if tail < d else 0.0)  # d - min(tail, d)
            used.append(bm.num_used)
            now += d
            hits += served
            k += 1
        if not k:
            return now, 0
        sched.book_decode_run(decodes, starts, outs, used, ctx0)
        if ahead is not None:  # the last booked step looked ahead unless the next one needs a block
            last = StepPlan(plan.step_id + k, starts[-1], decodes=decodes[:], decode_ctx_tokens=ctx)
            ahead.skip(hits, last if looks and next_need != k else None)
        self.steps += k
        return now, k

    def _pricers(self, decodes: list[Sequence], lookahead: bool) -> tuple[Pricer, Pricer]:
        """``ctx -> seconds`` of a decode-only step of ``decodes``, served and cold (the same floats as
        ``step_time`` and ``cold_time`` of its plan)."""
        nb, pricer = len(decodes), self.decode_pricer
        warm = pricer(nb, False) if pricer is not None else None
        cold = (pricer(nb, True) if pricer is not None else None) if lookahead else warm
        if warm is not None and cold is not None:
            return warm, cold
        plan = StepPlan(0, 0.0, decodes=decodes[:])  # priced with its context updated step by step
        step_time, cold_time = self.step_time, self.cold_time if lookahead else self.step_time

        def plan_warm(ctx: int) -> float:
            plan.decode_ctx_tokens = ctx
            return step_time(plan)

        def plan_cold(ctx: int) -> float:
            plan.decode_ctx_tokens = ctx
            return cold_time(plan)

        return plan_warm, plan_cold
