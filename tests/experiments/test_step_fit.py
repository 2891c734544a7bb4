"""step_fit prices a real step log's steps from their logged shapes, draft rows included."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.step_fit import step_fit
from sim.cost_model import load_cost_model


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
