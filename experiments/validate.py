"""``servegym validate``: replay traces on the engine, simulate the same requests, compare per metric.

For every trace and policy: a wall-clock replay on one ``ModelRunner`` (reused across runs; a
fresh ``Scheduler`` per run resets the KV bookkeeping and the prefix cache), then a simulation of
the same materialised requests with the same ``SchedulerConfig`` (the engine's block count and
size) and policy, priced by ``CalibratedCostModel`` from the given profile. Writes
``DIR/<trace>/<policy>/{real,sim}/`` (result files as ``servegym sim``), ``DIR/errors.csv``
(``trace, policy, metric, sim, real, rel_error``), ``DIR/step_fit.csv`` (the cost model's
error on the real runs' own steps, ``experiments.step_fit``), ``DIR/summaries.csv`` and the plots.

With ``--real-from EARLIER``, nothing runs on the engine: each real run is read from
``EARLIER/<trace>/<policy>/real/`` (an earlier ``servegym validate`` output, e.g. from a GPU) and
only the simulator side runs, so a new profile or cost model is judged against saved replays on a
CPU. ``--model`` then needs only the model's ``config.json``; the real runs stay where they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from engine.model_config import read_llama_spec
from experiments.cli_args import from_args
from experiments.engine_run import (
    build_runner,
    device_label,
    engine_config,
    labelled,
    load_requests,
    max_model_len_of,
    precheck,
    replay_on_engine,
    scheduler_config,
    slug,
    warm_up,
    write_engine_config,
)
from experiments.step_fit import step_fit
from policies.metrics import SLO, write_results
from policies.scheduler import SchedulerConfig
from policies.spec import parse_policy, parse_speculation
from policies.types import Request
from sim.acceptance import GeometricAcceptance
from sim.cost_model import CalibratedCostModel
from sim.simulator import simulate

METRICS = ("throughput_output_tok_s", "ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_mean_s", "tpot_p50_s",
           "tpot_p99_s", "e2e_mean_s", "e2e_p50_s", "e2e_p99_s", "preemptions", "prefix_cache_hit_rate")
SPEC_METRICS = ("spec_acceptance_rate",)
LOOKAHEAD_METRICS = ("lookahead_served_steps",)  # when the engine ran with the decode lookahead
ERROR_COLUMNS = ("trace", "policy", "metric", "sim", "real", "rel_error")
# Engine settings that change step times: a profile measured with other values is a poor fit. The
# verification row groups are compared as the engines resolve them (None is a per-model default), in validate.
TIMING_FIELDS = ("dtype", "block_size", "max_model_len", "max_num_seqs", "enforce_eager", "cuda_graph_batch_sizes",
                 "cuda_graph_token_sizes", "kv_cache_dtype", "quantization", "attention_backend")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def rel_error(sim: Any, real: Any) -> float:
    """``(sim - real) / real``; 0 when both are equal (0 and 0 included), NaN when undefined."""
    s, r = _number(sim), _number(real)
    if math.isnan(s) or math.isnan(r):
        return math.nan
    if s == r:
        return 0.0
    return (s - r) / r if r != 0 else math.nan


def error_rows(trace: str, policy: str, sim: dict[str, Any], real: dict[str, Any]) -> list[dict[str, Any]]:
    """One row of ``ERROR_COLUMNS`` per metric of ``METRICS`` (and ``SPEC_METRICS`` when the real run
    verified draft tokens, ``LOOKAHEAD_METRICS`` when it looked decode steps ahead)."""
    metrics = METRICS + (SPEC_METRICS if real.get("spec_draft_tokens") else ()) \
        + (LOOKAHEAD_METRICS if "lookahead_served_steps" in real else ())
    return [{"trace": trace, "policy": policy, "metric": m, "sim": _number(sim.get(m)),
             "real": _number(real.get(m)), "rel_error": rel_error(sim.get(m), real.get(m))} for m in metrics]


def _alpha(summary: dict[str, Any]) -> float:
    """The measured per-token acceptance of a speculative replay (0 when it accepted nothing)."""
    alpha = summary.get("spec_alpha")
    return float(alpha) if isinstance(alpha, float) and math.isfinite(alpha) else 0.0


def profile_mismatches(profile_engine: dict[str, Any] | None, engine: dict[str, Any]) -> list[str]:
    """Timing-relevant engine settings that differ between the profile's calibration and this run."""
    if not profile_engine:
        return []
    out = []
    for key in TIMING_FIELDS:
        a, b = profile_engine.get(key), engine.get(key)
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            a, b = list(a), list(b)
        if key in profile_engine and a != b:
            out.append(f"{key}: profile {a!r}, this run {b!r}")
    return out


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def saved_run(root: Path, label: str, spec: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """An earlier validate's real run of one trace and policy (``--real-from``).

    Returns:
        Its per-request rows, step log, summary and engine config (``engine.json``).

    Raises:
        FileNotFoundError: a file of ``root/<trace>/<policy>/real/`` is missing (named).
    """
    run = root / slug(label) / slug(spec) / "real"
    names = ("requests.parquet", "steps.parquet", "summary.json", "engine.json")
    missing = [n for n in names if not (run / n).is_file()]
    if missing:
        raise FileNotFoundError(f"--real-from: {run} has no {', '.join(missing)} (an earlier servegym validate "
                                f"folder holds <trace>/<policy>/real/ for every trace and policy given)")
    return (pd.read_parquet(run / names[0]), pd.read_parquet(run / names[1]), json.loads((run / names[2]).read_text()),
            json.loads((run / names[3]).read_text()))


def validate(ns: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the whole validation of the ``servegym validate`` flags.

    Returns:
        The errors table and the step-fit table (as written to ``errors.csv`` and ``step_fit.csv``).
    """
    # unknown policies fail before loading; a policy named twice runs twice ('continuous', 'continuous-2'):
    # the engine's run-to-run spread, beside the simulator's error
    policies = [(label, parse_policy(spec)) for label, spec in zip(_unique_labels(list(ns.policies)), ns.policies,
                                                                   strict=True)]
    if not Path(ns.profile).is_file():
        raise FileNotFoundError(f"profile {ns.profile} does not exist (--profile); write one with servegym calibrate")
    slo = from_args(SLO, ns, prefix="slo_")
    speculation = parse_speculation(ns.speculation)
    cfg = engine_config(ns, max_num_batched_tokens=max(p.token_budget for _, p in policies),
                        max_num_seqs=max(p.max_num_seqs for _, p in policies))
    from_args(SchedulerConfig, ns, num_gpu_blocks=1, block_size=cfg.block_size, num_cpu_blocks=cfg.num_cpu_blocks)
    cost = CalibratedCostModel.from_file(ns.profile, cfg.block_size)
    vocab, mml = read_llama_spec(cfg.model).vocab_size, max_model_len_of(cfg)
    loaded = [load_requests(t, vocab, mml) for t in ns.traces]
    labels = _unique_labels([label for label, _ in loaded])
    traces: list[tuple[str, list[Request]]] = [(lab, reqs) for lab, (_, reqs) in zip(labels, loaded, strict=True)]
    # --real-from: every saved run read up front (a missing one fails before any simulation), else the engine
    saved = {(label, spec): saved_run(Path(ns.real_from), label, spec) for label, _ in traces
             for spec, _ in policies} if ns.real_from else {}
    runner = None if saved else build_runner(cfg)
    sched_cfg = scheduler_config(ns, runner) if runner is not None else None
    if runner is not None:
        for label, reqs in traces:
            for spec, policy in policies:
                precheck(reqs, sched_cfg, policy, f"trace {label!r}, policy {spec!r}")
    engine_settings = dataclasses.asdict(runner.config) if runner is not None else next(iter(saved.values()))[3]
    mismatches = profile_mismatches(cost.meta.get("engine"), engine_settings)
    if speculation is not None and runner is not None and cost.verify_group_rows != runner.max_group:
        mismatches.append(f"verification row groups: profile {cost.verify_group_rows}, this engine {runner.max_group}")
    for line in mismatches:
        print(f"servegym validate: warning: profile {ns.profile} was measured with different engine settings: "
              f"{line}", file=sys.stderr)
    if runner is not None:
        warm_up(runner)
    out = Path(ns.out)
    model = ns.model
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    fits: list[pd.DataFrame] = []
    from experiments import validate_plots as plots  # matplotlib only once the replays are done

    bar = tqdm(total=len(traces) * len(policies), desc="validate", unit="run", disable=ns.quiet)
    for label, reqs in traces:
        req_frames: list[pd.DataFrame] = []
        step_frames: list[pd.DataFrame] = []
        for spec, policy in policies:
            run_dir = out / slug(label) / slug(spec)
            bar.set_postfix_str(f"{label} {spec}")
            labels_ = {"trace": label, "policy": spec, "model": model, "requests": reqs, "speculation": ns.speculation}
            if runner is not None:
                r_req, r_steps, r_sum = replay_on_engine(reqs, policy, sched_cfg, runner, slo, not ns.quiet,
                                                         desc=f"replay {spec}", speculation=speculation)
                blocks, run_cfg = runner.num_gpu_blocks, sched_cfg
                real_sum = labelled(r_sum, gpu=device_label(runner), cost_model="engine", num_gpu_blocks=blocks,
                                    **labels_)
                write_results(run_dir / "real", r_req, r_steps, real_sum)
                write_engine_config(run_dir / "real", runner.config)
            else:
                r_req, r_steps, real_sum, engine = saved[label, spec]
                blocks = int(real_sum["num_gpu_blocks"])
                run_cfg = from_args(SchedulerConfig, ns, num_gpu_blocks=blocks, block_size=engine["block_size"],
                                    num_cpu_blocks=engine["num_cpu_blocks"],
                                    verify_group_rows=cost.verify_group_rows or 1)
            # The simulator's acceptance model takes the replay's measured per-token acceptance.
            acceptance = GeometricAcceptance(_alpha(real_sum)) if speculation is not None else None
            s = simulate(reqs, policy, run_cfg, cost, slo, speculation=speculation, acceptance=acceptance)
            sim_sum = labelled(s.summary, gpu=cost.meta.get("gpu"), cost_model="calibrated", num_gpu_blocks=blocks,
                               **labels_)
            write_results(run_dir / "sim", s.requests, s.steps, sim_sum)
            rows += error_rows(label, spec, sim_sum, real_sum)
            fits.append(step_fit(r_steps, cost, label, spec))
            summaries += [{"world": "real", **real_sum}, {"world": "sim", **sim_sum}]
            for frames, (a, b) in ((req_frames, (r_req, s.requests)), (step_frames, (r_steps, s.steps))):
                frames += [a.assign(world="real", policy=spec), b.assign(world="sim", policy=spec)]
            bar.update()
        trace_dir = out / slug(label)
        requests, steps = pd.concat(req_frames, ignore_index=True), pd.concat(step_frames, ignore_index=True)
        plots.latency_cdfs(requests, trace_dir / "latency_cdf.png")
        plots.e2e_scatter(requests, trace_dir / "e2e_scatter.png")
        plots.kv_utilisation(steps, trace_dir / "kv_util.png")
    bar.close()
    errors = pd.DataFrame(rows, columns=list(ERROR_COLUMNS))
    errors.to_csv(out / "errors.csv", index=False)
    pd.DataFrame(summaries).to_csv(out / "summaries.csv", index=False)
    fit = pd.concat(fits, ignore_index=True)
    fit.to_csv(out / "step_fit.csv", index=False)
    plots.error_heatmap(errors, out / "errors.png")
    return errors, fit


def print_step_fit(fit: pd.DataFrame) -> None:
    """The cost model's error on the real steps (``step_fit`` rows), in percent."""
    table = fit.pivot_table(index=["trace", "policy"], columns="kind", values="rel_error", sort=False)
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:+.1f}".format):
        print("cost model on the real runs' steps, (predicted - measured) / measured of summed step time, in %:")
        print((table * 100).to_string())


def print_errors(errors: pd.DataFrame) -> None:
    """The errors table as relative errors in percent, one row per (trace, policy)."""
    table = errors.pivot_table(index=["trace", "policy"], columns="metric", values="rel_error", sort=False,
                               dropna=False)
    short = {m: m.replace("throughput_output_tok_s", "tput").replace("prefix_cache_hit_rate", "hit")
             .replace("preemptions", "preempt").removesuffix("_s") for m in table.columns}
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:+.1f}".format):
        print("relative error (sim - real) / real, in %:")
        print((table * 100).rename(columns=short).to_string())


def add_validate_args(p: argparse.ArgumentParser, default_policies: Sequence[str]) -> None:
    p.add_argument("--traces", nargs="+", required=True, help="trace files or synthetic specs")
    p.add_argument("--policies", nargs="+", default=list(default_policies), help="policy specs")
    p.add_argument("--profile", required=True, help="profile file (servegym calibrate) for the simulator")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--real-from", metavar="DIR", help="an earlier validate output folder: read its real runs "
                   "instead of replaying (no engine; --model needs only config.json)")


def cmd_validate(ns: argparse.Namespace) -> int:
    """``servegym validate``."""
    errors, fit = validate(ns)
    print_errors(errors)
    print_step_fit(fit)
    print(f"wrote {ns.out}/errors.csv, step_fit.csv, summaries.csv, errors.png and per trace: latency_cdf.png, "
          "e2e_scatter.png, kv_util.png, <policy>/{real,sim}/")
    return 0
