"""File transforms: windowing, rate and length scaling, clipping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces import Request, TraceTransforms, load_file


def _sharing(requests: list[Request], block_size: int) -> list[list[bool]]:
    """For each pair of requests, which first-block contents are equal: the prefix structure."""
    keys = [r.block_contents(block_size) for r in requests]
    return [[bool(a) and bool(b) and a[0] == b[0] for b in keys] for a in keys]


def test_identity_returns_equal_list(mooncake_path: Path) -> None:
    reqs = load_file(mooncake_path)[:20]
    assert TraceTransforms().apply(reqs) == reqs


def test_skip_rebases_and_n_windows(azure_path: Path) -> None:
    reqs = load_file(azure_path)
    out = TraceTransforms(skip=100, n=50).apply(reqs)
    assert [r.id for r in out] == [str(i) for i in range(100, 150)]
    assert out[0].arrival_s == 0.0
    assert out[-1].arrival_s == pytest.approx(reqs[149].arrival_s - reqs[100].arrival_s)
    assert len(TraceTransforms(n=10**9).apply(reqs)) == len(reqs)
    with pytest.raises(ValueError, match=r"skip=19366 leaves no request of the trace's 19366"):
        TraceTransforms(skip=19366).apply(reqs)


def test_rate_scale_divides_arrivals(azure_path: Path) -> None:
    reqs = load_file(azure_path)[:200]
    fast = TraceTransforms(rate_scale=4.0).apply(reqs)
    assert [r.arrival_s for r in fast] == pytest.approx([r.arrival_s / 4 for r in reqs])
    assert [r.prompt_len for r in fast] == [r.prompt_len for r in reqs]


@pytest.mark.parametrize("scale", [0.03, 0.25, 0.5, 1.7])
def test_len_scale_keeps_prefix_structure(mooncake_path: Path, scale: float) -> None:
    reqs = load_file(mooncake_path)[:40]
    out = TraceTransforms(len_scale=scale).apply(reqs)
    size = out[0].hash_block_size
    assert size >= 1 and all(r.hash_block_size == size for r in out)
    for r, o in zip(reqs, out, strict=True):
        assert o.prompt_len == max(1, math.floor(r.prompt_len * scale + 0.5))
        assert o.output_len == max(1, math.floor(r.output_len * scale + 0.5))
        assert o.block_hashes == r.block_hashes[: len(o.block_hashes)]
    assert _sharing(out, size) == _sharing(reqs, 512)
    assert any(any(row[:i] + row[i + 1 :]) for i, row in enumerate(_sharing(out, size)))  # some sharing


def test_clipping(mooncake_path: Path) -> None:
    reqs = load_file(mooncake_path)[:100]
    out = TraceTransforms(max_in=1000, max_out=50).apply(reqs)
    for r, o in zip(reqs, out, strict=True):
        assert o.prompt_len == min(r.prompt_len, 1000) and o.output_len == min(r.output_len, 50)
        assert o.block_hashes == r.block_hashes[: -(-o.prompt_len // 512)]


def test_token_id_prompts() -> None:
    r = Request("a", 0.0, 5, 3, prompt_token_ids=(1, 2, 3, 4, 5))
    (clipped,) = TraceTransforms(max_in=2).apply([r])
    assert clipped.prompt_token_ids == (1, 2)
    with pytest.raises(ValueError, match="request 'a': len_scale cannot scale a prompt given as token ids"):
        TraceTransforms(len_scale=2.0).apply([r])


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 5000),
    hsize=st.integers(1, 600),
    scale=st.floats(0.001, 20.0),
    max_in=st.one_of(st.none(), st.integers(1, 3000)),
)
def test_scaled_hashed_prompts_stay_covered(
    length: int, hsize: int, scale: float, max_in: int | None
) -> None:
    r = Request("x", 1.0, length, 4, block_hashes=tuple(range(-(-length // hsize))), hash_block_size=hsize)
    (o,) = TraceTransforms(len_scale=scale, max_in=max_in).apply([r])  # Request validates coverage
    assert len(o.block_hashes) == -(-o.prompt_len // o.hash_block_size)
    assert o.hash_block_size >= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip": -1}, "skip must be >= 0"),
        ({"n": 0}, "n must be >= 1"),
        ({"rate_scale": 0.0}, "rate_scale must be"),
        ({"len_scale": float("nan")}, "len_scale must be"),
        ({"max_out": 0}, "max_out must be >= 1"),
    ],
)
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TraceTransforms(**kwargs)
