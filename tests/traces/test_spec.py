"""The trace spec grammar: valid specs, labels, and errors naming the bad key and the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces import (
    EmpiricalLen,
    FixedLen,
    LogNormalLen,
    SyntheticConfig,
    TraceSpec,
    TraceSpecError,
    TraceTransforms,
    UniformLen,
    generate,
    load_file,
    load_trace,
    parse_trace_spec,
)


def test_default_synthetic_is_chat_like() -> None:
    spec = parse_trace_spec("synthetic:poisson")
    assert spec.synthetic == SyntheticConfig()
    assert spec.label == "poisson-r20"
    assert spec.synthetic.in_len == LogNormalLen(1155, 0.96, 16384)
    assert spec.synthetic.out_len == LogNormalLen(211, 0.77, 2048)
    reqs = load_trace("synthetic:poisson,rate=20,n=1000,seed=0")
    assert reqs == generate(SyntheticConfig(rate=20.0, n=1000, seed=0))


def test_full_synthetic_spec() -> None:
    spec = parse_trace_spec(
        "synthetic:gamma, rate=2.5,n=30,seed=4,cv=3,in=uniform:10:20,out=fixed:7,workload=multiturn,"
        "turns=3,think_s=0"
    )
    assert spec.synthetic == SyntheticConfig(
        arrival="gamma",
        rate=2.5,
        n=30,
        seed=4,
        cv=3.0,
        in_len=UniformLen(10, 20),
        out_len=FixedLen(7),
        workload="multiturn",
        turns=3,
        think_s=0.0,
    )
    assert spec.label == "gamma-r2.5-cv3-multiturn"
    assert parse_trace_spec("synthetic:gamma").synthetic.cv == 2.0  # bursty by default
    shared = parse_trace_spec(
        "synthetic:poisson,workload=shared_prefix,groups=3,prefix_len=64,in=lognormal:80:0.5"
    )
    assert (shared.synthetic.groups, shared.synthetic.prefix_len) == (3, 64)
    assert shared.synthetic.in_len == LogNormalLen(80, 0.5)
    assert shared.label == "poisson-r20-shared_prefix"


def test_empirical_lengths_in_spec(azure_path: Path) -> None:
    spec = parse_trace_spec(f"synthetic:poisson,n=50,in=empirical:{azure_path},out=empirical:{azure_path}")
    assert spec.synthetic.in_len == EmpiricalLen(str(azure_path), "prompt")
    assert spec.synthetic.out_len == EmpiricalLen(str(azure_path), "output")
    trace_lens = {(r.prompt_len) for r in load_file(azure_path)}
    assert all(r.prompt_len in trace_lens for r in load_trace(spec))


def test_file_spec_with_transforms(azure_path: Path) -> None:
    spec = parse_trace_spec(f"{azure_path}:n=100,skip=10,rate_scale=2,max_in=512,max_out=64,len_scale=0.5")
    assert spec.path == str(azure_path)
    assert spec.transforms == TraceTransforms(
        skip=10, n=100, rate_scale=2.0, len_scale=0.5, max_in=512, max_out=64
    )
    assert (
        spec.label == "azure_llm_inference_2023_conv-skip10-n100-rate_scale2-len_scale0.5-max_in512-max_out64"
    )
    reqs = load_trace(spec)
    full = load_file(azure_path)
    assert len(reqs) == 100 and reqs[0].id == "10" and reqs[0].arrival_s == 0.0
    assert reqs[5].arrival_s == pytest.approx((full[15].arrival_s - full[10].arrival_s) / 2)
    assert reqs[5].prompt_len == min(512, (full[15].prompt_len + 1) // 2)
    assert max(r.prompt_len for r in reqs) <= 512 and max(r.output_len for r in reqs) <= 64


def test_plain_file_spec_and_label(azure_path: Path) -> None:
    spec = parse_trace_spec(str(azure_path))
    assert spec.label == "azure_llm_inference_2023_conv" and spec.transforms.is_identity
    assert len(load_trace(spec)) == 19366


def test_path_with_colon_but_no_options(tmp_path: Path) -> None:
    path = tmp_path / "run:3.csv"
    path.write_text("Timestamp,Request tokens,Response tokens\n0,5,0\n")
    assert parse_trace_spec(str(path)).path == str(path)
    spec = parse_trace_spec(f"{path}:zero_length=error")
    assert spec.path == str(path) and spec.zero_length == "error"
    with pytest.raises(ValueError, match=r"run:3\.csv line 2: Response tokens is 0"):
        load_trace(spec)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "empty trace spec"),
        ("synthetic:uniform,rate=3", "arrival is 'uniform'"),
        ("synthetic:poisson,rate=abc", "rate='abc': expected a number"),
        ("synthetic:poisson,rate=-1", "rate must be a finite number > 0 (requests per second), got -1.0"),
        ("synthetic:poisson,rate=inf", "rate must be a finite number > 0"),
        ("synthetic:poisson,n=1.5", "n='1.5': expected an integer"),
        ("synthetic:poisson,n=0", "n must be >= 1"),
        ("synthetic:poisson,cv=2", "unknown key 'cv' for a poisson plain workload"),
        ("synthetic:poisson,groups=3", "unknown key 'groups' for a poisson plain workload"),
        ("synthetic:gamma,workload=multiturn,prefix_len=3", "unknown key 'prefix_len'"),
        ("synthetic:poisson,workload=rag", "workload='rag'"),
        ("synthetic:poisson,rate", "'rate' is not key=value"),
        ("synthetic:poisson,rate=1,", "'' is not key=value"),
        ("synthetic:poisson,n=3,n=4", "key 'n' given twice"),
        ("synthetic:poisson,in=normal:3:4", "in='normal:3:4': expected fixed:N"),
        ("synthetic:poisson,in=fixed:1:2", "in='fixed:1:2': expected fixed:N"),
        ("synthetic:poisson,out=uniform:9:3", "out='uniform:9:3': uniform lengths need 1 <= lo <= hi"),
        ("synthetic:poisson,out=lognormal:200:x", "out='lognormal:200:x'"),
        ("synthetic:poisson,in=empirical:/no/such.csv", "in=empirical: file '/no/such.csv' is not a file"),
        ("/no/such/trace.csv", "trace file '/no/such/trace.csv' is not a file"),
    ],
)
def test_invalid_specs(spec: str, fragment: str) -> None:
    with pytest.raises(TraceSpecError) as info:
        parse_trace_spec(spec)
    message = str(info.value)
    assert fragment in message
    if spec:
        assert repr(spec) in message  # the full spec is quoted


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ("n=0", "n must be >= 1"),
        ("skip=-1", "skip must be >= 0"),
        ("rate_scale=0", "rate_scale must be a finite number > 0"),
        ("len_scale=x", "len_scale='x': expected a number"),
        ("max_in=0", "max_in must be >= 1"),
        ("speed=2", "unknown key 'speed' for a trace file"),
        ("zero_length=skip", "zero_length='skip'"),
    ],
)
def test_invalid_file_transforms(azure_path: Path, options: str, fragment: str) -> None:
    spec = f"{azure_path}:{options}"
    with pytest.raises(TraceSpecError) as info:
        parse_trace_spec(spec)
    assert fragment in str(info.value) and repr(spec) in str(info.value)


def test_trace_spec_validation() -> None:
    with pytest.raises(ValueError, match="exactly one of synthetic and path"):
        TraceSpec(text="x")
    with pytest.raises(ValueError, match="transforms apply only to trace files"):
        TraceSpec(text="x", synthetic=SyntheticConfig(), transforms=TraceTransforms(n=3))


@settings(max_examples=40, deadline=None)
@given(
    arrival=st.sampled_from(["poisson", "gamma"]),
    rate=st.floats(0.01, 1000.0),
    n=st.integers(1, 10**6),
    seed=st.integers(0, 2**32),
    lo=st.integers(1, 5000),
    width=st.integers(0, 5000),
)
def test_parse_round_trips_values(arrival: str, rate: float, n: int, seed: int, lo: int, width: int) -> None:
    spec = parse_trace_spec(
        f"synthetic:{arrival},rate={rate!r},n={n},seed={seed},in=uniform:{lo}:{lo + width}"
    )
    cfg = spec.synthetic
    assert (cfg.arrival, cfg.rate, cfg.n, cfg.seed, cfg.in_len) == (
        arrival,
        rate,
        n,
        seed,
        UniformLen(lo, lo + width),
    )
    assert spec.label.startswith(f"{arrival}-r")
