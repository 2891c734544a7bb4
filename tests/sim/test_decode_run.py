"""Runs of repeated decode steps (``sim.decode_run``) book exactly what one step at a time books.

Every comparison is bit for bit: the per-request frame (token times included), the step log, the summary
and the lookahead tracker's served steps, with runs on and off, over policies, KV pools small enough to
preempt (recompute and swap), shared prefixes whose cached blocks get evicted mid-run, sampled requests,
host tails, lookahead profiles and the roofline model.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.speculation import make_speculation
from policies.types import Request, SamplingParams, StepPlan
from sim.acceptance import GeometricAcceptance
from sim.cost_model import CalibratedCostModel
from sim.roofline_cost import RooflineCostModel
from sim.shipped_profiles import MEASURED_DIR, PROFILES_DIR
from sim.simulator import Simulator
from tests.sim.test_simulator import LinearCost

SAMPLED = SamplingParams(temperature=0.8, seed=1)


def trace(n: int, seed: int, gap_s: float, shared: bool = False) -> list[Request]:
    """``n`` requests, exponential gaps of mean ``gap_s``; with ``shared``, prompts reuse a few prefixes."""
    rng = np.random.default_rng(seed)
    reqs, t = [], 0.0
    for i in range(n):
        t += float(rng.exponential(gap_s))
        prompt, out = int(rng.integers(1, 300)), int(rng.integers(1, 250))
        hashes = None
        if shared:  # 16-token blocks: the first few name one of three prefixes, the rest are unique
            hashes = tuple(int(rng.integers(3)) * 1000 + b if b < 4 else 10**6 * (i + 1) + b
                           for b in range(-(-prompt // 16)))
        reqs.append(Request(str(i), t, prompt, out, block_hashes=hashes, hash_block_size=16 if shared else 0,
                            sampling=SAMPLED if i % 7 == 3 else SamplingParams()))
    return reqs


def profile(name: str, lookahead: bool = False) -> CalibratedCostModel:
    """A shipped measured profile; with ``lookahead``, plus a cold table 0.2 ms over its served one."""
    data: dict[str, Any] = json.loads((MEASURED_DIR / name).read_text())
    if lookahead:
        steps = data["decode_steps"]
        data["decode_steps_cold"] = steps | {"time_s": [[t + 2e-4 for t in row] for row in steps["time_s"]]}
    return CalibratedCostModel(data)


def run(reqs: list[Request], cost: Any, cfg: SchedulerConfig, policy: str, runs: bool) -> Simulator:
    sim = Simulator(reqs, Scheduler(cfg, make_policy(policy)), cost, decode_runs=runs)
    sim.run()
    return sim


def assert_same(a: Simulator, b: Simulator) -> None:
    ra, rb = a.result(), b.result()
    pd.testing.assert_frame_equal(ra.requests, rb.requests, check_exact=True)
    pd.testing.assert_frame_equal(ra.steps, rb.steps, check_exact=True)
    assert ra.summary == rb.summary
    assert a.num_steps == b.num_steps and a.scheduler.num_preemptions == b.scheduler.num_preemptions


H100 = "llama-3.2-1b_h100_bf16.json"
H200 = "llama-3.2-1b_h200_bf16.json"  # with host_tail_s
ROOFLINE_PROFILE = PROFILES_DIR / H100  # no graphs: decode steps take shape_time's general path
# cost model, mean gap between arrivals, KV blocks, preemption mode, policy, shared prefixes, and the
# smallest share of the steps that runs book (busy pools keep preempted requests waiting: few runs)
CASES = {
    "sparse, shipped H100": (lambda: profile(H100), 0.6, 4000, "recompute", "continuous", False, 0.9),
    "sparse, host tail + lookahead": (lambda: profile(H200, True), 0.6, 4000, "recompute", "continuous", False,
                                      0.9),
    "busy, small pool, recompute": (lambda: profile(H200, True), 0.02, 60, "recompute", "continuous", False,
                                    0.02),
    "busy, small pool, swap": (lambda: profile(H100), 0.02, 60, "swap", "continuous", False, 0.02),
    "shared prefixes, evicting": (lambda: profile(H200, True), 0.05, 90, "recompute", "prefix-aware", True,
                                  0.7),
    "dynamic batches, roofline": (lambda: RooflineCostModel("llama-3.2-1b", "h100"), 0.05, 400, "recompute",
                                  "dynamic", False, 0.2),
    "static batches": (lambda: profile(H100), 0.1, 400, "recompute", "static", False, 0.3),
    "roofline-derived profile (no graphs)": (lambda: CalibratedCostModel.from_file(ROOFLINE_PROFILE), 0.6, 4000,
                                             "recompute", "continuous", False, 0.9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_runs_book_what_single_steps_book(case: str) -> None:
    make_cost, gap, blocks, mode, policy, shared, share = CASES[case]
    reqs = trace(120, seed=len(case), gap_s=gap, shared=shared)
    cfg = SchedulerConfig(num_gpu_blocks=blocks, block_size=16, preemption_mode=mode,
                          num_cpu_blocks=64 if mode == "swap" else 0)
    cost = make_cost()
    fast, slow = run(reqs, cost, cfg, policy, True), run(reqs, cost, cfg, policy, False)
    assert_same(fast, slow)
    assert slow.decode_run is None and fast.decode_run is not None
    assert fast.decode_run.steps > share * fast.num_steps
    if blocks < 100:  # the pool was too small: runs stopped before steps that preempt
        assert fast.scheduler.num_preemptions > 0
    if shared:
        assert fast.result().summary["prefix_cache_hit_rate"] > 0
    if fast.lookahead is not None:
        assert 0 < fast.lookahead.hits < fast.num_steps


def test_a_step_wise_driver_sees_the_same_steps_as_runs() -> None:
    reqs, cfg, cost = trace(60, 3, 0.5), SchedulerConfig(num_gpu_blocks=400, block_size=16), profile(H200, True)
    stepwise = Simulator(reqs, Scheduler(cfg, make_policy("continuous")), cost)
    while stepwise.run_step():
        pass
    fast = run(reqs, cost, cfg, "continuous", True)
    assert_same(fast, stepwise)
    assert stepwise.decode_run is not None and stepwise.decode_run.steps == 0 < fast.decode_run.steps


def test_runs_stay_off_where_they_cannot_vouch_for_a_step() -> None:
    reqs, cfg = trace(20, 4, 0.5), SchedulerConfig(num_gpu_blocks=400, block_size=16)
    # a cost model that does not say it prices plans by their aggregates gets every step
    assert run(reqs, LinearCost(0.004, 3e-5), cfg, "continuous", True).decode_run is None
    # a speculating scheduler plans drafts per step
    sim = Simulator(reqs, Scheduler(cfg, make_policy("continuous"), make_speculation("fixed")), profile(H100),
                    acceptance=GeometricAcceptance(0.7, seed=0))
    sim.run()
    assert sim.decode_run is None and sim.result().summary["num_finished"] == 20


def test_a_run_stops_before_a_step_whose_blocks_the_pool_lacks() -> None:
    # three requests admitted together outgrow a 30-block pool while decoding, with nothing waiting
    reqs = [Request(str(i), 0.0, 40, 200) for i in range(3)]
    cfg = SchedulerConfig(num_gpu_blocks=30, block_size=16)
    for cost in (profile(H100), profile(H200, True)):
        fast, slow = run(reqs, cost, cfg, "continuous", True), run(reqs, cost, cfg, "continuous", False)
        assert_same(fast, slow)
        assert fast.scheduler.num_preemptions > 0 and fast.decode_run.steps > 0.5 * fast.num_steps


def test_a_run_stops_before_an_arrival_and_before_a_last_token() -> None:
    cfg, cost = SchedulerConfig(num_gpu_blocks=64, block_size=16), profile(H100)
    # one request alone: 1 prefill step, then 39 decode steps of which the last takes the last token
    alone = run([Request("a", 0.0, 20, 40)], cost, cfg, "continuous", True)
    assert alone.num_steps == 40 and alone.decode_run.steps == 37  # steps 3..39: not the first two or last
    # a second request arriving mid-decode is admitted at the first step that starts after it
    reqs = [Request("a", 0.0, 20, 400), Request("b", 0.05, 30, 5)]
    fast, slow = run(reqs, cost, cfg, "continuous", True), run(reqs, cost, cfg, "continuous", False)
    assert_same(fast, slow)
    b = fast.result().requests.set_index("request_id").loc["b"]
    starts = fast.result().steps["start_s"]
    assert b["first_scheduled_s"] == starts[starts >= 0.05].iloc[0]


@pytest.mark.parametrize(("make_cost", "tables"), [(lambda: profile(H100), True), (lambda: profile(H200, True), True),
                                                   (lambda: CalibratedCostModel.from_file(ROOFLINE_PROFILE), False)])
def test_decode_pricers_give_the_plans_prices(make_cost: Any, tables: bool) -> None:
    """Where a profile prices decode steps by a graph or a decode table, the pricer gives ``step_time``'s
    float; elsewhere (past the largest graph, or a profile without graphs) it gives None."""
    cost, rng = make_cost(), np.random.default_rng(0)
    seqs = [Scheduler(SchedulerConfig(num_gpu_blocks=8), make_policy("continuous")).add_request(
        Request(str(i), 0.0, 5, 5)) for i in range(600)]
    priced = general = 0
    for nb in (1, 2, 3, 7, 16, 17, 100, 255, 256, 257, 511, 600):
        for cold in (False, True):
            pricer = cost.decode_pricer(nb, cold)
            if pricer is None:
                general += 1
                continue
            for ctx in rng.integers(nb, 4000 * nb, 5):
                plan = StepPlan(1, 0.0, decodes=seqs[:nb], decode_ctx_tokens=int(ctx))
                want = cost.cold_step_time(plan) if cold else cost.step_time(plan)
                assert pricer(int(ctx)) == want  # bit for bit
                priced += 1
    assert (priced > 0) == tables and general > 0  # 600 decodes are past every shipped graph
