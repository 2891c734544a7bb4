"""Policy comparisons: a sweep of policies x traces x loads, run in parallel processes."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from experiments import plots
from experiments.run_sim import SimJob, run_job

TABLE_COLUMNS = ["trace", "policy", "offered_rate_req_s", "throughput_output_tok_s", "ttft_p50_s", "ttft_p99_s",
                 "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s", "goodput_req_s", "preemptions",
                 "prefix_cache_hit_rate", "kv_util_mean", "wall_s"]


def slug(*parts: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", "__".join(map(str, parts))).strip("-")


def plan_jobs(base: SimJob, traces: Sequence[str], policies: Sequence[str], rate_scales: Sequence[float],
              out_dir: Path) -> list[SimJob]:
    """The cross product of traces, policies and load scales, each with its own output folder."""
    jobs = []
    for trace in traces:
        for policy in policies:
            for scale in rate_scales:
                run_dir = out_dir / "runs" / slug(Path(trace).name if ":" not in trace else trace, policy,
                                                  f"x{scale:g}")
                jobs.append(replace(base, trace=trace, policy=policy, rate_scale=scale, out_dir=str(run_dir)))
    return jobs


def run_jobs(jobs: Sequence[SimJob], workers: int) -> list[dict[str, Any]]:
    """Run jobs in ``workers`` processes (1: in this process) with a progress bar."""
    summaries: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), unit="run", desc="simulations")
    if workers <= 1:
        for job in jobs:
            summaries.append({**run_job(job), "run_dir": job.out_dir})
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for fut in as_completed(futures):
                summaries.append({**fut.result(), "run_dir": futures[fut].out_dir})
                bar.update()
    bar.close()
    order = {job.out_dir: i for i, job in enumerate(jobs)}
    return sorted(summaries, key=lambda s: order[s["run_dir"]])


def _gather(summaries: list[dict[str, Any]], name: str) -> pd.DataFrame:
    frames = []
    for s in summaries:
        df = pd.read_parquet(Path(s["run_dir"]) / name)
        label = s["policy"] if s["rate_scale"] == 1.0 else f"{s['policy']} x{s['rate_scale']:g}"
        frames.append(df.assign(trace=s["trace"], policy=s["policy"], label=label))
    return pd.concat(frames, ignore_index=True)


def write_comparison(summaries: list[dict[str, Any]], out_dir: Path) -> pd.DataFrame:
    """Write ``summary.csv``, ``summary.json`` and the plots; return the summary table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(summaries)
    table.to_csv(out_dir / "summary.csv", index=False)
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()} for s in summaries]
    (out_dir / "summary.json").write_text(json.dumps(clean, indent=2) + "\n")
    # Per-request and per-step plots show one load level (the one nearest the trace's own rate).
    nearest = min({s["rate_scale"] for s in summaries}, key=lambda x: abs(math.log(x)))
    at_load = [s for s in summaries if s["rate_scale"] == nearest]
    plots.latency_cdfs(_gather(at_load, "requests.parquet"), out_dir / "latency_cdf.png")
    plots.kv_utilisation(_gather(at_load, "steps.parquet"), out_dir / "kv_util.png")
    plots.throughput_vs_load(table, out_dir / "throughput_vs_load.png")
    return table


def compare(base: SimJob, traces: Sequence[str], policies: Sequence[str], rate_scales: Sequence[float],
            out_dir: str | Path, workers: int | None = None) -> pd.DataFrame:
    """Run a sweep and write its table and plots.

    Args:
        base: settings shared by every run (deployment, scheduler, SLO).
        traces: trace specs.
        policies: policy specs.
        rate_scales: arrival-rate multipliers (load levels).
        out_dir: output folder.
        workers: parallel processes (default: the CPU count).

    Returns:
        One summary row per run.
    """
    out = Path(out_dir)
    jobs = plan_jobs(base, traces, policies, rate_scales, out)
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    return write_comparison(run_jobs(jobs, workers), out)
