"""Serving metrics from per-request timestamps: one function for both worlds.

The simulator and the engine both produce per-request rows
(``Sequence.record()``) and a per-step log (``Scheduler.step_log``); everything
here is computed from those alone, so a metric means the same thing in both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policies.scheduler import STEP_LOG_COLUMNS
from policies.sequence import Sequence as Seq

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class SLO:
    """Latency objectives for goodput: a request counts if it meets all of them.

    Args:
        ttft_s: time-to-first-token bound.
        tpot_s: time-per-output-token bound.
        e2e_s: end-to-end latency bound (None: unbounded).
    """

    ttft_s: float = 1.0
    tpot_s: float = 0.1
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s", "e2e_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"SLO {name} must be > 0, got {value}")


def requests_frame(seqs: Iterable[Seq]) -> pd.DataFrame:
    """One row per request (finished or not), ordered by arrival."""
    df = pd.DataFrame([s.record() for s in seqs])
    return df.sort_values("arrival_s", kind="stable").reset_index(drop=True) if len(df) else df


def steps_frame(step_log: Sequence[float], num_blocks: int) -> pd.DataFrame:
    """The scheduler's flat step log (``STEP_LOG_COLUMNS`` per step) as a frame, with
    KV utilisation as a fraction."""
    flat = np.asarray(step_log, dtype=float).reshape(-1, len(STEP_LOG_COLUMNS))
    df = pd.DataFrame(flat, columns=list(STEP_LOG_COLUMNS))
    df["kv_util"] = df["kv_blocks_used"] / num_blocks
    return df


def _stats(prefix: str, values: np.ndarray, out: dict[str, Any]) -> None:
    values = values[~np.isnan(values)]
    out[f"{prefix}_mean_s"] = float(values.mean()) if len(values) else math.nan
    for p in PERCENTILES:
        out[f"{prefix}_p{p}_s"] = float(np.percentile(values, p)) if len(values) else math.nan


def inter_token_latencies(token_times: Iterable[Iterable[float]]) -> np.ndarray:
    """All gaps between consecutive tokens of the same request."""
    gaps = [np.diff(np.asarray(t, dtype=float)) for t in token_times]
    return np.concatenate(gaps) if gaps else np.empty(0)


def summarize(requests: pd.DataFrame, steps: pd.DataFrame | None = None, slo: SLO | None = None,
              wall_s: float | None = None) -> dict[str, Any]:
    """Compute the summary metrics of one run.

    Args:
        requests: per-request rows (``requests_frame``), finished or not.
        steps: the step log (``steps_frame``) for KV utilisation, if known.
        slo: objectives for goodput (default ``SLO()``).
        wall_s: the run's wall-clock time, reported as is.

    Returns:
        A flat dict: counts, throughputs (tokens/s over the makespan, first
        arrival to last finish), mean/p50/p90/p99 of TTFT, TPOT, inter-token and
        end-to-end latency, goodput, KV utilisation, prefix-cache hit rate and
        preemptions.
    """
    slo = slo or SLO()
    out: dict[str, Any] = {"num_requests": int(len(requests))}
    done = requests[requests["finish_s"].notna()] if len(requests) else requests
    out["num_finished"] = int(len(done))
    if len(done):
        start = float(requests["arrival_s"].min())
        makespan = float(done["finish_s"].max()) - start
    else:
        makespan = math.nan
    out["makespan_s"] = makespan
    out_tokens = float(done["output_len"].sum()) if len(done) else 0.0
    in_tokens = float(done["prompt_len"].sum()) if len(done) else 0.0
    rate = (lambda x: x / makespan) if makespan and makespan > 0 else (lambda x: math.nan)
    out["throughput_output_tok_s"] = rate(out_tokens)
    out["throughput_total_tok_s"] = rate(out_tokens + in_tokens)
    out["throughput_req_s"] = rate(float(len(done)))
    for name in ("ttft", "tpot", "e2e"):
        col = done[f"{name}_s"].astype(float).to_numpy() if len(done) else np.empty(0)
        _stats(name, col, out)
    _stats("itl", inter_token_latencies(done["token_times"]) if len(done) else np.empty(0), out)
    if len(done):
        ok = (done["ttft_s"] <= slo.ttft_s) & (done["tpot_s"].fillna(0.0) <= slo.tpot_s)
        if slo.e2e_s is not None:
            ok &= done["e2e_s"] <= slo.e2e_s
        out["slo_attainment"] = float(ok.sum()) / len(requests)
        out["goodput_req_s"] = rate(float(ok.sum()))
    else:
        out["slo_attainment"], out["goodput_req_s"] = math.nan, math.nan
    looked = float(requests["looked_up_prompt_tokens"].sum()) if len(requests) else 0.0
    cached = float(requests["cached_prompt_tokens"].sum()) if len(requests) else 0.0
    out["prefix_cache_hit_rate"] = cached / looked if looked else 0.0
    out["preemptions"] = int(requests["num_preemptions"].sum()) if len(requests) else 0
    _speculation_stats(requests, out)
    if steps is not None and len(steps):
        dur = steps["duration_s"].to_numpy()
        util = steps["kv_util"].to_numpy()
        out["kv_util_mean"] = float((util * dur).sum() / dur.sum()) if dur.sum() > 0 else float(util.mean())
        out["kv_util_max"] = float(util.max())
        out["num_steps"] = int(len(steps))
    out["wall_s"] = wall_s
    return out


def _speculation_stats(requests: pd.DataFrame, out: dict[str, Any]) -> None:
    """Draft tokens verified and accepted; ``spec_acceptance_rate`` (accepted / verified) and ``spec_alpha``
    (accepted / (accepted + rejections): the per-token acceptance probability of the geometric model,
    ``sim.acceptance``). Both are NaN without speculation."""
    cols = ("draft_tokens", "accepted_draft_tokens", "draft_rejections")
    drafted, accepted, rejected = (float(requests[c].sum()) if len(requests) and c in requests else 0.0
                                   for c in cols)
    out["spec_draft_tokens"] = int(drafted)
    out["spec_accepted_tokens"] = int(accepted)
    out["spec_acceptance_rate"] = accepted / drafted if drafted else math.nan
    out["spec_alpha"] = accepted / (accepted + rejected) if accepted + rejected else math.nan


def write_results(out_dir: str | Path, requests: pd.DataFrame, steps: pd.DataFrame | None,
                  summary: dict[str, Any]) -> Path:
    """Write ``requests.parquet``, ``steps.parquet`` and ``summary.json`` into ``out_dir``.

    Returns:
        The output directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    requests.to_parquet(out / "requests.parquet", index=False)
    if steps is not None:
        steps.to_parquet(out / "steps.parquet", index=False)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    (out / "summary.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return out
