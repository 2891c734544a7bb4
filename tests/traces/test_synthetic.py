"""Synthetic generators: reproducibility, arrival statistics, lengths and shared content."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces import (
    EmpiricalLen,
    FixedLen,
    LogNormalLen,
    Request,
    SyntheticConfig,
    UniformLen,
    gamma_arrivals,
    generate,
    poisson_arrivals,
)

BLOCK_SIZES = (8, 16, 32)


def _gaps(requests: list[Request]) -> np.ndarray:
    return np.diff([r.arrival_s for r in requests])


def test_seeded_reproducibility() -> None:
    for workload in ("plain", "shared_prefix", "multiturn"):
        cfg = SyntheticConfig(n=300, seed=7, workload=workload, arrival="gamma", cv=3.0)
        assert generate(cfg) == generate(cfg)
        assert generate(cfg) != generate(replace(cfg, seed=8))


def test_lengths_do_not_move_arrivals() -> None:
    a = generate(SyntheticConfig(n=50, seed=3))
    b = generate(SyntheticConfig(n=50, seed=3, in_len=FixedLen(10)))
    assert [r.arrival_s for r in a] == [r.arrival_s for r in b]


def test_poisson_rate_and_exponential_gaps() -> None:
    reqs = generate(SyntheticConfig(arrival="poisson", rate=20.0, n=20000, seed=1))
    assert len(reqs) == 20000 and reqs[0].arrival_s == 0.0
    gaps = _gaps(reqs)
    assert np.all(gaps >= 0)
    assert 1.0 / gaps.mean() == pytest.approx(20.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 1.0, 4.0])
def test_gamma_rate_and_cv(cv: float) -> None:
    times = gamma_arrivals(np.random.default_rng(2), rate=5.0, cv=cv, n=20000)
    gaps = np.diff(times)
    assert 1.0 / gaps.mean() == pytest.approx(5.0, rel=0.06)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_arrival_argument_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rate must be a finite number > 0"):
        poisson_arrivals(rng, 0.0, 10)
    with pytest.raises(ValueError, match="cv must be"):
        gamma_arrivals(rng, 1.0, -1.0, 10)
    with pytest.raises(ValueError, match="n must be >= 1"):
        poisson_arrivals(rng, 1.0, 0)


def test_length_distributions() -> None:
    rng = np.random.default_rng(0)
    assert np.all(FixedLen(512).sample(rng, 100) == 512)
    u = UniformLen(100, 103).sample(rng, 4000)
    assert set(u.tolist()) == {100, 101, 102, 103}
    x = LogNormalLen(mean=1155, cv=0.96).sample(rng, 200_000)
    assert x.mean() == pytest.approx(1155, rel=0.02)
    assert x.std() / x.mean() == pytest.approx(0.96, rel=0.05)
    capped = LogNormalLen(mean=50, cv=2.0, max=60).sample(rng, 5000)
    assert capped.min() >= 1 and capped.max() == 60
    assert np.all(LogNormalLen(mean=7, cv=0).sample(rng, 10) == 7)
    for bad, message in [
        (lambda: FixedLen(0), "fixed length must be >= 1"),
        (lambda: UniformLen(5, 4), "1 <= lo <= hi"),
        (lambda: LogNormalLen(0.5, 1.0), "lognormal mean"),
        (lambda: LogNormalLen(10, -1.0), "lognormal cv"),
    ]:
        with pytest.raises(ValueError, match=message):
            bad()


def test_empirical_lengths(azure_path: Path) -> None:
    rng = np.random.default_rng(0)
    prompts = EmpiricalLen(str(azure_path), "prompt").sample(rng, 50_000)
    outputs = EmpiricalLen(str(azure_path), "output").sample(rng, 50_000)
    assert prompts.mean() == pytest.approx(1154.7, rel=0.03)
    assert outputs.mean() == pytest.approx(211.1, rel=0.03)
    assert outputs.max() <= 1000 and prompts.min() >= 2


def test_plain_is_length_only() -> None:
    reqs = generate(SyntheticConfig(n=100, in_len=UniformLen(5, 9), out_len=FixedLen(3)))
    assert all(r.block_hashes is None and r.prompt_token_ids is None for r in reqs)
    assert all(5 <= r.prompt_len <= 9 and r.output_len == 3 for r in reqs)
    assert [r.id for r in reqs] == [str(i) for i in range(100)]


@pytest.mark.parametrize("prefix_len", [100, 128])
def test_shared_prefix_groups_share_block_contents(prefix_len: int) -> None:
    cfg = SyntheticConfig(
        n=400, workload="shared_prefix", groups=5, prefix_len=prefix_len, in_len=UniformLen(1, 80)
    )
    reqs = generate(cfg)
    shared = 16 * (prefix_len // 16)  # tokens of the prefix's full 16-token blocks
    for bs in BLOCK_SIZES:
        k = shared // bs
        by_prefix: dict[tuple, list[Request]] = defaultdict(list)
        for r in reqs:
            assert r.prompt_len > prefix_len
            by_prefix[tuple(r.block_contents(bs)[:k])].append(r)
        assert len(by_prefix) == 5  # one key per group, same for all its requests
        # Beyond the shared part, every request's blocks are its own.
        tails = [c for r in reqs for c in r.block_contents(bs)[k:]]
        assert len(tails) == len(set(tails))


def test_multiturn_prompt_extends_previous_turn() -> None:
    cfg = SyntheticConfig(n=403, workload="multiturn", turns=5, think_s=12.0, rate=4.0, seed=11)
    reqs = generate(cfg)
    assert len(reqs) == 403 and len({r.id for r in reqs}) == 403
    convs: dict[str, dict[int, Request]] = defaultdict(dict)
    for r in reqs:
        c, t = r.id.split("-t")
        convs[c][int(t)] = r
    assert len(convs) == 81 and len(convs["c80"]) == 3  # 403 = 80 * 5 + 3: the last one is cut
    thinks = []
    for turns in convs.values():
        for k in range(1, len(turns)):
            prev, cur = turns[k - 1], turns[k]
            assert cur.prompt_len > prev.prompt_len + prev.output_len
            assert cur.block_hashes[: len(prev.block_hashes)] == prev.block_hashes
            thinks.append(cur.arrival_s - prev.arrival_s)
            for bs in BLOCK_SIZES:
                before = prev.block_contents(bs)
                assert cur.block_contents(bs)[: len(before)] == before
    assert min(thinks) >= 0 and np.mean(thinks) == pytest.approx(12.0, rel=0.15)
    # Different conversations share nothing.
    firsts = [turns[0].block_contents(16)[0] for turns in convs.values() if turns[0].prompt_len >= 16]
    assert len(firsts) == len(set(firsts))


def test_multiturn_request_rate_is_about_rate() -> None:
    reqs = generate(SyntheticConfig(n=8000, workload="multiturn", turns=4, think_s=1.0, rate=10.0))
    assert len(reqs) / reqs[-1].arrival_s == pytest.approx(10.0, rel=0.1)


def test_large_multiturn_trace_stays_small() -> None:
    reqs = generate(SyntheticConfig(n=10_000, workload="multiturn", turns=8, rate=50.0))
    assert all(r.prompt_token_ids is None for r in reqs)
    assert all(len(r.block_hashes) == -(-r.prompt_len // 16) for r in reqs)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 60),
    workload=st.sampled_from(["plain", "shared_prefix", "multiturn"]),
    prefix_len=st.integers(1, 100),
    turns=st.integers(1, 6),
)
def test_generated_traces_are_valid(seed: int, n: int, workload: str, prefix_len: int, turns: int) -> None:
    cfg = SyntheticConfig(
        n=n, seed=seed, workload=workload, prefix_len=prefix_len, turns=turns, in_len=UniformLen(1, 70)
    )
    reqs = generate(cfg)
    assert len(reqs) == n
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))
    for r in reqs:
        if r.block_hashes is not None:  # exactly covering, no spare ids
            assert len(r.block_hashes) == -(-r.prompt_len // r.hash_block_size)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arrival": "uniform"}, "arrival must be one of"),
        ({"rate": float("inf")}, "rate must be"),
        ({"n": 0}, "n must be >= 1"),
        ({"workload": "rag"}, "workload must be one of"),
        ({"groups": 0}, "groups must be >= 1"),
        ({"turns": 0}, "turns must be >= 1"),
        ({"think_s": -1.0}, "think_s must be"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)
