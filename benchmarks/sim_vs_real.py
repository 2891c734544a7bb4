"""Sim-vs-real in one GPU call: build a checkpoint, calibrate the simulator, validate policies on traces.

    python -m benchmarks.sim_vs_real --out DIR [--trace-dir ../shared/traces] [--n 300]

(With the device tool, write DIR outside ``$OUT`` and tar it into one file under ``$OUT``: the per-run
folders ``validate/<trace>/<policy>/{real,sim}`` do not come back one by one.)

Steps, each a ``servegym`` command printed and appended to ``DIR/commands.txt``:

1. ``random-checkpoint``: Llama-3.2-1B shapes, random bf16 weights (skipped if the folder exists);
2. ``calibrate``: the measured profile ``DIR/profile_1b.json`` (``--profile FILE``: a copy of an earlier one);
3. the load of the synthetic traces, from the simulator with that profile: the output-token
   capacity of continuous batching on a burst of the same chat-like lengths (all requests at
   once), turned into requests/s. Poisson runs at ``--poisson-load`` of it ("near saturation"),
   the bursty gamma trace (cv 3) at ``--gamma-load``;
4. ``validate``: static, dynamic, continuous and prefix-aware on the two synthetic traces and on
   time-scaled slices of the Azure conversation and Mooncake traces (Mooncake prompts scaled by
   ``len_scale`` so a replay takes seconds; both real traces' arrivals sped up by ``rate_scale``).

``--suite preemption`` replaces step 4 with three validations in ``DIR/validate_*``: ``repeat`` (the
Poisson trace with continuous batching twice and prefix-aware: the engine's own run-to-run spread
beside the simulator's error), ``kv1500`` (the two real-trace slices, all four policies, a KV pool of
1500 blocks of 16 tokens: preemptions and prefix-cache evictions) and ``kv8000`` (the Poisson trace,
continuous and prefix-aware, 8000 blocks).

``--suite speculation`` replaces step 4 with continuous batching on a light Poisson trace
(``--spec-load`` of the capacity) and the Azure slice, three times: without speculation
(``validate_plain``), with n-gram drafts under ``fixed:num_draft_tokens=4`` (``validate_spec_fixed``)
and under ``adaptive:num_draft_tokens=6`` (``validate_spec_adaptive``); the simulator of each
speculative run draws acceptances at the per-token rate its replay measured. The calibration of that
suite runs with the n-gram proposer, so the profile also prices verification steps
(``draft_attention``, ``speculative_overhead_s``).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHAT_IN, CHAT_OUT = "lognormal:1155:0.96:6144", "lognormal:211:0.77:1024"
POLICIES = ("static", "dynamic", "continuous", "prefix-aware")
MAX_MODEL_LEN = 8192


def run(cmd: list[str], log: Path, check: bool = True) -> bool:
    """Run one command, echoing it and recording it in ``log``; raises on failure when ``check``."""
    line = shlex.join(cmd)
    print(f"$ {line}", flush=True)
    with log.open("a") as f:
        f.write(line + "\n")
    t0 = time.perf_counter()
    ok = subprocess.run(cmd, check=check).returncode == 0
    print(f"  ({time.perf_counter() - t0:.0f} s{'' if ok else ', FAILED'})", flush=True)
    return ok


def capacity_req_s(profile: Path, n: int) -> float:
    """Requests/s continuous batching sustains on the chat lengths, per the calibrated simulator."""
    from policies.batching import ContinuousBatching
    from policies.scheduler import SchedulerConfig
    from sim.cost_model import CalibratedCostModel
    from sim.simulator import simulate
    from traces import load_trace, parse_trace_spec

    reqs = load_trace(parse_trace_spec(f"synthetic:poisson,rate=1e6,n={n},seed=7,in={CHAT_IN},out={CHAT_OUT}"))
    cost = CalibratedCostModel.from_file(profile, 16)
    res = simulate(reqs, ContinuousBatching(), SchedulerConfig(num_gpu_blocks=200_000, block_size=16), cost)
    mean_out = sum(r.output_len for r in reqs) / len(reqs)
    return res.summary["throughput_output_tok_s"] / mean_out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model-config", default="sim/models/llama-3.2-1b.json")
    p.add_argument("--model-dir", default="/tmp/llama-3.2-1b-random", help="where the random checkpoint goes")
    p.add_argument("--model-config-3b", default="sim/models/llama-3.2-3b.json")
    p.add_argument("--model-dir-3b", default="/tmp/llama-3.2-3b-random", help="3B checkpoint (--extra-profiles)")
    p.add_argument("--trace-dir", default="../shared/traces")
    p.add_argument("--n", type=int, default=600, help="requests per synthetic trace")
    p.add_argument("--n-real", type=int, default=150, help="requests per real-trace slice")
    p.add_argument("--poisson-load", type=float, default=0.9)
    p.add_argument("--gamma-load", type=float, default=0.7)
    p.add_argument("--policies", nargs="+", default=list(POLICIES))
    p.add_argument("--calibrate-args", default="", help="extra calibrate flags, e.g. '--quick'")
    p.add_argument("--profile", type=Path, default=None,
                   help="an earlier run's profile_1b.json: copied to DIR and used instead of calibrating (the "
                        "synthetic traces' rates follow from it, so a repeat gets the earlier run's traces)")
    p.add_argument("--engine-args", default="",
                   help="engine flags for both calibrate and validate, e.g. '--decode-lookahead true'")
    p.add_argument("--spec-load", type=float, default=0.3, help="Poisson load of --suite speculation")
    p.add_argument("--suite", choices=("main", "preemption", "speculation", "none"), default="main",
                   help="main: 4 traces x the policies; preemption: repeat runs and small KV pools; speculation: "
                        "n-gram speculative decoding against plain decoding; none: no validation (calibration "
                        "only, e.g. with --extra-profiles)")
    p.add_argument("--extra-profiles", action="store_true",
                   help="after the validation, also calibrate 1B with INT4 weights, 1B with FP8 KV and 3B (bf16)")
    args = p.parse_args()
    if args.profile is not None and not args.profile.is_file():  # before any GPU work
        p.error(f"--profile {args.profile} is not a file")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.txt"
    sg = [sys.executable, "-m", "experiments.cli"]
    model = Path(args.model_dir)
    if not (model / "config.json").is_file():
        run(sg + ["random-checkpoint", "--config", args.model_config, "--out", str(model), "--dtype", "bf16",
                  "--device", "cuda"], log)
    profile = out / "profile_1b.json"
    calibrate = sg + ["calibrate", "--max-model-len", str(MAX_MODEL_LEN), "--max-num-batched-tokens", "65536",
                      "--quiet", *shlex.split(args.engine_args), *shlex.split(args.calibrate_args)]
    spec_cal = ["--speculative-method", "ngram"] if args.suite == "speculation" else []
    if args.profile is not None:
        shutil.copyfile(args.profile, profile)
        with log.open("a") as f:
            f.write(f"# profile copied from {args.profile}\n")
    else:
        run(calibrate + [*spec_cal, "--model", str(model), "--out", str(profile), "--model-name",
                         Path(args.model_config).stem], log)
    cap = capacity_req_s(profile, 2000)
    print(f"simulated continuous-batching capacity on the chat lengths: {cap:.1f} req/s", flush=True)
    with log.open("a") as f:
        f.write(f"# simulated capacity {cap:.2f} req/s -> poisson x{args.poisson_load}, gamma x{args.gamma_load}\n")
    lengths = f"in={CHAT_IN},out={CHAT_OUT}"
    td = Path(args.trace_dir)
    poisson = f"synthetic:poisson,rate={args.poisson_load * cap:.1f},n={args.n},seed=1,{lengths}"
    gamma = f"synthetic:gamma,rate={args.gamma_load * cap:.1f},cv=3,n={args.n},seed=2,{lengths}"
    azure = f"{td / 'azure_llm_inference_2023_conv.csv'}:n={args.n_real},rate_scale=6,max_in=6144,max_out=1024"
    mooncake = (f"{td / 'mooncake_conversation_trace.jsonl'}:n={args.n_real},len_scale=0.25,rate_scale=6,"
                "max_in=6144,max_out=1024")
    validate = sg + ["validate", "--model", str(model), "--profile", str(profile), "--max-model-len",
                     str(MAX_MODEL_LEN), "--quiet", *shlex.split(args.engine_args)]
    if args.suite == "main":
        run(validate + ["--out", str(out / "validate"), "--traces", poisson, gamma, azure, mooncake,
                        "--policies", *args.policies], log)
    elif args.suite == "preemption":
        run(validate + ["--out", str(out / "validate_repeat"), "--traces", poisson,
                        "--policies", "continuous", "prefix-aware", "continuous"], log)
        run(validate + ["--out", str(out / "validate_kv1500"), "--num-gpu-blocks", "1500",
                        "--traces", azure, mooncake, "--policies", *args.policies], log)
        run(validate + ["--out", str(out / "validate_kv8000"), "--num-gpu-blocks", "8000",
                        "--traces", poisson, "--policies", "continuous", "prefix-aware"], log)
    elif args.suite == "speculation":
        light = f"synthetic:poisson,rate={args.spec_load * cap:.1f},n={args.n},seed=3,{lengths}"
        for name, flags in (("plain", []),
                            ("spec_fixed", ["--speculation", "fixed:num_draft_tokens=4"]),
                            ("spec_adaptive", ["--speculation", "adaptive:num_draft_tokens=6"])):
            spec = ["--speculative-method", "ngram"] if flags else []
            run(validate + ["--out", str(out / f"validate_{name}"), "--traces", light, azure,
                            "--policies", "continuous", *flags, *spec], log, check=False)
    if args.extra_profiles:
        for suffix, flags in (("int4", ["--quantization", "int4"]), ("fp8kv", ["--kv-cache-dtype", "fp8"])):
            run(calibrate + ["--model", str(model), "--out", str(out / f"profile_1b_{suffix}.json"),
                             "--model-name", Path(args.model_config).stem, *flags], log, check=False)
        big = Path(args.model_dir_3b)
        if (big / "config.json").is_file() or run(
                sg + ["random-checkpoint", "--config", args.model_config_3b, "--out", str(big),
                      "--dtype", "bf16", "--device", "cuda"], log, check=False):
            run(calibrate + ["--model", str(big), "--out", str(out / "profile_3b.json"), "--model-name",
                             Path(args.model_config_3b).stem], log, check=False)


if __name__ == "__main__":
    main()
