"""Run 9 again on the simulator side (a CPU, ~1 min): the profile as calibrated, and with a host tail.

    PYTHONPATH=. python results/sim_vs_real_h200/run9/resim_tail.py     (from the repository root)

Run 9's replays log a step as over when its tokens are out; the scheduler's bookkeeping after it
(``Scheduler.postprocess``: committing the blocks a prompt filled, booking tokens) runs before the
next step, and the calibration's loop periods include it. Its calibration predates the profile's
``host_tail_s``, so the tail here is estimated from run 9's own real step logs: the gap between one
step's end and the next one's start, least squares over every busy step of the 16 replays (gaps over
50 ms, waits for arrivals, left out), non-negative: 9.5 us + 70.2 ns per prefill token + 1.50 us per
decode row. This is an estimate from the replays themselves, to see what the tail changes; a new
``servegym calibrate`` measures it from its own steps. Writes ``resim_tail_errors.csv``.
"""

import copy
import json
from pathlib import Path

import pandas as pd

from experiments.engine_run import load_requests
from policies.metrics import SLO
from policies.scheduler import SchedulerConfig
from policies.spec import parse_policy
from sim.cost_model import CalibratedCostModel
from sim.simulator import simulate

HERE = Path(__file__).resolve().parent
LENGTHS = "in=lognormal:1155:0.96:6144,out=lognormal:211:0.77:1024"
SHARED = Path("../shared/traces")
TRACES = {
    "poisson-r81.9": f"synthetic:poisson,rate=81.9,n=600,seed=1,{LENGTHS}",
    "gamma-r63.7-cv3": f"synthetic:gamma,rate=63.7,cv=3,n=600,seed=2,{LENGTHS}",
    "azure": f"{SHARED / 'azure_llm_inference_2023_conv.csv'}:n=150,rate_scale=6,max_in=6144,max_out=1024",
    "mooncake": f"{SHARED / 'mooncake_conversation_trace.jsonl'}:n=150,len_scale=0.25,rate_scale=6,max_in=6144,"
                "max_out=1024",
}
TAIL = {"step": 9.5e-6, "per_prefill_token": 7.02e-8, "per_decode": 1.50e-6}
METRICS = ("throughput_output_tok_s", "ttft_mean_s", "ttft_p99_s", "tpot_mean_s", "tpot_p99_s", "e2e_mean_s")

profile = json.loads((HERE / "profile_1b.json").read_text())
pricings = {"as calibrated": CalibratedCostModel(profile),
            "with host tail": CalibratedCostModel(copy.deepcopy(profile) | {"host_tail_s": TAIL})}
real = pd.read_csv(HERE / "summaries.csv")
real = real[real["world"] == "real"]
rows = []
for short, trace in TRACES.items():
    _, reqs = load_requests(trace, 128256, 8192)
    for _, r in real[real["trace"].str.startswith(short[:7])].iterrows():
        cfg = SchedulerConfig(num_gpu_blocks=int(r["num_gpu_blocks"]), block_size=16)
        for pricing, cost in pricings.items():
            sim = simulate(reqs, parse_policy(r["policy"]), cfg, cost, SLO()).summary
            for m in METRICS:
                rows.append({"trace": short, "policy": r["policy"], "pricing": pricing, "metric": m, "sim": sim[m],
                             "real": r[m], "rel_error": (sim[m] - r[m]) / r[m]})
err = pd.DataFrame(rows)
err.to_csv(HERE / "resim_tail_errors.csv", index=False)
with pd.option_context("display.width", 200, "display.max_columns", 20):
    print(err.pivot_table(index=["trace", "policy", "pricing"], columns="metric", values="rel_error",
                          sort=False).mul(100).round(1))
