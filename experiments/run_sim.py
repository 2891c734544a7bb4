"""One simulation job: a trace, a policy and a deployment, to result files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.metrics import SLO, write_results
from policies.scheduler import SchedulerConfig
from policies.spec import parse_policy, parse_speculation
from policies.types import Request
from sim.config import SimConfig
from sim.simulator import simulate
from traces import load_trace, parse_trace_spec


@dataclass(frozen=True)
class SimJob:
    """Everything one simulation needs (picklable, for worker processes).

    Args:
        trace: a trace spec (file path or ``synthetic:...``).
        policy: a policy spec (``name[:key=value,...]``).
        sim: the simulated deployment.
        scheduler: KV and preemption settings.
        slo: goodput objectives.
        rate_scale: multiply the trace's arrival rate (load sweeps).
        out_dir: where the result files go (None: write nothing).
        speculation: a speculation policy spec (``name[:key=value,...]``; None: no speculative decoding).
    """

    trace: str
    policy: str
    sim: SimConfig
    scheduler: SchedulerConfig
    slo: SLO = SLO()
    rate_scale: float = 1.0
    out_dir: str | None = None
    speculation: str | None = None

    def __post_init__(self) -> None:
        if not self.rate_scale > 0:
            raise ValueError(f"rate_scale must be > 0, got {self.rate_scale}")
        parse_speculation(self.speculation)  # a bad spec fails here, before any worker starts


def scale_rate(requests: list[Request], scale: float) -> list[Request]:
    """The same requests arriving ``scale`` times as fast."""
    if scale == 1.0:
        return requests
    return [dataclasses.replace(r, arrival_s=r.arrival_s / scale) for r in requests]


def run_job(job: SimJob, progress: bool = False) -> dict[str, Any]:
    """Run one simulation and write its files.

    Returns:
        The summary, with the job's labels (trace, policy, rate_scale, offered_rate_req_s).
    """
    spec = parse_trace_spec(job.trace)
    requests = scale_rate(load_trace(spec), job.rate_scale)
    policy = parse_policy(job.policy)
    speculation = parse_speculation(job.speculation)
    cost = job.sim.build_cost_model(job.scheduler.block_size)
    acceptance = job.sim.build_acceptance() if speculation is not None else None
    result = simulate(requests, policy, job.scheduler, cost, job.slo, progress=progress, speculation=speculation,
                      acceptance=acceptance)
    span = requests[-1].arrival_s - requests[0].arrival_s if len(requests) > 1 else 0.0
    summary = {
        "trace": spec.label,
        "policy": job.policy,
        "speculation": job.speculation,
        "rate_scale": job.rate_scale,
        "offered_rate_req_s": (len(requests) - 1) / span if span > 0 else float("nan"),
        "model": job.sim.model,
        "gpu": job.sim.gpu,
        "cost_model": job.sim.cost_model,
        "num_gpu_blocks": job.scheduler.num_gpu_blocks,
        **result.summary,
    }
    if job.out_dir is not None:
        write_results(Path(job.out_dir), result.requests, result.steps, summary)
    return summary
