"""Decode-only steps priced from measured steps by batch size and per-sequence context."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from sim.cost_model import CalibratedCostModel, write_profile
from sim.decode_surface import DecodeSurface
from sim.profile import PiecewiseLinear, ProfileError
from tests.sim.test_cost_model import DRAFT_ATTENTION, SPEC, make_plan, tiny_profile

# Measured step times (s) by batch size, against per-sequence context: bends at 512 tokens.
STEPS = {"batch": [1, 4, 8], "ctx": [[40, 512, 4096], [40, 512, 4096], [40, 4096]],
         "time_s": [[1.0e-3, 1.1e-3, 1.3e-3], [1.2e-3, 1.4e-3, 2.0e-3], [1.3e-3, 3.0e-3]]}
ROWS = {b: PiecewiseLinear(c, t) for b, c, t in zip(STEPS["batch"], STEPS["ctx"], STEPS["time_s"], strict=True)}


def delta(b: int, c: float) -> float:
    return ROWS[b](c) - ROWS[b].ys[0]


def test_calibrated_sizes_are_their_own_rows() -> None:
    surface = DecodeSurface(STEPS["batch"], list(ROWS.values()), [1, 2, 4, 8])
    for b in (1, 4, 8):
        for c in (40, 300, 512, 2000, 4096, 9000):  # between points, on them, and extrapolated
            assert surface(b, b * c) == pytest.approx(ROWS[b](c), rel=1e-12)
    assert surface(1, 10) == pytest.approx(1.0e-3)  # below the first context: the first time


def test_sizes_between_take_the_padded_base_and_interpolated_attention() -> None:
    surface = DecodeSurface(STEPS["batch"], list(ROWS.values()), [1, 2, 4, 8])
    c = 1000.0
    # 3 rows replay graph 4: its base; attention 2/3 of the way from batch 1 to batch 4
    assert surface(3, 3 * c) == pytest.approx(1.2e-3 + 2 / 3 * delta(4, c) + 1 / 3 * delta(1, c), rel=1e-12)
    # 2 rows replay graph 2, not calibrated: its base interpolated between batch 1 and 4 at 2
    assert surface(2, 2 * c) == pytest.approx(1.0e-3 + (1.2e-3 - 1.0e-3) / 3 + 1 / 3 * delta(4, c)
                                              + 2 / 3 * delta(1, c), rel=1e-12)
    # 5 rows replay graph 8
    assert surface(5, 5 * c) == pytest.approx(1.3e-3 + 0.25 * delta(8, c) + 0.75 * delta(4, c), rel=1e-12)
    no_graphs = DecodeSurface(STEPS["batch"], list(ROWS.values()), [])  # eager: the step runs at 5 rows
    assert no_graphs(5, 5 * c) == pytest.approx(1.2e-3 + 0.25 * (1.3e-3 - 1.2e-3) + 0.25 * delta(8, c)
                                                + 0.75 * delta(4, c), rel=1e-12)


def test_coverage_ends_at_the_last_calibrated_size() -> None:
    surface = DecodeSurface(STEPS["batch"], list(ROWS.values()), [1, 2, 4, 8, 16])
    assert [surface.covers(b) for b in (0, 1, 8, 9)] == [False, True, True, False]
    # graphs up to 16 but calibrated up to 6: 5 and 6 replay graph 8, past the calibrated sizes
    part = DecodeSurface([1, 4, 6], [ROWS[1], ROWS[4], ROWS[8]], [1, 2, 4, 8, 16])
    assert part.max_batch == 4
    with pytest.raises(ValueError, match="one row per batch size"):
        DecodeSurface([1, 4], [ROWS[1]], [])


def surface_profile(**extra: Any) -> dict[str, Any]:
    return tiny_profile(**extra) | {"graph_batch_sizes": [1, 2, 4, 8, 16], "decode_steps": STEPS}


def test_cost_model_prices_plain_decode_steps_from_the_surface() -> None:
    cm = CalibratedCostModel(surface_profile())
    tables_only = CalibratedCostModel(tiny_profile() | {"graph_batch_sizes": [1, 2, 4, 8, 16]})
    surface = DecodeSurface(STEPS["batch"], list(ROWS.values()), [1, 2, 4, 8, 16])
    rng = random.Random(3)
    for _ in range(200):
        ctx = [rng.randint(1, 6000) for _ in range(rng.randint(1, 16))]
        plan = make_plan([], ctx)
        want = surface(len(ctx), sum(ctx)) if len(ctx) <= 8 else tables_only.step_time(plan)
        assert cm.step_time(plan) == want
        assert cm.shape_time(0, 0, len(ctx), sum(ctx), 0) == want  # the step log is re-priced the same way
    mixed = make_plan([(5, 0)], [100, 300])  # a prefill: the tables
    assert cm.step_time(mixed) == tables_only.step_time(mixed)
    swapped = make_plan([], [100, 300], swaps=1)
    assert cm.step_time(swapped) == tables_only.step_time(swapped)


def test_verification_steps_keep_their_own_tables() -> None:
    spec = {"speculative_overhead_s": SPEC}
    cm = CalibratedCostModel(surface_profile(draft_attention=DRAFT_ATTENTION) | spec)
    tables_only = CalibratedCostModel(tiny_profile(draft_attention=DRAFT_ATTENTION) | spec
                                      | {"graph_batch_sizes": [1, 2, 4, 8, 16]})
    assert cm.shape_time(0, 0, 6, 3000, 0, 0, 4, 2000) == tables_only.shape_time(0, 0, 6, 3000, 0, 0, 4, 2000)
    # without the speculative tables a draft row is a decode row: the surface prices the step
    plain = CalibratedCostModel(surface_profile())
    assert plain.shape_time(0, 0, 6, 3000, 0, 0, 4, 2000) == DecodeSurface(
        STEPS["batch"], list(ROWS.values()), [1, 2, 4, 8, 16])(6, 3000)


def _bad(tmp_path: Path, steps: Any) -> str:
    with pytest.raises(ProfileError) as err:
        write_profile(tiny_profile() | {"decode_steps": steps}, tmp_path / "p.json")
    return str(err.value)


def test_bad_decode_steps_name_the_field(tmp_path: Path) -> None:
    assert "'decode_steps' must be an object with exactly the lists 'batch', 'ctx' and 'time_s'" in _bad(
        tmp_path, {"batch": [1], "ctx": [[1, 2]]})
    assert "must be non-empty lists of equal length" in _bad(tmp_path, STEPS | {"ctx": STEPS["ctx"][:2]})
    assert "'decode_steps.batch' must be strictly increasing positive integers, got [4, 1, 8]" in _bad(
        tmp_path, STEPS | {"batch": [4, 1, 8]})
    assert "'decode_steps[batch=8].x' must be strictly increasing" in _bad(
        tmp_path, STEPS | {"ctx": [*STEPS["ctx"][:2], [40, 40]]})
    assert "'decode_steps[batch=4].time_s[1]' must be a finite number >= 0" in _bad(
        tmp_path, STEPS | {"time_s": [STEPS["time_s"][0], [1e-3, -1.0, 2e-3], STEPS["time_s"][2]]})
    assert "'decode_steps[batch=1].time_s': the last segment decreases" in _bad(
        tmp_path, STEPS | {"time_s": [[1e-3, 2e-3, 1e-3], *STEPS["time_s"][1:]]})
