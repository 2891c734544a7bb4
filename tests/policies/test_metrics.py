"""The one metrics function, on hand-made timestamps."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from policies.metrics import SLO, inter_token_latencies, summarize, write_results


def frame() -> pd.DataFrame:
    rows = [  # arrival, first token, finish, outputs, token times
        ("a", 0.0, 0.5, 1.5, 3, [0.5, 1.0, 1.5], 100, 0, 0, 100),
        ("b", 1.0, 1.2, 1.6, 5, [1.2, 1.3, 1.4, 1.5, 1.6], 50, 2, 25, 50),
        ("c", 2.0, None, None, 0, [], 80, 0, 0, 0),  # never finished
    ]
    cols = ["request_id", "arrival_s", "first_token_s", "finish_s", "output_len", "token_times", "prompt_len",
            "num_preemptions", "cached_prompt_tokens", "looked_up_prompt_tokens"]
    df = pd.DataFrame(rows, columns=cols)
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["e2e_s"] = df["finish_s"] - df["arrival_s"]
    df["tpot_s"] = (df["finish_s"] - df["first_token_s"]) / (df["output_len"] - 1)
    return df


def test_summary_from_timestamps() -> None:
    steps = pd.DataFrame({"duration_s": [1.0, 3.0], "kv_util": [0.2, 0.6]})
    s = summarize(frame(), steps, SLO(ttft_s=0.3, tpot_s=0.2), wall_s=1.25)
    assert s["num_requests"] == 3 and s["num_finished"] == 2
    assert s["makespan_s"] == pytest.approx(1.6)
    assert s["throughput_output_tok_s"] == pytest.approx(8 / 1.6)
    assert s["throughput_total_tok_s"] == pytest.approx((8 + 150) / 1.6)
    assert s["ttft_mean_s"] == pytest.approx(0.35)
    assert s["ttft_p50_s"] == pytest.approx(0.35)
    assert s["tpot_p99_s"] == pytest.approx(0.5 - 0.4 * 0.01, rel=1e-6)
    assert s["itl_mean_s"] == pytest.approx((0.5 + 0.5 + 0.1 * 4) / 6)
    assert s["slo_attainment"] == pytest.approx(1 / 3)  # only b meets both; c never finished
    assert s["goodput_req_s"] == pytest.approx(1 / 1.6)
    assert s["prefix_cache_hit_rate"] == pytest.approx(25 / 150)
    assert s["preemptions"] == 2
    assert s["kv_util_mean"] == pytest.approx((0.2 + 1.8) / 4) and s["kv_util_max"] == 0.6
    assert s["wall_s"] == 1.25


def test_itl_gaps_stay_within_each_request() -> None:
    gaps = inter_token_latencies([[0.0, 1.0], [5.0, 5.5, 7.0]])
    assert list(gaps) == [1.0, 0.5, 1.5]


def test_write_results_files(tmp_path) -> None:  # noqa: ANN001
    s = summarize(frame())
    write_results(tmp_path, frame(), None, {**s, "x": math.nan})
    back = pd.read_parquet(tmp_path / "requests.parquet")
    assert list(back["token_times"].iloc[1]) == [1.2, 1.3, 1.4, 1.5, 1.6]
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["x"] is None and data["num_finished"] == 2


def test_bad_slo() -> None:
    with pytest.raises(ValueError, match="SLO ttft_s must be > 0"):
        SLO(ttft_s=0)
