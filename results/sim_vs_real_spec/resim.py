"""Runs 2 and 3: the simulator side again on a CPU, with two pricings of verification steps.

    python results/sim_vs_real_spec/resim.py     (from the repository root; about a minute)

``per-row``: the profile without ``draft_attention`` / ``speculative_overhead_s`` (every draft row
costs a decode row of its own context, the pricing before calibrated verification steps).
``calibrated``: those fields as ``servegym calibrate`` fits them today, from the verification shapes
the profile records (run 2's call still timed one 336-row shape beyond the largest decode graph; the
current fit leaves such shapes out, so it is refitted here without it; run 3's profile is used as is).
Writes ``resim_errors.csv`` (end-to-end errors of each re-simulation against the real replay) and
``resim_steps.csv`` (every real step priced from its logged shape, summed per kind of step).
"""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.engine_run import load_requests
from experiments.profile_fit import VerifySample, fit_verify
from experiments.validate import _alpha
from policies.metrics import SLO
from policies.scheduler import SchedulerConfig
from policies.spec import parse_policy, parse_speculation
from sim.acceptance import GeometricAcceptance
from sim.cost_model import CalibratedCostModel
from sim.simulator import simulate

HERE = Path(__file__).resolve().parent
LENGTHS = "in=lognormal:1155:0.96:6144,out=lognormal:211:0.77:1024"
AZURE = "../shared/traces/azure_llm_inference_2023_conv.csv:n=150,rate_scale=6,max_in=6144,max_out=1024"
RUNS = {"spec_fixed": "fixed:num_draft_tokens=4", "spec_adaptive": "adaptive:num_draft_tokens=6"}
METRICS = ("throughput_output_tok_s", "ttft_mean_s", "tpot_mean_s", "e2e_mean_s", "tpot_p99_s")


def models(profile: dict) -> dict[str, CalibratedCostModel]:
    plain = copy.deepcopy(profile)
    plain.pop("speculative_overhead_s", None)
    plain["tables"].pop("draft_attention", None)
    base = CalibratedCostModel(plain)
    most = max(profile["graph_batch_sizes"])
    samples = [v for v in map(lambda d: VerifySample(**d), profile["meta"]["verify_samples"]) if v.rows <= most]
    (xs, ys), overhead = fit_verify(samples, lambda v: base.shape_time(0, 0, v.rows, v.ctx_tokens, 0))
    fitted = copy.deepcopy(plain)
    fitted["tables"]["draft_attention"] = {"x": xs, "time_s": ys}
    fitted["speculative_overhead_s"] = overhead
    return {"per-row": base, "calibrated": CalibratedCostModel(fitted)}


def priced(steps: pd.DataFrame, cost: CalibratedCostModel) -> np.ndarray:
    return np.array([cost.shape_time(p, n, d + k, c, a, 0, k, y) for p, n, d, c, a, k, y in zip(
        steps.prefill_tokens, steps.prefills, steps.decodes, steps.decode_ctx_tokens, steps.prefill_attn_pairs,
        steps.draft_tokens, steps.draft_ctx_tokens, strict=True)])


errors, sums = [], []
for run in ("run2", "run3"):
    profile = json.loads((HERE / run / "profile_1b_h200.json").read_text())
    costs = models(profile)
    for name, spec in RUNS.items():
        real = pd.read_csv(HERE / run / f"summaries_{name}.csv")
        real = real[real["world"] == "real"]
        for _, r in real.iterrows():
            short = r["trace"][:7]
            trace = (f"synthetic:poisson,rate={r['trace'].split('-r')[1]},n=300,seed=3,{LENGTHS}"
                     if short == "poisson" else AZURE)
            _, reqs = load_requests(trace, 128256, 8192)
            steps = pd.read_parquet(HERE / run / f"steps_{name}_{short}.parquet")
            steps = steps[(steps.prefill_tokens + steps.decodes) > 0]
            kind = np.where(steps.prefill_tokens > 0, "prefill", np.where(steps.draft_tokens > 0, "verify", "plain"))
            for model, cost in costs.items():
                cfg = SchedulerConfig(num_gpu_blocks=int(r["num_gpu_blocks"]), block_size=16)
                sim = simulate(reqs, parse_policy("continuous"), cfg, cost, SLO(), speculation=parse_speculation(spec),
                               acceptance=GeometricAcceptance(_alpha(r.to_dict()))).summary
                for m in METRICS:
                    errors.append({"run": run, "spec": name, "trace": short, "pricing": model, "metric": m,
                                   "sim": sim[m], "real": r[m], "rel_error": (sim[m] - r[m]) / r[m]})
                pred = priced(steps, cost)
                for k in ("plain", "verify", "prefill", "all"):
                    mask = np.ones(len(steps), bool) if k == "all" else kind == k
                    if mask.any():
                        real_s, sim_s = float(steps.duration_s[mask].sum()), float(pred[mask].sum())
                        sums.append({"run": run, "spec": name, "trace": short, "pricing": model, "kind": k,
                                     "steps": int(mask.sum()), "real_s": real_s, "sim_s": sim_s,
                                     "rel_error": (sim_s - real_s) / real_s})
err, st = pd.DataFrame(errors), pd.DataFrame(sums)
err.to_csv(HERE / "resim_errors.csv", index=False)
st.to_csv(HERE / "resim_steps.csv", index=False)
with pd.option_context("display.width", 200, "display.max_columns", 20):
    print(err.pivot_table(index=["run", "spec", "trace", "pricing"], columns="metric", values="rel_error",
                          sort=False).mul(100).round(1))
    print(st[st.kind.isin(["verify", "all"])].pivot_table(index=["run", "spec", "trace", "pricing"], columns="kind",
                                                          values="rel_error", sort=False).mul(100).round(1))
