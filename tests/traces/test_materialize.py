"""Materialised token ids keep the trace's sharing structure and are deterministic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces import Request, SyntheticConfig, UniformLen, generate, materialize_token_ids
from traces.materialize import materialize_trace

VOCAB = 128256


def test_equal_hashes_give_equal_tokens() -> None:
    a = materialize_token_ids(Request("a", 0.0, 40, 1, block_hashes=(1, 2, 3), hash_block_size=16), VOCAB)
    b = materialize_token_ids(Request("b", 0.0, 45, 1, block_hashes=(1, 2, 9), hash_block_size=16), VOCAB)
    assert a.prompt_token_ids[:32] == b.prompt_token_ids[:32]
    assert a.prompt_token_ids[32:40] != b.prompt_token_ids[32:40]
    assert a.block_hashes == (1, 2, 3)  # kept
    # The same hash at the same offset gives the same token whatever the request's length or id.
    c = materialize_token_ids(Request("c", 0.0, 3, 1, block_hashes=(3,), hash_block_size=16), VOCAB)
    assert c.prompt_token_ids == a.prompt_token_ids[32:35]  # content ids name content, not positions
    d = materialize_token_ids(Request("d", 0.0, 20, 1, block_hashes=(1, 7), hash_block_size=16), VOCAB)
    assert d.prompt_token_ids[:16] == a.prompt_token_ids[:16]


def test_different_hashes_give_different_blocks() -> None:
    hashes = tuple(range(2000)) + (-5, 2**63, 2**64 - 1)
    r = materialize_token_ids(
        Request("r", 0.0, 16 * len(hashes), 1, block_hashes=hashes, hash_block_size=16), VOCAB
    )
    ids = np.array(r.prompt_token_ids).reshape(len(hashes), 16)
    assert len({tuple(row) for row in ids.tolist()}) == len(hashes)
    assert ids.min() >= 0 and ids.max() < 128000
    assert len(np.unique(ids)) > 20000  # spread over the vocabulary


def test_seed_changes_hashed_tokens() -> None:
    r = Request("r", 0.0, 32, 1, block_hashes=(5, 6), hash_block_size=16)
    assert (
        materialize_token_ids(r, VOCAB, seed=1).prompt_token_ids
        != materialize_token_ids(r, VOCAB).prompt_token_ids
    )


def test_length_only_is_deterministic_and_per_request() -> None:
    r = Request("req-7", 0.0, 300, 1)
    a, b = materialize_token_ids(r, 32000), materialize_token_ids(r, 32000)
    assert a.prompt_token_ids == b.prompt_token_ids and len(a.prompt_token_ids) == 300
    assert min(a.prompt_token_ids) >= 0 and max(a.prompt_token_ids) < 32000
    other = materialize_token_ids(Request("req-8", 0.0, 300, 1), 32000)
    assert other.prompt_token_ids != a.prompt_token_ids
    assert materialize_token_ids(r, 32000, seed=3).prompt_token_ids != a.prompt_token_ids


def test_length_only_does_not_depend_on_python_hash_seed() -> None:
    code = (
        "from traces import Request, materialize_token_ids;"
        "print(materialize_token_ids(Request('q', 0.0, 8, 1), 1000).prompt_token_ids)"
    )
    root = Path(__file__).resolve().parents[2]
    outs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.add(done.stdout)
    here = str(materialize_token_ids(Request("q", 0.0, 8, 1), 1000).prompt_token_ids)
    assert outs == {here + "\n"}


def test_small_vocab_and_existing_ids() -> None:
    r = materialize_token_ids(Request("r", 0.0, 500, 1, block_hashes=(1,) * 32, hash_block_size=16), 7)
    assert set(r.prompt_token_ids) <= set(range(7))
    given_ids = Request("g", 0.0, 2, 1, prompt_token_ids=(5, 6))
    assert materialize_token_ids(given_ids, VOCAB) is given_ids
    with pytest.raises(ValueError, match="vocab_size must be >= 2"):
        materialize_token_ids(given_ids, 1)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        materialize_token_ids(given_ids, VOCAB, seed=-1)


@pytest.mark.parametrize("workload", ["shared_prefix", "multiturn"])
def test_materialised_trace_keeps_block_contents(workload: str) -> None:
    cfg = SyntheticConfig(
        n=60, workload=workload, prefix_len=40, in_len=UniformLen(1, 60), out_len=UniformLen(1, 30)
    )
    reqs = generate(cfg)
    mats = materialize_trace(reqs, VOCAB)
    for bs in (8, 16, 32):
        before = [tuple(r.block_contents(bs)) for r in reqs]
        after = [tuple(m.block_contents(bs)) for m in mats]
        # Same equality pattern of every block position across requests.
        for i in range(len(reqs)):
            for j in range(i):
                k = min(len(before[i]), len(before[j]))
                eq_before = [before[i][x] == before[j][x] for x in range(k)]
                eq_after = [after[i][x] == after[j][x] for x in range(k)]
                assert eq_before == eq_after


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    hsize=st.integers(1, 40),
    pool=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4, unique=True),
)
def test_token_is_function_of_hash_and_offset(data: st.DataObject, hsize: int, pool: list[int]) -> None:
    """Across two requests, tokens at positions with the same (hash, offset) are equal."""
    reqs = []
    for name in ("a", "b"):
        hashes = tuple(data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6)))
        length = data.draw(st.integers(1, len(hashes) * hsize))
        reqs.append(
            materialize_token_ids(
                Request(name, 0.0, length, 1, block_hashes=hashes, hash_block_size=hsize), 50
            )
        )
    seen: dict[tuple[int, int], int] = {}
    for r in reqs:
        for p, tok in enumerate(r.prompt_token_ids):
            key = (r.block_hashes[p // hsize], p % hsize)
            assert seen.setdefault(key, tok) == tok
