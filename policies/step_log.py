"""The scheduler's per-step log: one row of ``STEP_LOG_COLUMNS`` per step, kept flat in an ``array("d")``.

A flat array is cheap to append to on the decode loop and cheap to turn into a frame
(``policies.metrics.steps_frame``); these helpers are the only writers of its rows.
"""

from __future__ import annotations

from array import array

from policies.types import StepPlan

STEP_LOG_COLUMNS = ("start_s", "duration_s", "prefill_tokens", "decodes", "kv_blocks_used",
                    "running", "waiting", "swapped", "preempted", "prefills", "decode_ctx_tokens",
                    "prefill_attn_pairs", "draft_tokens", "draft_ctx_tokens", "prefill_ctx_tokens")
# a decode-only step's row before its times, blocks, sizes and context are filled in (log_decode_run)
_DECODE_ROW = array("d", [0.0] * len(STEP_LOG_COLUMNS))


def log_step(log: array, plan: StepPlan, duration_s: float, kv_blocks_used: int, running: int, waiting: int,
             swapped: int) -> None:
    """Append the row of one booked step.

    Args:
        log: the flat log.
        plan: the step's plan.
        duration_s: the step's ``StepResult.duration_s``.
        kv_blocks_used, running, waiting, swapped: the pool and queues after the step was booked.
    """
    log.extend((plan.now, duration_s, plan.num_prefill_tokens, len(plan.decodes), kv_blocks_used, running, waiting,
                swapped, len(plan.preempted), len(plan.prefills), plan.decode_ctx_tokens, plan.prefill_attn_pairs,
                plan.num_draft_tokens, plan.draft_ctx_tokens, plan.prefill_ctx_tokens))


def log_decode_run(log: array, starts: list[float], outs: list[float], used: list[int], batch: int,
                   ctx: int) -> None:
    """Append the rows of ``len(starts)`` decode-only steps of ``batch`` sequences, nothing waiting or swapped:
    the rows ``log_step`` would write for them one by one.

    Args:
        log: the flat log.
        starts, outs, used: each step's start, duration and KV blocks in use after it.
        batch: decodes (and running sequences) of every step.
        ctx: ``decode_ctx_tokens`` of the step before the first (each step reads one more token per decode).
    """
    k = len(starts)
    rows = _DECODE_ROW * k
    width = len(STEP_LOG_COLUMNS)
    rows[0::width] = array("d", starts)
    rows[1::width] = array("d", outs)
    rows[4::width] = array("d", used)
    rows[10::width] = array("d", range(ctx + batch, ctx + batch * (k + 1), batch))
    rows[3::width] = rows[5::width] = array("d", [batch]) * k
    log.extend(rows)
