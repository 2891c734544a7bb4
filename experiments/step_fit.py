"""How well a cost model prices the steps a real run actually took, step by step.

End-to-end sim-vs-real errors mix two things: the cost model's error on a step, and the
divergence of two timelines once one step is mispriced (a different batch forms next). This
module isolates the first: every step of a real run's step log is priced by the cost model
from the same aggregates the simulator would see (prefill tokens and chunks, decodes, context
read, attention pairs), and compared with its measured duration.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sim.cost_model import CalibratedCostModel

STEP_FIT_COLUMNS = ("trace", "policy", "kind", "steps", "real_s", "sim_s", "rel_error", "median_step_rel_error",
                    "p90_abs_step_rel_error")


def decode_rows(steps: pd.DataFrame) -> pd.Series:
    """Decode rows per step: decodes plus the draft tokens they verified (step logs before speculative
    decoding have no ``draft_tokens`` column)."""
    return steps["decodes"] + steps["draft_tokens"] if "draft_tokens" in steps else steps["decodes"]


def step_kinds(steps: pd.DataFrame, max_graph_batch: int) -> pd.Series:
    """'graph decode' (decode-only, at most ``max_graph_batch`` rows), 'chunked decode' (more rows: the
    largest graph replayed on chunks of them; 'eager decode' without graphs), or 'prefill'."""
    decode_only = steps["prefill_tokens"] == 0
    graphed = decode_only & (decode_rows(steps) <= max_graph_batch)
    past = "chunked decode" if max_graph_batch else "eager decode"
    return pd.Series(np.where(graphed, "graph decode", np.where(decode_only, past, "prefill")),
                     index=steps.index)


def step_fit(steps: pd.DataFrame, cost: CalibratedCostModel, trace: str, policy: str) -> pd.DataFrame:
    """Predicted vs measured step time, per kind of step and over all steps.

    Args:
        steps: a real run's step log (``policies.metrics.steps_frame``).
        cost: the calibrated cost model the simulator used.
        trace, policy: labels for the rows.

    Returns:
        One row of ``STEP_FIT_COLUMNS`` per kind present and one for 'all' (sums of seconds;
        ``rel_error = (sim_s - real_s) / real_s``; per-step relative errors' median and 90th
        percentile of their absolute value).
    """
    busy = steps[(steps["prefill_tokens"] + steps["decodes"]) > 0]
    zeros = pd.Series(0.0, index=busy.index)  # step logs before speculative decoding lack the draft columns
    drafts, draft_ctx = busy.get("draft_tokens", zeros), busy.get("draft_ctx_tokens", zeros)
    # logs before that column: None (the cost model derives one chunk's context from its pairs)
    pf_ctx = busy["prefill_ctx_tokens"] if "prefill_ctx_tokens" in busy else [None] * len(busy)
    # A real step's logged duration ends when its tokens are out: the price without its host tail.
    pred = np.array([cost.shape_time(p, n, d, c, a, 0, k, y, x) - cost.tail_time(p, d)
                     for p, n, d, c, a, k, y, x in zip(busy["prefill_tokens"], busy["prefills"], decode_rows(busy),
                                                       busy["decode_ctx_tokens"], busy["prefill_attn_pairs"], drafts,
                                                       draft_ctx, pf_ctx, strict=True)])
    frame = pd.DataFrame({"kind": step_kinds(busy, max(cost.graph_batch_sizes or [0])).to_numpy(),
                          "real": busy["duration_s"].to_numpy(), "sim": pred})
    rows = []
    for kind, part in [*frame.groupby("kind", sort=True), ("all", frame)]:
        if not len(part):
            continue
        rel = (part["sim"] - part["real"]) / part["real"]
        real_s, sim_s = float(part["real"].sum()), float(part["sim"].sum())
        rows.append({"trace": trace, "policy": policy, "kind": kind, "steps": len(part), "real_s": real_s,
                     "sim_s": sim_s, "rel_error": (sim_s - real_s) / real_s if real_s > 0 else np.nan,
                     "median_step_rel_error": float(rel.median()),
                     "p90_abs_step_rel_error": float(rel.abs().quantile(0.9))})
    return pd.DataFrame(rows, columns=list(STEP_FIT_COLUMNS))
