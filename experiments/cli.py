"""The ``servegym`` command line.

    servegym sim --trace TRACE --policy continuous --model llama-3.2-1b --gpu h100 --out DIR
    servegym compare [--traces T1 T2] [--policies P1 P2] [--rate-scales 0.5 1 2] --out DIR
    servegym roofline --model llama-3.2-1b --gpu h100 [--batch 1 --context 1024 --out DIR]
    servegym replay --trace TRACE --policy continuous --model MODEL_DIR --out DIR [engine flags]
    servegym random-checkpoint --config sim/models/llama-3.2-1b.json --out MODEL_DIR [--device cuda]
    servegym calibrate --model MODEL_DIR --out PROFILE.json [--quick] [engine flags]
    servegym validate --traces T1 T2 --policies P1 P2 --model MODEL_DIR --profile PROFILE.json --out DIR
    servegym refit --profile PROFILE.json --out NEW.json
    servegym serve --model MODEL_DIR [--host H --port P --served-model-name NAME --tokenizer auto|llama3|PATH]

TRACE is a file (Azure, BurstGPT or Mooncake format, detected from the file,
optionally followed by ``:n=1000,rate_scale=2,...``) or a synthetic spec such
as ``synthetic:poisson,rate=20,n=10000,seed=0``; a policy is
``name[:key=value,...]``, e.g. ``continuous:max_num_seqs=128,token_budget=4096``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import pandas as pd

from experiments.cli_args import add_dataclass_args, add_speculation_arg, from_args
from experiments.run_sim import SimJob, run_job
from policies.metrics import SLO
from policies.scheduler import SchedulerConfig
from sim.config import SimConfig

DEFAULT_TRACES = (
    "synthetic:poisson,rate=40,n=2000,seed=0",
    "synthetic:gamma,rate=40,cv=4,n=2000,seed=1",
    "synthetic:poisson,rate=40,n=2000,seed=2,workload=shared_prefix,groups=8,prefix_len=1024",
)
DEFAULT_POLICIES = ("static", "dynamic", "continuous", "prefix-aware")


def _add_deployment_args(p: argparse.ArgumentParser) -> None:
    add_speculation_arg(p, engine=False)
    add_dataclass_args(p, SimConfig, title="simulated deployment")
    add_dataclass_args(p, SchedulerConfig, skip=("num_gpu_blocks",), title="KV cache and preemption")
    add_dataclass_args(p, SLO, prefix="slo_", title="goodput objectives")


def _base_job(ns: argparse.Namespace, trace: str = "", policy: str = "continuous") -> SimJob:
    sim = from_args(SimConfig, ns)
    block_size = from_args(SchedulerConfig, ns, num_gpu_blocks=1).block_size
    sched = from_args(SchedulerConfig, ns, num_gpu_blocks=sim.kv_blocks(block_size))
    return SimJob(trace=trace, policy=policy, sim=sim, scheduler=sched, slo=from_args(SLO, ns, prefix="slo_"),
                  speculation=ns.speculation)


def cmd_sim(ns: argparse.Namespace) -> int:
    job = _base_job(ns, ns.trace, ns.policy)
    from dataclasses import replace

    summary = run_job(replace(job, out_dir=ns.out), progress=not ns.quiet)
    keys = ["num_requests", "throughput_output_tok_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
            "e2e_p50_s", "e2e_p99_s", "preemptions", "prefix_cache_hit_rate", "kv_util_mean", "wall_s"]
    if ns.speculation:
        keys += ["spec_acceptance_rate", "spec_alpha"]
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    print(f"wrote {ns.out}/requests.parquet, steps.parquet, summary.json")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from experiments.compare import TABLE_COLUMNS, compare

    table = compare(_base_job(ns), ns.traces, ns.policies, ns.rate_scales, ns.out, ns.workers)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(table[[c for c in TABLE_COLUMNS if c in table]].to_string(index=False))
    print(f"wrote {ns.out}/summary.csv, latency_cdf.png, throughput_vs_load.png, kv_util.png, runs/")
    return 0


def _add_engine_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands that run the real engine (torch is imported only when one of them runs)."""
    from experiments.calibrate import add_calibrate_args, cmd_calibrate
    from experiments.engine_run import add_engine_args, cmd_replay
    from experiments.random_checkpoint import add_random_checkpoint_args, cmd_random_checkpoint
    from experiments.serve import add_serve_args, cmd_serve
    from experiments.validate import add_validate_args, cmd_validate

    p = sub.add_parser("replay", help="replay one trace under one policy on the real engine")
    p.add_argument("--trace", required=True, help="trace file or synthetic spec")
    p.add_argument("--policy", default="continuous", help="policy spec name[:key=value,...]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_args(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("random-checkpoint", help="write a random-weight Llama checkpoint (HF layout)")
    add_random_checkpoint_args(p)
    p.set_defaults(func=cmd_random_checkpoint)

    p = sub.add_parser("calibrate", help="time the engine's steps and write a measured profile")
    add_calibrate_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("validate", help="replay and simulate traces x policies; sim-vs-real errors and plots")
    add_validate_args(p, DEFAULT_POLICIES)
    add_engine_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat) on the real engine")
    add_serve_args(p)
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servegym", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sim", help="simulate one policy on one trace")
    p.add_argument("--trace", required=True, help="trace file or synthetic spec")
    p.add_argument("--policy", default="continuous", help="policy spec name[:key=value,...]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_deployment_args(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("compare", help="sweep policies x traces x loads in parallel")
    p.add_argument("--traces", nargs="+", default=list(DEFAULT_TRACES), help="trace files or specs")
    p.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES), help="policy specs")
    p.add_argument("--rate-scales", nargs="+", type=float, default=[0.5, 1.0, 2.0],
                   help="arrival-rate multipliers (load levels)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    p.add_argument("--out", default="results/compare", help="output folder")
    _add_deployment_args(p)
    p.set_defaults(func=cmd_compare)

    _add_engine_commands(sub)

    from sim.roofline import add_roofline_args, roofline_command

    p = sub.add_parser("roofline", help="per-layer roofline analysis of a model on a GPU")
    add_roofline_args(p)
    p.set_defaults(func=roofline_command)

    from experiments.profile_tables import add_refit_args, cmd_refit

    p = sub.add_parser("refit", help="recompute a measured profile's fitted tables from its own samples")
    add_refit_args(p)
    p.set_defaults(func=cmd_refit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(argv)
    ns.argv = argv  # the exact command line, recorded by calibrate
    try:
        return int(ns.func(ns) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"servegym {ns.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
