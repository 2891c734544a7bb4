"""Re-run the simulator side of the H200 speculation validation with the current cost model."""
import pandas as pd
from experiments.engine_run import load_requests
from experiments.validate import _alpha
from policies.metrics import SLO
from policies.scheduler import SchedulerConfig
from policies.spec import parse_policy, parse_speculation
from sim.acceptance import GeometricAcceptance
from sim.cost_model import CalibratedCostModel
from sim.simulator import simulate

TRACES = ["synthetic:poisson,rate=26.9,n=300,seed=3,in=lognormal:1155:0.96:6144,out=lognormal:211:0.77:1024",
          "../shared/traces/azure_llm_inference_2023_conv.csv:n=150,rate_scale=6,max_in=6144,max_out=1024"]
cost = CalibratedCostModel.from_file("results/sim_vs_real_spec/run1/profile_1b_h200.json", 16)
cfg = SchedulerConfig(num_gpu_blocks=249136, block_size=16)
rows = []
for name, spec in (("plain", None), ("spec_fixed", "fixed:num_draft_tokens=4"),
                   ("spec_adaptive", "adaptive:num_draft_tokens=6")):
    real = pd.read_csv(f"results/sim_vs_real_spec/run1/summaries_{name}.csv")
    real = real[real["world"] == "real"]
    for trace, (_, r) in zip(TRACES, real.iterrows()):
        _, reqs = load_requests(trace, 128256, 8192)
        sp = parse_speculation(spec)
        acc = GeometricAcceptance(_alpha(r.to_dict())) if sp is not None else None
        s = simulate(reqs, parse_policy("continuous"), cfg, cost, SLO(), speculation=sp, acceptance=acc).summary
        for m in ("throughput_output_tok_s", "ttft_mean_s", "tpot_mean_s", "e2e_mean_s", "tpot_p99_s"):
            rows.append({"run": name, "trace": r["trace"][:14], "metric": m, "sim": s[m], "real": r[m],
                         "rel_error": (s[m] - r[m]) / r[m]})
df = pd.DataFrame(rows)
print(df.pivot_table(index=["run", "trace"], columns="metric", values="rel_error", sort=False).mul(100).round(1))
df.to_csv("results/sim_vs_real_spec/run1/resim_errors.csv", index=False)
