"""Helpers of the server tests: engines over the tiny models, SSE parsing, waiting for idle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.serving import ServedModel
from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.types import StepPlan, StepResult

BLOCKS = 160
GREEDY = {"temperature": 0, "ignore_eos": True}


def runner(folder: Path, blocks: int = BLOCKS) -> ModelRunner:
    return ModelRunner(EngineConfig(model=str(folder), dtype="float32", device="cpu", block_size=4,
                                    num_gpu_blocks=blocks))


def make_engine(executor: Any, blocks: int = BLOCKS, policy: str = "continuous", **kw: Any) -> AsyncEngine:
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=blocks, block_size=4), make_policy(policy, **kw))
    return AsyncEngine(sched, executor)


def served(r: ModelRunner, stops: tuple[int, ...] = ()) -> ServedModel:
    return ServedModel("tiny", r.spec.vocab_size, r.max_model_len, stops,
                       kv_capacity=r.num_gpu_blocks * r.block_size)


def events(text: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, checking the framing and the final [DONE]."""
    blocks = text.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]", text[-200:]
    assert all(b.startswith("data: ") for b in blocks[:-1])
    return [json.loads(b[len("data: "):]) for b in blocks[:-2]]


def wait_idle(engine: AsyncEngine, timeout: float = 5.0) -> dict[str, int]:
    """The engine's stats once nothing is queued or running."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        stats = engine.stats()
        if stats["running"] == stats["waiting"] == stats["swapped"] == 0:
            return stats
        time.sleep(0.01)
    raise AssertionError(f"engine still busy: {engine.stats()}")


def complete(client: TestClient, **body: Any) -> dict[str, Any]:
    """POST /v1/completions for model "tiny"; the JSON of a 200 reply."""
    r = client.post("/v1/completions", json={"model": "tiny", **body})
    assert r.status_code == 200, r.text
    return r.json()


class Exploding:
    """An executor whose steps from the ``fail_at``-th on raise."""

    def __init__(self, r: ModelRunner, fail_at: int) -> None:
        self.runner, self.fail_at, self.steps = r, fail_at, 0

    def execute(self, plan: StepPlan) -> StepResult:
        self.steps += 1
        if self.steps >= self.fail_at:
            raise RuntimeError("device on fire")
        return self.runner.execute(plan)
