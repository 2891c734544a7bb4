"""Cost models: roofline equivalence, interpolation, profile validation, loading."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from policies.types import PrefillChunk, StepPlan
from sim import roofline
from sim.cost_model import CalibratedCostModel, RooflineCostModel
from sim.make_default_profiles import make_roofline_profile
from sim.profile import PiecewiseLinear, ProfileError
from sim.shipped_profiles import load_cost_model

SEQ = object()  # cost models only count the plan's sequences


def make_plan(prefill: list[tuple[int, int]] = (), decode_ctx: list[int] = (), swaps: int = 0) -> StepPlan:
    f = roofline.step_features(prefill, decode_ctx)
    return StepPlan(step_id=0, now=0.0, prefills=[PrefillChunk(SEQ, c, q) for q, c in prefill],
                    decodes=[SEQ] * len(decode_ctx), swap_in=[(0, 0)] * swaps,
                    num_prefill_tokens=f["prefill_tokens"], prefill_ctx_tokens=f["prefill_ctx"],
                    prefill_attn_pairs=f["prefill_pairs"], decode_ctx_tokens=f["decode_ctx"])


def random_batches(seed: int, n: int) -> list[tuple[list[tuple[int, int]], list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chunks = rng.randint(0, 3)
        pre = [(rng.randint(1, 4096), rng.choice([0, rng.randint(1, 8192)])) for _ in range(chunks)]
        dec = [rng.randint(1, 8192) for _ in range(rng.randint(0 if pre else 1, 300))]
        out.append((pre, dec))
    return out


@pytest.mark.parametrize(("model", "gpu", "kv"),
                         [("llama-3.2-1b", "h100", "bf16"), ("llama-3.2-3b", "h200", "int8")])
def test_roofline_cost_model_equals_roofline(model: str, gpu: str, kv: str) -> None:
    cm = RooflineCostModel(model, gpu, kv_dtype=kv)
    for pre, dec in random_batches(1, 60) + [([], [1]), ([(1, 0)], []), ([(50000, 0)], [])]:
        expect = roofline.step_time(model, gpu, pre, dec, kv_dtype=kv)
        assert cm.step_time(make_plan(pre, dec)) == pytest.approx(expect, rel=1e-9)


def test_roofline_overhead_swaps_and_empty_step() -> None:
    cm = RooflineCostModel("llama-3.2-1b", "h100", block_size=16, step_overhead_s=1e-4)
    block_s = 32768 * 16 / 55e9
    assert cm.step_time(make_plan()) == 0.0
    assert cm.step_time(make_plan(swaps=3)) == pytest.approx(1e-4 + 3 * block_s)
    base = roofline.step_time("llama-3.2-1b", "h100", [], [100])
    assert cm.step_time(make_plan([], [100], swaps=2)) == pytest.approx(base + 1e-4 + 2 * block_s)


@pytest.mark.parametrize(("model", "gpu"), [("llama-3.2-1b", "h100"), ("llama-3.2-3b", "h200")])
def test_calibrated_from_roofline_profile_agrees(model: str, gpu: str) -> None:
    calibrated = CalibratedCostModel(make_roofline_profile(model, gpu))
    analytic = RooflineCostModel(model, gpu)
    for pre, dec in random_batches(2, 200):
        plan = make_plan(pre, dec)
        assert calibrated.step_time(plan) == pytest.approx(analytic.step_time(plan), rel=0.03)
    # Decode-only plans at the reference context are exact.
    plan = make_plan([], [1024] * 7)
    assert calibrated.step_time(plan) == pytest.approx(analytic.step_time(plan), rel=1e-9)


def test_piecewise_linear() -> None:
    f = PiecewiseLinear([1, 3, 7], [2.0, 6.0, 7.0])
    assert [f(1), f(3), f(7)] == [2.0, 6.0, 7.0]  # exact at grid points
    assert f(2) == pytest.approx(4.0) and f(5) == pytest.approx(6.5)  # linear between
    assert f(0.5) == 2.0  # flat below the first point
    assert f(11) == pytest.approx(8.0)  # last segment extended
    with pytest.raises(ValueError, match="strictly increasing"):
        PiecewiseLinear([1, 1], [0.0, 1.0])


def tiny_profile(**tables: Any) -> dict[str, Any]:
    base = {"dense": {"x": [1, 11], "time_s": [1e-3, 2e-3]},
            "decode_attention": {"x": [0, 1000], "time_s": [0.0, 1e-4]},
            "prefill_attention": {"x": [1, 101], "time_s": [1e-5, 2.01e-3]},
            "lm_head": {"x": [1, 5], "time_s": [1e-4, 1.4e-4]}}
    return {"format": "servegym-profile/1",
            "meta": {"model": "m", "gpu": "g", "dtype": "bf16", "kv_cache_dtype": "bf16",
                     "quantization": None, "source": "measured", "command": "test",
                     "created": "2025-01-01T00:00:00+00:00"},
            "step_overhead_s": 5e-5, "kv_bytes_per_token": 1000, "swap_bytes_per_s": 1e9,
            "tables": base | tables}


def test_calibrated_formula_by_hand() -> None:
    cm = CalibratedCostModel(tiny_profile(), block_size=4)
    # 1 chunk of 5 tokens from scratch (15 pairs) + 2 decodes reading 500 tokens; 1 swapped block.
    plan = make_plan([(5, 0)], [200, 300], swaps=1)
    dense, lm = 1e-3 + 6 * 1e-4, 1e-4 + 2 * 1e-5  # 7 tokens; 3 sampling positions
    pf, dec, swap = 1e-5 + 14 * 2e-5, 5e-5, 4 * 1000 / 1e9
    assert cm.step_time(plan) == pytest.approx(5e-5 + dense + lm + pf + dec + swap, rel=1e-12)
    assert cm.step_time(make_plan()) == 0.0
    tables = {k: v for k, v in tiny_profile()["tables"].items() if k != "lm_head"}
    no_lm = CalibratedCostModel({**tiny_profile(), "tables": tables}, block_size=4)
    assert no_lm.step_time(plan) == pytest.approx(cm.step_time(plan) - lm)


def test_graph_padding_and_eager_steps() -> None:
    """Graphed decode steps cost dense at the padded graph size, steps of more decodes than the largest
    graph that graph on chunks of their rows; steps with a prefill cost mixed_dense."""
    eager = {"x": [1, 101], "time_s": [5e-3, 6e-3]}
    cm = CalibratedCostModel(tiny_profile(mixed_dense=eager) | {"graph_batch_sizes": [1, 2, 4, 8]})
    lm = {n: 1e-4 + (n - 1) * 1e-5 for n in range(1, 20)}
    ovh = 5e-5
    for n, padded in ((1, 1), (3, 4), (4, 4), (5, 8), (8, 8)):
        plan = make_plan([], [100] * n)
        dense = 1e-3 + (padded - 1) * 1e-4
        assert cm.step_time(plan) == pytest.approx(ovh + dense + lm[n] + 100 * n * 1e-7, rel=1e-12)
    nine = make_plan([], [100] * 9)  # beyond the largest graph: graph 8 on 8 rows, then graph 1 on the last
    assert cm.step_time(nine) == pytest.approx(ovh + (1e-3 + 7e-4) + 1e-3 + lm[9] + 900 * 1e-7, rel=1e-12)
    twenty = make_plan([], [100] * 20)  # 8 + 8 + 4
    assert cm.step_time(twenty) == pytest.approx(ovh + 2 * (1e-3 + 7e-4) + (1e-3 + 3e-4) + 1e-4 + 19e-5
                                                 + 2000 * 1e-7, rel=1e-12)
    mixed = make_plan([(5, 0)], [100, 100])  # a prefill makes the step eager: 7 tokens
    pf = 1e-5 + 14 * 2e-5
    assert cm.step_time(mixed) == pytest.approx(ovh + 5e-3 + 6e-5 + lm[3] + pf + 200 * 1e-7, rel=1e-12)
    no_graphs = CalibratedCostModel(tiny_profile(mixed_dense=eager))  # decodes priced by dense
    assert no_graphs.step_time(make_plan([], [100] * 3)) == pytest.approx(
        ovh + 1e-3 + 2e-4 + lm[3] + 300 * 1e-7, rel=1e-12)
    assert cm.shape_time(5, 1, 2, 200, 15) == pytest.approx(cm.step_time(mixed), rel=1e-12)


def test_step_time_equals_shape_time_exactly() -> None:
    """``step_time`` has a fast path for graphed decode-only steps; every plan must price exactly as its
    aggregates do through ``shape_time`` (the step log is re-priced that way)."""
    cm = load_cost_model("llama-3.2-1b", "h100")
    for pre, dec in random_batches(7, 300) + [([], [5]), ([], [9000] * 256), ([], [3] * 300)]:
        for swaps in (0, 2):
            plan = make_plan(pre, dec, swaps)
            want = cm.shape_time(plan.num_prefill_tokens, len(plan.prefills), len(plan.decodes),
                                 plan.decode_ctx_tokens, plan.prefill_attn_pairs, swaps,
                                 prefill_ctx_tokens=plan.prefill_ctx_tokens)
            assert cm.step_time(plan) == want


def test_mixed_steps_priced_at_the_padded_graph_token_count() -> None:
    """With graph_token_sizes, a step holding a prefill costs mixed_dense of the next captured count;
    beyond the largest count it runs eagerly and costs mixed_dense of its own tokens."""
    mixed = {"x": [1, 101], "time_s": [5e-3, 6e-3]}
    sizes = {"graph_batch_sizes": [1, 2, 4, 8], "graph_token_sizes": [4, 16, 32]}
    cm = CalibratedCostModel(tiny_profile(mixed_dense=mixed) | sizes)
    plain = CalibratedCostModel(tiny_profile(mixed_dense=mixed) | {"graph_batch_sizes": [1, 2, 4, 8]})
    for prefill, decodes, padded in (([(3, 0)], 0, 4), ([(5, 0)], 2, 16), ([(16, 0)], 0, 16), ([(9, 2)], 8, 32)):
        plan = make_plan(prefill, [100] * decodes)
        tokens = prefill[0][0] + decodes
        assert cm.step_time(plan) - plain.step_time(plan) == pytest.approx((padded - tokens) * 1e-5, rel=1e-9)
    big = make_plan([(40, 0)], [100])  # 41 tokens > 32: eager, unpadded
    assert cm.step_time(big) == pytest.approx(plain.step_time(big), rel=1e-12)
    decode_only = make_plan([], [100] * 3)  # decode-only steps keep their batch-size graphs
    assert cm.step_time(decode_only) == pytest.approx(plain.step_time(decode_only), rel=1e-12)


def test_mixed_decode_table_prices_decodes_beside_a_prefill_only() -> None:
    """mixed_decode(D) is added for the D decodes of a step holding a prefill, never to decode-only or
    prefill-only steps."""
    extra = {"x": [0, 100], "time_s": [0.0, 1e-3]}  # 10 us per decode
    with_table = CalibratedCostModel(tiny_profile(mixed_decode=extra) | {"graph_batch_sizes": [1, 2, 4, 8]})
    without = CalibratedCostModel(tiny_profile() | {"graph_batch_sizes": [1, 2, 4, 8]})
    mixed = make_plan([(5, 0)], [100] * 7)
    assert with_table.step_time(mixed) - without.step_time(mixed) == pytest.approx(7e-5, rel=1e-9)
    for plan in (make_plan([(5, 0)], []), make_plan([], [100] * 7)):
        assert with_table.step_time(plan) == pytest.approx(without.step_time(plan), rel=1e-12)


SPEC = {"step": 2e-5, "per_decode": 3e-6, "per_draft": 1e-6}
DRAFT_ATTENTION = {"x": [0, 1000], "time_s": [0.0, 2e-5]}  # a fifth of decode_attention's rate


def verify_plan(ctxs: list[int], k: int) -> StepPlan:
    """Decodes at ``ctxs`` tokens (their own token included), each verifying ``k`` drafts."""
    plan = make_plan([], ctxs)
    plan.draft_lens, plan.num_draft_tokens = [k] * len(ctxs), k * len(ctxs)
    plan.draft_ctx_tokens = sum(k * c + k * (k + 1) // 2 for c in ctxs)
    plan.decode_ctx_tokens += plan.draft_ctx_tokens
    return plan


def test_verification_steps_priced_by_the_draft_tables() -> None:
    """With draft_attention and speculative_overhead_s a step's draft rows read at the draft table's rate
    and add the speculative overhead; without them (or without drafts) they cost like decode rows."""
    sizes = {"graph_batch_sizes": [1, 2, 4, 8, 16]}
    spec = CalibratedCostModel(tiny_profile(draft_attention=DRAFT_ATTENTION) | sizes
                               | {"speculative_overhead_s": SPEC})
    plain = CalibratedCostModel(tiny_profile() | sizes)
    plan = verify_plan([100, 200], 3)  # 2 decodes + 6 drafts = 8 rows; draft rows read 306 + 606 keys
    assert plan.draft_ctx_tokens == 912
    ovh, dense8, lm8 = 5e-5, 1e-3 + 7e-4, 1e-4 + 7e-5
    want = ovh + dense8 + lm8 + 300 * 1e-7 + 912 * 2e-8 + 2e-5 + 2 * 3e-6 + 6 * 1e-6
    assert spec.step_time(plan) == pytest.approx(want, rel=1e-12)
    assert plain.step_time(plan) == pytest.approx(ovh + dense8 + lm8 + 1212 * 1e-7, rel=1e-12)
    assert spec.step_time(plan) == spec.shape_time(0, 0, 8, plan.decode_ctx_tokens, 0, 0, 6, 912)
    no_drafts = make_plan([], [100, 200])
    assert spec.step_time(no_drafts) == plain.step_time(no_drafts)
    beside = verify_plan([100, 200], 3)  # beside a prefill chunk: the same draft terms
    beside.prefills, beside.num_prefill_tokens, beside.prefill_attn_pairs = [PrefillChunk(SEQ, 0, 5)], 5, 15
    plain_beside = verify_plan([100, 200], 3)
    plain_beside.prefills, plain_beside.num_prefill_tokens, plain_beside.prefill_attn_pairs = beside.prefills, 5, 15
    assert spec.step_time(beside) - plain.step_time(plain_beside) == pytest.approx(
        912 * 2e-8 - 912 * 1e-7 + 2e-5 + 6e-6 + 6e-6, rel=1e-9)


def _bad(tmp_path: Path, profile: Any) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(profile) if not isinstance(profile, str) else profile)
    with pytest.raises(ProfileError) as err:
        CalibratedCostModel.from_file(path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_bad_profiles_name_file_and_field(tmp_path: Path) -> None:
    p = tiny_profile()
    assert "'format' must be 'servegym-profile/1'" in _bad(tmp_path, p | {"format": "servegym-profile/0"})
    del p["tables"]["decode_attention"]
    assert "'tables.decode_attention' is missing" in _bad(tmp_path, p)
    msg = _bad(tmp_path, tiny_profile(dense={"x": [1, 5, 5], "time_s": [1.0, 2.0, 3.0]}))
    assert "'tables.dense.x' must be strictly increasing: x[2]=5.0 <= x[1]=5.0" in msg
    msg = _bad(tmp_path, tiny_profile(lm_head={"x": [1, 2], "time_s": [-1.0, 2.0]}))
    assert "'tables.lm_head.time_s[0]' must be a finite number >= 0" in msg
    msg = _bad(tmp_path, tiny_profile(prefill_attention={"x": [1, 2], "time_s": [3.0, 2.0]}))
    assert "last segment decreases" in msg
    assert "'tables.dense': 'x' and 'time_s' must be lists" in _bad(tmp_path, tiny_profile(
        dense={"x": [1, 2], "time_s": [1.0]}))
    assert "unknown tables ['attn']" in _bad(tmp_path, tiny_profile(attn={"x": [1, 2], "time_s": [1, 2]}))
    meta = {k: v for k, v in tiny_profile()["meta"].items() if k != "created"}
    assert "'meta' is missing ['created']" in _bad(tmp_path, tiny_profile() | {"meta": meta})
    assert "'swap_bytes_per_s' must be a finite number > 0" in _bad(tmp_path, tiny_profile() | {
        "swap_bytes_per_s": 0})
    assert "not valid JSON" in _bad(tmp_path, "{")
    together = "'speculative_overhead_s' and 'tables.draft_attention' must be given together"
    assert together in _bad(tmp_path, tiny_profile(draft_attention=DRAFT_ATTENTION))
    assert together in _bad(tmp_path, tiny_profile() | {"speculative_overhead_s": SPEC})
    with_draft = tiny_profile(draft_attention=DRAFT_ATTENTION)
    assert "must be an object with exactly the keys ['step', 'per_decode', 'per_draft']" in _bad(
        tmp_path, with_draft | {"speculative_overhead_s": {"step": 0.0}})
    assert "'speculative_overhead_s.per_draft' must be a finite number >= 0" in _bad(
        tmp_path, with_draft | {"speculative_overhead_s": SPEC | {"per_draft": -1.0}})
    for sizes in ([], [2, 1], [0, 4], "8", [1.5]):
        assert "'graph_batch_sizes' must be a non-empty strictly increasing" in _bad(
            tmp_path, tiny_profile() | {"graph_batch_sizes": sizes})
        assert "'graph_token_sizes' must be a non-empty strictly increasing" in _bad(
            tmp_path, tiny_profile() | {"graph_token_sizes": sizes})
    tail = {"step": 1e-5, "per_prefill_token": 1e-8, "per_decode": 1e-6}
    assert "'host_tail_s' must be an object with exactly the keys ['step', 'per_prefill_token', 'per_decode']" \
        in _bad(tmp_path, tiny_profile() | {"host_tail_s": {"step": 0.0}})
    assert "'host_tail_s.per_decode' must be a finite number >= 0" in _bad(
        tmp_path, tiny_profile() | {"host_tail_s": tail | {"per_decode": -1e-6}})
    for rows in (0, 2.5, True):
        assert f"field 'verify_group_rows' must be a positive integer, got {rows!r}" in _bad(
            tmp_path, tiny_profile() | {"verify_group_rows": rows})


def test_host_tail_prices_the_bookkeeping_after_a_step() -> None:
    """``host_tail_s``: ``step + per_prefill_token * tokens + per_decode * decode rows``; None without it."""
    assert CalibratedCostModel(tiny_profile()).host_tail is None
    cost = CalibratedCostModel(tiny_profile() | {"host_tail_s": {"step": 2e-5, "per_prefill_token": 1e-7,
                                                                 "per_decode": 3e-6}})
    plan = make_plan(prefill=[(100, 0)], decode_ctx=[10, 20])
    assert cost.host_tail is not None
    assert cost.host_tail(plan) == pytest.approx(2e-5 + 100 * 1e-7 + 2 * 3e-6)
    assert cost.tail_time(100, 2) == cost.host_tail(plan)
    assert cost.step_time(plan) == CalibratedCostModel(tiny_profile()).step_time(plan)  # part of the price


def test_prefill_context_table_prices_cached_tokens_by_chunk_size() -> None:
    ctx_table = {"x": [1, 101], "time_s": [2e-7, 4.2e-6]}  # seconds per cached token, by tokens per chunk
    plain, cm = CalibratedCostModel(tiny_profile()), CalibratedCostModel(tiny_profile(prefill_context=ctx_table))
    fresh = make_plan([(5, 0)], [200])
    assert cm.step_time(fresh) == plain.step_time(fresh)  # no cached token: the same price
    # 5 tokens on 300 cached: the 15 pairs within the chunk by prefill_attention, 300 tokens at f(5)
    cached = make_plan([(5, 300)], [200])
    f5 = 2e-7 + 4 * 4e-8
    pf = PiecewiseLinear(*tiny_profile()["tables"]["prefill_attention"].values())
    want = plain.step_time(cached) - pf(5 * 300 + 15) + pf(15) + f5 * 300
    assert cm.step_time(cached) == pytest.approx(want, rel=1e-12)
    # a step log has no prefill_ctx_tokens column: one chunk's context follows from its pairs
    assert cm.shape_time(5, 1, 1, 200, 5 * 300 + 15) == pytest.approx(cm.step_time(cached), rel=1e-12)
    # chunks are taken as equal: 2 chunks of 10 tokens in all read 200 cached tokens at f(5)
    two = make_plan([(4, 200), (6, 0)], [])
    pairs = 4 * 200 + 10 + 21
    base = plain.step_time(two) - pf(pairs)
    assert cm.step_time(two) == pytest.approx(base + pf(max(0, pairs - 5 * 200)) + f5 * 200, rel=1e-12)
