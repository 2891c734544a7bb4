"""Which decode steps the engine's decode lookahead serves, decided from the plans alone.

With ``EngineConfig.decode_lookahead`` (``engine/lookahead.py``) the engine replays, right after a greedy
decode-only graph step, the next step of the same sequences, so that step's GPU work overlaps the host's
bookkeeping. A plan that is exactly that next step is *served*: its time is the GPU's alone. Any other
decode-only step is *cold*: the host's share of it (reading ids back, ``postprocess``, ``schedule``,
staging inputs, launching) runs while the GPU idles. A calibration with the lookahead on times steady
decode loops, which are served; its profile's ``decode_steps_cold`` prices the cold ones
(``CalibratedCostModel.cold_step_time``).

How often a replay's steps are cold depends on the plans, not on timing: after a step in which a
sequence takes its last token, after a step holding a prefill, and whenever some sequence's next token
opens a new KV block (the scheduler allocates that block only when it plans the step), so at batch
``B`` with block size 16 and unaligned sequences most steps are cold. ``LookaheadTracker`` applies the
engine's own rules (``DecodeLookahead.launch_after`` and ``take``) to the simulator's plans.

A plan other than the looked-ahead step *drops* it (an admission, a preemption, a swap): the dropped
replay still runs on the GPU before the plan's own work, and the part of it the host's work between the
two steps does not hide delays that plan (``CalibratedCostModel.dropped_time``). On an H200 replay of
the Azure slice, the mixed steps after a dropped replay (1.15 ms of GPU time) took 0.49 ms longer than
the others beyond their price (``benchmarks/step_timing.py``).
"""

from __future__ import annotations

from policies.types import StepPlan


class LookaheadTracker:
    """Follows the engine's decode lookahead over a run's plans, one call per planned step.

    Args:
        block_size: tokens per KV block.
        max_rows: the largest decode graph (a larger decode step replays it on chunks and is never looked
            ahead).

    Attributes:
        hits: plans served so far (the engine's ``DecodeLookahead.hits`` over the same plans).
        dropped: after ``served(plan)`` returned False, the plan after which the engine had looked ahead
            (its next step is the replay ``plan`` dropped), else None.
    """

    __slots__ = ("block_size", "max_rows", "hits", "dropped", "_after")

    def __init__(self, block_size: int, max_rows: int) -> None:
        if block_size < 1 or max_rows < 1:
            raise ValueError(f"LookaheadTracker: need block_size >= 1 and max_rows >= 1, got {block_size} and "
                             f"{max_rows}")
        self.block_size = block_size
        self.max_rows = max_rows
        self.hits = 0
        self.dropped: StepPlan | None = None
        # the plan after which the engine looked ahead (its decodes, in order, are the looked-ahead step's)
        self._after: StepPlan | None = None

    def served(self, plan: StepPlan) -> bool:
        """Whether the engine serves ``plan`` from the step it looked ahead after the previous plan.

        Call once per planned step, in order, before the step is booked (``postprocess``): it also notes
        whether the engine looks ahead after ``plan``.

        Returns:
            True for a served decode-only step; False for every other step.
        """
        after = self.dropped = self._after
        self._after = None
        decodes = plan.decodes
        if plan.prefills or plan.num_draft_tokens or not decodes or len(decodes) > self.max_rows:
            return False
        # the same sequences in the same order (list equality is identity for sequences); each is one token
        # further, over the same blocks, as it was planned in the step before (only a preemption changes
        # blocks, and it leaves the batch)
        hit = after is not None and after.decodes == decodes and not (plan.swap_in or plan.swap_out)
        # a step that swaps blocks runs its graph after the copies, and is looked ahead after like any other
        bs = self.block_size
        for s in decodes:  # a plain loop: the simulator's hot path at large batches (no generator frames)
            if (s.num_computed + 1) // bs >= len(s.block_table) or s.output_len - s.num_generated <= 1 \
                    or s.request.sampling.temperature != 0.0:
                break
        else:
            self._after = plan  # a plan's decodes are not changed after it is planned
        if hit:
            self.hits += 1
            self.dropped = None
        return hit

    @property
    def looked_ahead(self) -> bool:
        """Whether the engine looked ahead after the last plan given to ``served``."""
        return self._after is not None

    def skip(self, hits: int, last: StepPlan | None) -> None:
        """Account for steps booked without ``served`` calls (``sim.decode_run``).

        Args:
            hits: how many of them were served.
            last: the last of them if the engine looked ahead after it, else None.
        """
        self.hits += hits
        self.dropped = None
        self._after = last
