"""The real engine: Llama 3.x in PyTorch + Triton behind the scheduler's step contract.

``from engine import LLM, SamplingParams`` for offline generation; ``ModelRunner``
is the executor (``execute(plan) -> StepResult``); ``engine.async_engine.AsyncEngine``
plus ``engine.api_server.build_app`` serve it online (OpenAI-compatible HTTP). Heavy
modules (torch) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from policies.types import SamplingParams

if TYPE_CHECKING:  # pragma: no cover
    from engine.config import EngineConfig
    from engine.llm import LLM
    from engine.model_runner import ModelRunner

__all__ = ["LLM", "EngineConfig", "ModelRunner", "SamplingParams"]

_LAZY = {"LLM": "engine.llm", "EngineConfig": "engine.config", "ModelRunner": "engine.model_runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
