"""``servegym serve``: the OpenAI-compatible HTTP server on the real engine.

Flags: ``--model`` and the engine flags (``EngineConfig``, as ``servegym replay``), ``--policy
name[:k=v]``, the KV/preemption flags (``SchedulerConfig`` minus what the engine decides) and
the server flags (``ServerConfig``: ``--host --port --served-model-name --tokenizer --warmup``). Every
flag, the tokenizer and its fit to the model's vocabulary are checked before weights load.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from engine.model_config import read_llama_spec
from engine.server_config import ServerConfig
from engine.tokenizer import check_vocab, load_tokenizer
from experiments.cli_args import add_dataclass_args, add_speculation_arg, from_args
from experiments.engine_run import SCHEDULER_SKIP, add_model_args, build_runner, engine_config, scheduler_config
from policies.scheduler import Scheduler, SchedulerConfig
from policies.spec import parse_policy, parse_speculation

if TYPE_CHECKING:  # pragma: no cover
    from engine.async_engine import AsyncEngine


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Model, engine, policy, KV/preemption and server flags."""
    p.add_argument("--policy", default="continuous", help="policy spec name[:key=value,...]")
    add_speculation_arg(p)
    add_model_args(p)
    add_dataclass_args(p, SchedulerConfig, skip=SCHEDULER_SKIP, title="KV cache and preemption")
    add_dataclass_args(p, ServerConfig, title="server")


def build_server(ns: argparse.Namespace) -> tuple[Any, AsyncEngine, ServerConfig]:
    """Check the flags, load the model and build the app.

    Returns:
        ``(app, engine, server_config)``; the caller runs the app and shuts the engine down.

    Raises:
        ValueError: a bad flag, or a tokenizer whose ids do not fit the model's vocabulary.
        FileNotFoundError: no model folder, or a tokenizer path that does not exist.
    """
    policy = parse_policy(ns.policy)
    speculation = parse_speculation(ns.speculation)
    server = from_args(ServerConfig, ns)
    cfg = engine_config(ns, max_num_batched_tokens=policy.token_budget, max_num_seqs=policy.max_num_seqs)
    from_args(SchedulerConfig, ns, num_gpu_blocks=1, block_size=cfg.block_size,
              num_cpu_blocks=cfg.num_cpu_blocks)  # bad KV flags fail before the model loads
    tokenizer = load_tokenizer(server.tokenizer, cfg.model)
    if tokenizer is not None:
        check_vocab(tokenizer, read_llama_spec(cfg.model).vocab_size)

    from engine.api_server import build_app  # fastapi and torch: loaded only to serve
    from engine.async_engine import AsyncEngine
    from engine.serving import ServedModel
    from experiments.engine_run import warm_up

    runner = build_runner(cfg)
    if server.warmup:
        warm_up(runner, rounds=1)
    stops = tuple(dict.fromkeys((*runner.spec.eos_token_ids, *(tokenizer.stop_ids if tokenizer else ()))))
    model = ServedModel(server.served_model_name or ns.model, runner.spec.vocab_size, runner.max_model_len, stops,
                        created=int(time.time()), kv_capacity=runner.num_gpu_blocks * runner.block_size)
    engine = AsyncEngine(Scheduler(scheduler_config(ns, runner), policy, speculation), runner)
    try:
        app = build_app(engine, model, tokenizer)
    except BaseException:
        engine.shutdown()
        raise
    return app, engine, server


def cmd_serve(ns: argparse.Namespace) -> int:
    """``servegym serve``: serve until interrupted."""
    app, engine, server = build_server(ns)
    import uvicorn

    try:
        uvicorn.run(app, host=server.host, port=server.port, log_level="info")
    finally:
        engine.shutdown()
    return 0
