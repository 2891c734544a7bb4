"""Run 4: the simulator side again on a CPU, counting draft context as the engine of run 4 read it.

    python results/sim_vs_real_spec/run4/resim.py     (from the repository root; about 20 s)

Run 4's engine attended each decode's verification rows in pieces of 4 (``EngineConfig.verify_group_rows``
by default), but its scheduler still counted ``draft_ctx_tokens`` as if every draft row read its own
context, and the calibration fitted ``draft_attention`` on that count. Three pricings of the same real
runs: ``as run`` (the profile as calibrated), ``per-row refit`` (refitted, the same count) and
``grouped refit`` (the calibration samples' draft context recounted with ``speculation.group_reads`` at
4 rows, refitted, and the simulation run with ``SchedulerConfig.verify_group_rows=4``, as
``servegym calibrate`` / ``validate`` do since). Writes ``resim_errors.csv``.
"""

import copy
import json
from pathlib import Path

import pandas as pd

from experiments.engine_run import load_requests
from experiments.profile_fit import VerifySample, fit_verify
from experiments.validate import _alpha
from policies.metrics import SLO
from policies.scheduler import SchedulerConfig
from policies.spec import parse_policy, parse_speculation
from policies.speculation import group_reads
from sim.acceptance import GeometricAcceptance
from sim.cost_model import CalibratedCostModel
from sim.simulator import simulate

HERE = Path(__file__).resolve().parent
LENGTHS = "in=lognormal:1155:0.96:6144,out=lognormal:211:0.77:1024"
AZURE = "../shared/traces/azure_llm_inference_2023_conv.csv:n=150,rate_scale=6,max_in=6144,max_out=1024"
RUNS = {"spec_fixed": "fixed:num_draft_tokens=4", "spec_adaptive": "adaptive:num_draft_tokens=6"}
METRICS = ("throughput_output_tok_s", "ttft_mean_s", "tpot_mean_s", "e2e_mean_s", "tpot_p99_s")

profile = json.loads((HERE / "profile_1b_h200.json").read_text())
plain = copy.deepcopy(profile)
plain.pop("speculative_overhead_s")
plain["tables"].pop("draft_attention")
base = CalibratedCostModel(plain)
most = max(profile["graph_batch_sizes"])


def refit(rows: int) -> CalibratedCostModel:
    samples = []
    for v in map(lambda d: VerifySample(**d), profile["meta"]["verify_samples"]):
        if v.rows <= most:
            per_seq = round(v.ctx_tokens / v.batch)  # the decodes' own context, the same for each
            samples.append(VerifySample(v.batch, v.drafts, v.ctx_tokens, v.batch * group_reads(per_seq, v.drafts, rows),
                                        v.time_s))
    (xs, ys), overhead = fit_verify(samples, lambda v: base.shape_time(0, 0, v.rows, v.ctx_tokens, 0))
    fitted = copy.deepcopy(plain)
    fitted["tables"]["draft_attention"] = {"x": xs, "time_s": ys}
    fitted["speculative_overhead_s"] = overhead
    fitted["verify_group_rows"] = rows
    return CalibratedCostModel(fitted)


pricings = {"as run": (CalibratedCostModel(profile), 1), "per-row refit": (refit(1), 1), "grouped refit": (refit(4), 4)}
errors = []
for name, spec in RUNS.items():
    real = pd.read_csv(HERE / f"summaries_{name}.csv")
    for _, r in real[real["world"] == "real"].iterrows():
        short = r["trace"][:7]
        trace = f"synthetic:poisson,rate=26.0,n=300,seed=3,{LENGTHS}" if short == "poisson" else AZURE
        _, reqs = load_requests(trace, 128256, 8192)
        for pricing, (cost, rows) in pricings.items():
            cfg = SchedulerConfig(num_gpu_blocks=int(r["num_gpu_blocks"]), block_size=16, verify_group_rows=rows)
            sim = simulate(reqs, parse_policy("continuous"), cfg, cost, SLO(), speculation=parse_speculation(spec),
                           acceptance=GeometricAcceptance(_alpha(r.to_dict()))).summary
            for m in METRICS:
                errors.append({"spec": name, "trace": short, "pricing": pricing, "metric": m, "sim": sim[m],
                               "real": r[m], "rel_error": (sim[m] - r[m]) / r[m]})
err = pd.DataFrame(errors)
err.to_csv(HERE / "resim_errors.csv", index=False)
with pd.option_context("display.width", 200, "display.max_columns", 20):
    print(err.pivot_table(index=["spec", "trace", "pricing"], columns="metric", values="rel_error",
                          sort=False).mul(100).round(1))
