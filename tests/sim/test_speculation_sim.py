"""Speculative decoding in the simulator: the acceptance model, pricing of draft rows, end to end."""

from __future__ import annotations

import pytest

from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.speculation import SpeculationPolicy, expected_tokens
from policies.types import Request, StepPlan
from sim.acceptance import GeometricAcceptance
from sim.config import SimConfig
from sim.cost_model import RooflineCostModel
from sim.shipped_profiles import load_cost_model
from sim.simulator import Simulator, simulate

SEQ = object()  # cost models only count the plan's sequences


def test_geometric_acceptance_matches_its_distribution():
    model = GeometricAcceptance(0.7, seed=3)
    draws = model.draw([4] * 40_000)
    mean = sum(draws) / len(draws)
    assert mean + 1 == pytest.approx(expected_tokens(0.7, 4), rel=0.02)
    assert all(0 <= a <= 4 for a in draws)
    share_all = sum(a == 4 for a in draws) / len(draws)
    assert share_all == pytest.approx(0.7**4, abs=0.01)
    assert GeometricAcceptance(0.0).draw([3, 5]) == [0, 0]
    assert GeometricAcceptance(1.0).draw([3, 5, 0]) == [3, 5, 0]
    assert GeometricAcceptance(0.5, seed=1).draw([4] * 50) == GeometricAcceptance(0.5, seed=1).draw([4] * 50)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        GeometricAcceptance(1.5)
    with pytest.raises(ValueError, match=r"spec_acceptance must be in \[0, 1\]"):
        SimConfig(spec_acceptance=-0.1)


@pytest.mark.parametrize("kind", ["calibrated", "roofline"])
def test_draft_rows_are_priced_as_decode_rows(kind):
    """A decode verifying k drafts costs what k + 1 decodes of those contexts cost."""
    cm = load_cost_model("llama-3.2-1b", "h100", kind=kind)
    spec = StepPlan(1, 0.0, decodes=[SEQ] * 3, decode_ctx_tokens=3 * 500 + 9, draft_lens=[3, 0, 0],  # type: ignore[list-item]
                    num_draft_tokens=3)
    rows = StepPlan(1, 0.0, decodes=[SEQ] * 6, decode_ctx_tokens=3 * 500 + 9)  # type: ignore[list-item]
    assert cm.step_time(spec) == cm.step_time(rows)
    assert cm.step_time(spec) > cm.step_time(StepPlan(1, 0.0, decodes=[SEQ] * 3,  # type: ignore[list-item]
                                                      decode_ctx_tokens=1500))
    if isinstance(cm, RooflineCostModel):
        return
    assert cm.step_time(spec) == cm.shape_time(0, 0, spec.num_decode_rows, spec.decode_ctx_tokens, 0)


def trace(n: int = 30) -> list[Request]:
    return [Request(str(i), 0.05 * i, 200 + 7 * i, 60) for i in range(n)]


def run(alpha: float | None, k: int = 4):
    spec = SpeculationPolicy(k) if alpha is not None else None
    acc = GeometricAcceptance(alpha, seed=0) if alpha is not None else None
    cm = load_cost_model("llama-3.2-1b", "h100")
    return simulate(trace(), make_policy("continuous"), SchedulerConfig(num_gpu_blocks=4000), cm,
                    speculation=spec, acceptance=acc)


def test_simulated_speculation_trades_rows_for_steps():
    base, none, half, full = run(None), run(0.0), run(0.5), run(1.0)
    for res in (none, half, full):
        assert res.summary["num_finished"] == 30
        assert (res.requests["output_len"] == 60).all()
    assert none.summary["spec_accepted_tokens"] == 0 and none.summary["spec_alpha"] == 0.0
    assert full.summary["spec_acceptance_rate"] == 1.0
    assert half.summary["spec_alpha"] == pytest.approx(0.5, abs=0.05)
    # rejecting everything costs draft rows for nothing; accepting everything needs far fewer steps
    assert none.summary["tpot_mean_s"] > base.summary["tpot_mean_s"]
    assert full.summary["num_steps"] < base.summary["num_steps"] / 2
    assert full.summary["tpot_mean_s"] < half.summary["tpot_mean_s"] < base.summary["tpot_mean_s"]
    assert full.steps["draft_tokens"].sum() == full.summary["spec_draft_tokens"]
    assert base.steps["draft_tokens"].sum() == 0 and base.summary["spec_draft_tokens"] == 0


def test_a_speculating_scheduler_needs_an_acceptance_model():
    sched = Scheduler(SchedulerConfig(num_gpu_blocks=64), make_policy("continuous"), SpeculationPolicy(2))
    with pytest.raises(ValueError, match="no acceptance model"):
        Simulator(trace(2), sched, load_cost_model("llama-3.2-1b", "h100"))


def test_simulation_counts_draft_reads_as_the_profiled_engine_attends(tmp_path):
    """A profile's ``verify_group_rows`` (the engine's row groups) sets the scheduler's draft context when
    its ``SchedulerConfig`` leaves it None; an explicit value wins. Pieces of 8 rows hold a decode and its
    4 drafts: no re-read, so those steps log no draft context and cost less."""
    import json

    from sim.cost_model import CalibratedCostModel
    from sim.shipped_profiles import MEASURED_DIR, profile_name

    profile = json.loads((MEASURED_DIR / profile_name("llama-3.2-1b", "h100")).read_text())
    grouped = CalibratedCostModel(profile | {"verify_group_rows": 8})
    cfg = SchedulerConfig(num_gpu_blocks=4000)
    spec, policy = SpeculationPolicy(4), make_policy("continuous")

    def sim(cost, config):
        return simulate(trace(), policy, config, cost, speculation=spec, acceptance=GeometricAcceptance(0.0))

    per_row = sim(CalibratedCostModel(profile), cfg)
    auto, explicit = sim(grouped, cfg), sim(grouped, SchedulerConfig(num_gpu_blocks=4000, verify_group_rows=1))
    assert per_row.steps["draft_ctx_tokens"].sum() > 0 and auto.steps["draft_ctx_tokens"].sum() == 0
    assert explicit.steps["draft_ctx_tokens"].sum() == per_row.steps["draft_ctx_tokens"].sum()
    assert auto.summary["tpot_mean_s"] < per_row.summary["tpot_mean_s"]
    assert cfg.verify_group_rows is None  # simulate() did not change the caller's config
