"""Simulator speed: 10,000 chat-like requests, continuous batching, Llama-3.2-1B on H100.

Run on one core:  taskset -c 0 python -m benchmarks.bench_sim [--n 10000] [--repeat 3] [--profile FILE]
[--decode-runs false] (book every step on its own: the A/B of ``sim.decode_run``)
Prints wall and CPU time (trace generation excluded; the run and the metrics
included), requests per wall-second and simulated seconds per wall-second, per
trace. CPU time is the figure to trust on a shared machine.
"""

from __future__ import annotations

import argparse
import time

from policies.batching import make_policy
from policies.scheduler import SchedulerConfig
from sim.config import SimConfig
from sim.simulator import simulate
from traces import load_trace

TRACES = {
    "synthetic chat (Poisson 20 req/s)": "synthetic:poisson,rate=20,n={n},seed=0",
    "Azure conv 2023 (real arrivals)": "../shared/traces/azure_llm_inference_2023_conv.csv:n={n}",
    "Azure conv 2023 (4x rate)": "../shared/traces/azure_llm_inference_2023_conv.csv:n={n},rate_scale=4",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cost-model", default="calibrated", choices=["calibrated", "roofline"])
    parser.add_argument("--profile", default=None, help="profile file (default: the shipped H100 one)")
    parser.add_argument("--decode-runs", default="true", choices=["true", "false"],
                        help="book stretches of repeated decode steps at once (sim.decode_run; same results)")
    args = parser.parse_args()
    sim_cfg = SimConfig(model="llama-3.2-1b", gpu="h100", cost_model=args.cost_model, profile=args.profile)
    sched_cfg = SchedulerConfig(num_gpu_blocks=sim_cfg.kv_blocks(16), block_size=16)
    cost = sim_cfg.build_cost_model(16)
    print(f"| trace | requests | steps | wall s (best of {args.repeat}) | CPU s | requests/s | sim-s per wall-s |")
    print("|---|---|---|---|---|---|---|")
    for name, spec in TRACES.items():
        requests = load_trace(spec.format(n=args.n))
        best, cpu, summary = float("inf"), float("inf"), {}
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            summary = simulate(requests, make_policy("continuous"), sched_cfg, cost,
                               decode_runs=args.decode_runs == "true").summary
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        sim_s = summary["makespan_s"]
        print(f"| {name} | {summary['num_finished']} | {summary['num_steps']} | {best:.2f} | {cpu:.2f} | "
              f"{args.n / best:,.0f} | {sim_s / best:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
