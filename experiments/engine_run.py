"""Trace replay on the real engine: flags, request preparation, warm-up and one replay run.

``servegym replay`` and ``servegym validate`` share this: engine flags come from
``EngineConfig`` (``experiments.cli_args``), KV/preemption flags from ``SchedulerConfig``
minus the fields the engine owns (``num_gpu_blocks``, ``block_size``, ``num_cpu_blocks``).
Traces are materialised with the model's vocabulary size, so hashed prompts share
prefixes exactly as in the simulator. Every request is checked against the model's
``max_model_len``, the KV pool and the policy's budget before anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm import tqdm

from engine.config import EngineConfig
from engine.model_config import read_llama_spec
from experiments.cli_args import add_dataclass_args, add_speculation_arg, from_args
from experiments.replay import replay, replay_summary
from policies.batching import BatchingPolicy, ContinuousBatching
from policies.metrics import SLO, write_results
from policies.scheduler import Scheduler, SchedulerConfig
from policies.spec import parse_policy, parse_speculation
from policies.speculation import SpeculationPolicy
from policies.types import Request
from traces import load_trace, materialize_trace, parse_trace_spec

if TYPE_CHECKING:  # pragma: no cover
    from engine.model_runner import ModelRunner

ENGINE_SKIP = ("model", "cuda_graph_batch_sizes", "cuda_graph_token_sizes")
SCHEDULER_SKIP = ("num_gpu_blocks", "block_size", "num_cpu_blocks", "verify_group_rows")  # the engine decides


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` plus one flag per ``EngineConfig`` field."""
    p.add_argument("--model", required=True, help="Hugging Face style Llama folder (config.json + safetensors)")
    add_dataclass_args(p, EngineConfig, skip=ENGINE_SKIP, title="engine")
    p.add_argument("--cuda-graph-batch-sizes", type=int, nargs="+", default=None, metavar="B",
                   help="EngineConfig.cuda_graph_batch_sizes (decode batch sizes captured as CUDA graphs)")
    p.add_argument("--cuda-graph-token-sizes", type=int, nargs="*", default=None, metavar="T",
                   help="EngineConfig.cuda_graph_token_sizes (token counts of steps with a prefill captured as "
                        "CUDA graphs; give the flag alone for none)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Model and engine flags, plus speculation, KV/preemption and SLO flags (replay, validate)."""
    add_model_args(p)
    add_speculation_arg(p)
    add_dataclass_args(p, SchedulerConfig, skip=SCHEDULER_SKIP, title="KV cache and preemption")
    add_dataclass_args(p, SLO, prefix="slo_", title="goodput objectives")


def engine_config(ns: argparse.Namespace, **defaults: Any) -> EngineConfig:
    """The ``EngineConfig`` of the flags; ``defaults`` fill fields the user did not give.

    Raises:
        FileNotFoundError: the model folder does not exist (checked before any weight is read).
        ValueError: ``--speculation`` without ``--speculative-method``.
    """
    folder = Path(ns.model)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (--model)")
    if parse_speculation(getattr(ns, "speculation", None)) is not None and ns.speculative_method is None:
        raise ValueError("--speculation needs --speculative-method ngram or draft (with --draft-model)")
    fixed: dict[str, Any] = {"model": str(folder)}
    if ns.cuda_graph_batch_sizes:
        fixed["cuda_graph_batch_sizes"] = tuple(ns.cuda_graph_batch_sizes)
    if ns.cuda_graph_token_sizes is not None:
        fixed["cuda_graph_token_sizes"] = tuple(ns.cuda_graph_token_sizes)
    for name, value in defaults.items():
        if getattr(ns, name, None) is None:
            fixed[name] = value
    return from_args(EngineConfig, ns, **fixed)


def max_model_len_of(cfg: EngineConfig) -> int:
    """The longest sequence the engine will accept, read from config.json (no weights loaded)."""
    spec = read_llama_spec(cfg.model)
    return cfg.max_model_len or spec.max_position_embeddings


def build_runner(cfg: EngineConfig) -> ModelRunner:
    """Load the model and its KV cache (torch imported here, not at CLI start)."""
    from engine.model_runner import ModelRunner

    return ModelRunner(cfg)


def scheduler_config(ns: argparse.Namespace, runner: ModelRunner) -> SchedulerConfig:
    """KV/preemption flags plus the engine's pool (its block count, block size and host blocks) and how it
    attends verification rows."""
    cfg = runner.config
    return from_args(SchedulerConfig, ns, num_gpu_blocks=runner.num_gpu_blocks, block_size=cfg.block_size,
                     num_cpu_blocks=cfg.num_cpu_blocks, verify_group_rows=runner.max_group)


def device_label(runner: ModelRunner) -> str:
    """Short accelerator name: ``h100``/``h200``/``a100`` when recognised, else the device name."""
    if runner.device.type != "cuda":
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(runner.device)
    for short in ("h100", "h200", "a100"):
        if short in name.lower():
            return short
    return name


def slug(text: str) -> str:
    """A file-name-safe version of a trace label or policy spec."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-") or "x"


def load_requests(trace: str, vocab_size: int, max_model_len: int) -> tuple[str, list[Request]]:
    """Load a trace spec and give its requests token ids.

    Returns:
        ``(label, requests)``.

    Raises:
        ValueError: a request longer than ``max_model_len`` (named, with the fix).
    """
    spec = parse_trace_spec(trace)
    requests = materialize_trace(load_trace(spec), vocab_size)
    for r in requests:
        if r.prompt_len + r.output_len > max_model_len:
            raise ValueError(
                f"trace {trace!r}: request {r.id!r} needs {r.prompt_len} prompt + {r.output_len} output tokens "
                f"but max_model_len is {max_model_len}; raise --max-model-len or clip the trace "
                f"(e.g. ':max_in=...,max_out=...' on a trace file, 'in=lognormal:MEAN:CV:MAX' on a synthetic one)")
    if not requests:
        raise ValueError(f"trace {trace!r} has no requests")
    return spec.label, requests


def precheck(requests: Sequence[Request], config: SchedulerConfig, policy: BatchingPolicy, where: str) -> None:
    """Fail before any replay if a request could never run (the scheduler's own admission checks)."""
    probe = Scheduler(config, policy)
    for r in requests:
        try:
            probe.add_request(r)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def warm_up(runner: ModelRunner, rounds: int = 2) -> None:
    """Compile kernels and fill allocator caches: prefills with and without cached prefixes, mixed steps
    and decodes (and, with a proposer, verification steps beside and without prefills), so the first
    steps of a timed run pay no one-time costs."""
    from engine.llm import run_offline  # torch: loaded with the runner, not at CLI start

    bs, vocab = runner.block_size, min(runner.spec.vocab_size, 128000)
    longest = max(2, min(runner.max_model_len - 8, 8 * bs + 5, (runner.num_gpu_blocks // 8) * bs))
    prefix = tuple((7 * i + 3) % vocab for i in range(longest))
    lengths = sorted({1, min(5, longest), min(bs + 3, longest), longest})
    for k in range(rounds):
        cfg = SchedulerConfig(num_gpu_blocks=runner.num_gpu_blocks, block_size=bs, verify_group_rows=runner.max_group)
        spec = SpeculationPolicy(num_draft_tokens=3) if runner.speculative is not None and k else None
        sched = Scheduler(cfg, ContinuousBatching(max_num_seqs=16, token_budget=max(64, 2 * longest)), spec)
        run_offline(sched, runner, [Request(f"w{k}-{i}", 0.0, n, 4, prompt_token_ids=prefix[:n])
                                    for i, n in enumerate(lengths)])
        tail = tuple((11 * i + 5 + k) % vocab for i in range(3))  # reuses the cached prefix blocks
        run_offline(sched, runner, [Request(f"w{k}-hit", 0.0, longest, 4,
                                            prompt_token_ids=prefix[: longest - 3] + tail)])


def replay_on_engine(requests: Sequence[Request], policy: BatchingPolicy, config: SchedulerConfig,
                     runner: ModelRunner, slo: SLO | None = None, progress: bool = True,
                     desc: str = "replay", speculation: SpeculationPolicy | None = None,
                     ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Replay one trace under one policy on the wall clock with a fresh scheduler.

    A fresh ``Scheduler`` is all a new run needs: it owns the block bookkeeping and the
    prefix cache, so stale KV contents of earlier runs are never read.

    Args:
        speculation: the speculation policy (the runner needs a ``speculative_method``).

    Returns:
        Per-request rows, the step log and the summary (simulator format; with the decode lookahead,
        ``lookahead_served_steps``: the steps a looked-ahead step served).
    """
    scheduler = Scheduler(config, policy, speculation)
    ahead = runner.lookahead
    hits = ahead.hits if ahead is not None else 0
    with tqdm(total=len(requests), unit="req", desc=desc, leave=False, disable=not progress) as bar:
        wall = replay(requests, scheduler, runner, on_step=lambda n: bar.update(n) if n else None)
    reqs, steps, summary = replay_summary(scheduler, wall, slo)
    if ahead is not None:  # the simulator counts the same (sim.lookahead.LookaheadTracker.hits)
        summary["lookahead_served_steps"] = ahead.hits - hits
    return reqs, steps, summary


def offered_rate(requests: Sequence[Request]) -> float:
    span = requests[-1].arrival_s - requests[0].arrival_s if len(requests) > 1 else 0.0
    return (len(requests) - 1) / span if span > 0 else math.nan


def labelled(summary: dict[str, Any], *, trace: str, policy: str, model: str, gpu: str, cost_model: str,
             num_gpu_blocks: int, requests: Sequence[Request], speculation: str | None = None) -> dict[str, Any]:
    """The summary with the labels ``sim``'s result files carry (same keys in both worlds)."""
    return {"trace": trace, "policy": policy, "speculation": speculation, "rate_scale": 1.0,
            "offered_rate_req_s": offered_rate(requests),
            "model": model, "gpu": gpu, "cost_model": cost_model, "num_gpu_blocks": num_gpu_blocks, **summary}


def write_engine_config(out_dir: Path, config: EngineConfig) -> Path:
    """Record the engine configuration of a run next to its result files (``engine.json``)."""
    path = out_dir / "engine.json"
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2, default=list) + "\n")
    return path


def cmd_replay(ns: argparse.Namespace) -> int:
    """``servegym replay``: one trace, one policy, on the engine; result files as ``servegym sim``."""
    policy = parse_policy(ns.policy)
    slo = from_args(SLO, ns, prefix="slo_")
    cfg = engine_config(ns, max_num_batched_tokens=policy.token_budget, max_num_seqs=policy.max_num_seqs)
    from_args(SchedulerConfig, ns, num_gpu_blocks=1, block_size=cfg.block_size,
              num_cpu_blocks=cfg.num_cpu_blocks)  # bad KV flags fail before the model loads
    vocab = read_llama_spec(cfg.model).vocab_size
    label, requests = load_requests(ns.trace, vocab, max_model_len_of(cfg))
    runner = build_runner(cfg)
    sched_cfg = scheduler_config(ns, runner)
    precheck(requests, sched_cfg, policy, f"trace {ns.trace!r}, policy {ns.policy!r}")
    warm_up(runner)
    reqs, steps, summary = replay_on_engine(requests, policy, sched_cfg, runner, slo, not ns.quiet,
                                            speculation=parse_speculation(ns.speculation))
    summary = labelled(summary, trace=label, policy=ns.policy, model=ns.model, gpu=device_label(runner),
                       cost_model="engine", num_gpu_blocks=runner.num_gpu_blocks, requests=requests,
                       speculation=ns.speculation)
    write_results(ns.out, reqs, steps, summary)
    write_engine_config(Path(ns.out), runner.config)
    keys = ["num_requests", "num_finished", "throughput_output_tok_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s",
            "tpot_p99_s", "e2e_p50_s", "e2e_p99_s", "preemptions", "prefix_cache_hit_rate", "wall_s"]
    if ns.speculation:
        keys += ["spec_acceptance_rate", "spec_alpha"]
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    print(f"wrote {ns.out}/requests.parquet, steps.parquet, summary.json")
    return 0
