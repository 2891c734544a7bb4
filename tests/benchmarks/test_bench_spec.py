"""benchmarks.bench_spec's scripted drafts on a tiny CPU model (fp32: the speculative and plain runs share
one greedy path), so the measured acceptance and tokens per step follow the scripted alpha."""

from __future__ import annotations

import pytest

from benchmarks.bench_spec import _scripted_cases
from engine import LLM
from tests.engine.conftest import VOCAB, build_tiny_llama


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def _value(rows: list[dict], suffix: str) -> float:
    (hit,) = [r["value"] for r in rows if r["case"].endswith(suffix)]
    return hit


@pytest.mark.parametrize("self_reference", [False, True])
def test_scripted_drafts_are_accepted_at_the_scripted_rate(tiny_llama, self_reference: bool) -> None:
    llm = LLM(str(tiny_llama), dtype="float32", device="cpu", block_size=4, num_gpu_blocks=256,
              speculative_method="ngram")
    prompts = [[(7 * i + 3 * j) % VOCAB for j in range(12)] for i in range(2)]
    spec = "fixed:num_draft_tokens=3"
    rows = _scripted_cases(llm, "tiny", prompts, 40, (0.0, 1.0), (spec,), self_reference=self_reference)
    assert rows[0]["case"] == "tiny plain engine" and rows[0]["value"] > 0
    # every draft wrong: one token a step; every draft right: all three accepted plus the target's own
    assert _value(rows, f"alpha=0.0 {spec} per-token acceptance (spec_alpha)") == 0.0
    assert _value(rows, f"alpha=0.0 {spec} tokens per step") < 1.1
    assert _value(rows, f"alpha=1.0 {spec} per-token acceptance (spec_alpha)") == 1.0
    assert _value(rows, f"alpha=1.0 {spec} tokens per step") > 3.0
    assert _value(rows, f"alpha=1.0 {spec} outputs equal to the reference") == 1.0
