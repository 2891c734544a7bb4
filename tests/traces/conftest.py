"""Fixtures: paths of the real trace samples (read in place, never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = (_REPO / "shared" / "traces", _REPO.parent / "shared" / "traces")


def _sample(name: str) -> Path:
    for folder in _CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"trace sample {name} not found in {[str(c) for c in _CANDIDATES]}")


@pytest.fixture(scope="session")
def azure_path() -> Path:
    return _sample("azure_llm_inference_2023_conv.csv")


@pytest.fixture(scope="session")
def mooncake_path() -> Path:
    return _sample("mooncake_conversation_trace.jsonl")
