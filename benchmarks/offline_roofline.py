"""Roofline floor of the engine benchmark's offline workload, from the simulator (CPU).

    python -m benchmarks.offline_roofline

The same 256 requests as ``benchmarks/bench_engine.py`` (seeded, prompt and output
lengths uniform in [100, 1024], all arriving at t=0), scheduled by the same
continuous policy (token budget 16384, 256 sequences), each step priced by the
roofline cost model with no overhead: the highest output throughput the
hardware allows for this schedule.
"""

from __future__ import annotations

from benchmarks.engine_setup import TOKEN_BUDGET, offline_requests
from policies.batching import make_policy
from policies.scheduler import SchedulerConfig
from sim.cost_model import RooflineCostModel
from sim.simulator import simulate


def main() -> None:
    print("| model | GPU | output tokens | roofline makespan s | roofline floor out tok/s |")
    print("|---|---|---|---|---|")
    for model in ("llama-3.2-1b", "llama-3.2-3b"):
        requests = offline_requests(256, 128256)
        policy = make_policy("continuous", max_num_seqs=256, token_budget=TOKEN_BUDGET)
        res = simulate(requests, policy, SchedulerConfig(num_gpu_blocks=100_000), RooflineCostModel(model, "h100"))
        s = res.summary
        out = int(res.requests["output_len"].sum())
        print(f"| {model} | h100 | {out} | {s['makespan_s']:.2f} | {s['throughput_output_tok_s']:,.0f} |")


if __name__ == "__main__":
    main()
