"""The servegym command line: files written, and bad input rejected with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments.cli import main

REQUIRED = {"num_requests", "throughput_output_tok_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
            "e2e_p50_s", "e2e_p99_s", "preemptions", "prefix_cache_hit_rate", "wall_s"}


def test_sim_writes_requests_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["sim", "--trace", "synthetic:poisson,rate=20,n=200,seed=0", "--policy", "continuous",
                 "--model", "llama-3.2-1b", "--gpu", "h100", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary.keys() >= REQUIRED
    assert summary["num_requests"] == 200 and summary["throughput_output_tok_s"] > 0
    df = pd.read_parquet(out / "requests.parquet")
    assert len(df) == 200 and df["finish_s"].notna().all()


def test_real_trace_with_prefix_structure(tmp_path: Path) -> None:
    trace = str(Path(__file__).parents[3] / "shared/traces/mooncake_conversation_trace.jsonl")
    rates = []
    for caching in ("true", "false"):
        out = tmp_path / caching
        code = main(["sim", "--trace", f"{trace}:n=60,len_scale=0.1", "--policy", "prefix-aware",
                     "--enable-prefix-caching", caching, "--out", str(out), "--quiet"])
        assert code == 0
        rates.append(json.loads((out / "summary.json").read_text())["prefix_cache_hit_rate"])
    assert rates[0] > 0.02 and rates[1] == 0.0  # Mooncake requests share prefix blocks


def test_compare_writes_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", "--traces", "synthetic:poisson,rate=10,n=60,seed=0",
                 "--policies", "static", "continuous", "--rate-scales", "1", "2", "--workers", "1",
                 "--out", str(tmp_path)])
    assert code == 0
    table = pd.read_csv(tmp_path / "summary.csv")
    assert len(table) == 4 and set(table["policy"]) == {"static", "continuous"}
    for png in ("latency_cdf.png", "throughput_vs_load.png", "kv_util.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert "continuous" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "fastest"], "unknown policy 'fastest'"),
    (["--block-size", "0"], "block_size must be >= 1"),
    (["--num-gpu-blocks", "3"], "pool has only 3 blocks"),
    (["--trace", "synthetic:poisson,rate=-1"], "rate"),
    (["--gpu", "tpu9"], "tpu9"),
    (["--preemption-mode", "swap"], "needs num_cpu_blocks"),
    (["--speculation", "often"], "unknown speculation policy 'often'"),
    (["--speculation", "fixed:num_draft_tokens=0"], "num_draft_tokens must be >= 1"),
    (["--speculation", "fixed", "--spec-acceptance", "2"], "spec_acceptance must be in [0, 1]"),
])
def test_bad_input_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                          message: str) -> None:
    base = {"--trace": "synthetic:poisson,rate=5,n=20,seed=0", "--out": str(tmp_path)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["sim", "--quiet", *[x for kv in base.items() for x in kv]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_malformed_trace_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,12,x\n")
    assert main(["sim", "--trace", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "line 2" in err and "GeneratedTokens" in err
