"""step_fit prices a real step log's steps from their logged shapes, draft rows included."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.step_fit import step_fit
from sim.cost_model import CalibratedCostModel
from sim.profile import read_profile
from sim.shipped_profiles import MEASURED_DIR, load_cost_model, profile_name


def test_draft_rows_are_priced_as_decode_rows():
    cost = load_cost_model("llama-3.2-1b", "h100")
    base = {"prefill_tokens": [0, 0], "prefills": [0, 0], "decode_ctx_tokens": [4000, 4010],
            "prefill_attn_pairs": [0, 0], "duration_s": [0.002, 0.002]}
    spec = pd.DataFrame(base | {"decodes": [4, 4], "draft_tokens": [0, 12]})
    folded = pd.DataFrame(base | {"decodes": [4, 16]})  # the same rows, counted as decodes
    got, want = step_fit(spec, cost, "t", "p"), step_fit(folded, cost, "t", "p")
    assert got["sim_s"].tolist() == pytest.approx(want["sim_s"].tolist())
    assert got.loc[got["kind"] == "all", "sim_s"].item() == pytest.approx(
        cost.shape_time(0, 0, 4, 4000, 0) + cost.shape_time(0, 0, 16, 4010, 0))


def test_draft_context_is_priced_by_a_profile_that_calibrated_verification():
    profile = read_profile(MEASURED_DIR / profile_name("llama-3.2-1b", "h100"))
    profile["tables"]["draft_attention"] = {"x": [0, 1e5], "time_s": [0.0, 1e-4]}
    profile["speculative_overhead_s"] = {"step": 1e-4, "per_decode": 0.0, "per_draft": 0.0}
    cost = CalibratedCostModel(profile)
    steps = pd.DataFrame({"prefill_tokens": [0], "prefills": [0], "decodes": [4], "draft_tokens": [12],
                          "decode_ctx_tokens": [4000 + 12030], "draft_ctx_tokens": [12030],
                          "prefill_attn_pairs": [0], "duration_s": [0.002]})
    got = step_fit(steps, cost, "t", "p")
    want = cost.shape_time(0, 0, 16, 16030, 0, 0, 12, 12030)
    assert got.loc[got["kind"] == "all", "sim_s"].item() == pytest.approx(want)
    assert want != pytest.approx(cost.shape_time(0, 0, 16, 16030, 0))  # the draft terms changed the price


def test_real_steps_are_compared_without_the_host_tail():
    """A real step's logged duration ends when its tokens are out: the price minus the profile's host tail."""
    profile = read_profile(MEASURED_DIR / profile_name("llama-3.2-1b", "h100"))
    profile["host_tail_s"] = {"step": 1e-5, "per_prefill_token": 1e-7, "per_decode": 2e-6}
    cost = CalibratedCostModel(profile)
    steps = pd.DataFrame({"prefill_tokens": [2048, 0], "prefills": [1, 0], "decodes": [8, 8],
                          "decode_ctx_tokens": [8000, 8008], "prefill_attn_pairs": [2048 * 2049 / 2, 0],
                          "duration_s": [0.01, 0.002]})
    got = step_fit(steps, cost, "t", "p")
    want = (cost.shape_time(2048, 1, 8, 8000, 2048 * 2049 / 2) - (1e-5 + 2048e-7 + 8 * 2e-6)
            + cost.shape_time(0, 0, 8, 8008, 0) - (1e-5 + 8 * 2e-6))
    assert got.loc[got["kind"] == "all", "sim_s"].item() == pytest.approx(want)
