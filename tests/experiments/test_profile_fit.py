"""The profile fit recovers a known step-time model from synthetic measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.profile_fit import (
    DecodeSample,
    FittedProfile,
    MixedSample,
    PrefillSample,
    VerifySample,
    decode_steps_table,
    fit_mixed_decode,
    fit_profile,
    fit_verify,
    isotonic,
    monotone_table,
    nonnegative_lstsq,
    typical,
)
from experiments.validate import rel_error
from sim.cost_model import CalibratedCostModel
from sim.profile import PROFILE_FORMAT, validate_profile

OVH, DENSE, DEC, PF, EAGER = 1e-3, 2e-6, 3e-9, 4e-11, 5e-4


def decode_time(b: int, ctx: float) -> float:
    return OVH + DENSE * b + DEC * ctx


def prefill_time(t: int, c: int) -> float:
    return OVH + EAGER + DENSE * t + PF * (t * c + t * (t + 1) / 2)


def fitted_model() -> CalibratedCostModel:
    decodes = [DecodeSample(b, b * c, decode_time(b, b * c)) for b in (1, 2, 8, 64, 256) for c in (32, 2048)]
    prefills = [PrefillSample(t, c, prefill_time(t, c)) for t in (16, 128, 1024, 8192) for c in (0, 4096)]
    fit = fit_profile(decodes, prefills)
    assert fit.mixed_extra_s == pytest.approx(EAGER, rel=1e-6)
    return CalibratedCostModel(profile_of(fit))


def profile_of(fit: FittedProfile) -> dict:
    """A valid measured profile holding ``fit``'s overhead and tables."""
    profile = {"format": PROFILE_FORMAT, "step_overhead_s": fit.step_overhead_s, "kv_bytes_per_token": 1.0,
               "swap_bytes_per_s": 1.0, "tables": {k: {"x": x, "time_s": y} for k, (x, y) in fit.tables.items()},
               "meta": {k: "t" for k in ("model", "gpu", "dtype", "kv_cache_dtype", "quantization", "command",
                                         "created")} | {"source": "measured"}}
    validate_profile(profile)
    return profile


def test_fit_reproduces_a_linear_engine() -> None:
    from policies.sequence import Sequence
    from policies.types import PrefillChunk, Request, StepPlan

    model = fitted_model()
    seqs = [Sequence(Request(str(i), 0.0, 10, 2)) for i in range(100)]
    decode = StepPlan(0, 0.0, decodes=seqs[:100], decode_ctx_tokens=100 * 700)
    assert model.step_time(decode) == pytest.approx(decode_time(100, 100 * 700), rel=1e-3)
    t, c = 3000, 1000
    chunk = PrefillChunk(seqs[0], c, t)
    prefill = StepPlan(0, 0.0, prefills=[chunk], num_prefill_tokens=t, prefill_ctx_tokens=c,
                       prefill_attn_pairs=t * c + t * (t + 1) // 2)
    assert model.step_time(prefill) == pytest.approx(prefill_time(t, c), rel=1e-3)


def test_fit_separates_graphed_and_eager_costs() -> None:
    """An engine whose eager steps cost a nonlinear launch overhead on top of the graphed decode cost:
    the mixed_dense table recovers it, and multi-sequence prefill steps count their pairs per chunk."""
    def eager_cost(t: int) -> float:
        return 4e-3 + 1e-3 * math.log2(t) + DENSE * t

    def pf_time(t: int, c: int, seqs: int) -> float:
        return OVH + eager_cost(t) + PF * PrefillSample(t, c, 0.0, seqs).pairs

    decodes = [DecodeSample(b, b * c, decode_time(b, b * c)) for b in (1, 2, 8, 64, 256) for c in (32, 2048)]
    shapes = [(16, 1), (256, 1), (1024, 1), (8192, 3), (65536, 16)]
    prefills = [PrefillSample(t, c, pf_time(t, c, n), n) for t, n in shapes for c in (0, 4096)]
    fit = fit_profile(decodes, prefills)
    xs, ys = fit.tables["mixed_dense"]
    for x, y in zip(xs, ys, strict=True):
        assert y == pytest.approx(eager_cost(int(x)), rel=1e-6)
    assert PrefillSample(10, 4, 0.0, 3).pairs == (4 * 4 + 10) + 2 * (3 * 4 + 6)  # chunks 4, 3, 3
    px, py = fit.tables["prefill_attention"]
    for x, y in zip(px, py, strict=True):
        assert y == pytest.approx(PF * x, rel=1e-6, abs=1e-9)


def test_isotonic_and_tables_are_monotone() -> None:
    assert isotonic([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    xs, ys = monotone_table([(3, 1.0), (1, 2.0), (1, 0.0), (2, -5.0)])
    assert xs == [1, 2, 3] and ys == sorted(ys) and min(ys) >= 0
    with pytest.raises(ValueError, match="2 distinct x"):
        monotone_table([(1, 1.0)])


def test_too_few_measurements_are_named() -> None:
    with pytest.raises(ValueError, match="decode steps at >= 2 batch sizes"):
        fit_profile([DecodeSample(1, 10, 1e-3)], [])


def test_rel_error_is_nan_safe() -> None:
    assert rel_error(1.1, 1.0) == pytest.approx(0.1)
    assert rel_error(0, 0) == 0.0
    assert math.isnan(rel_error(1.0, 0.0)) and math.isnan(rel_error(None, 2.0)) and math.isnan(rel_error(1, math.nan))


def test_fit_mixed_decode_takes_residuals_over_the_model() -> None:
    """mixed_decode(D) is the measured step minus the model's price, non-decreasing in D, 0 at D = 0."""
    samples = [MixedSample(128, 16, 16e3, 5.0e-3), MixedSample(1024, 16, 16e3, 8.2e-3),
               MixedSample(128, 64, 64e3, 5.5e-3), MixedSample(128, 128, 128e3, 5.4e-3)]
    base = {128: 4.8e-3, 1024: 8.0e-3}  # the model's price of each chunk size, whatever the decodes
    xs, ys = fit_mixed_decode(samples, lambda m: base[m.tokens])
    assert xs == [0.0, 16.0, 64.0, 128.0]
    # D=16: mean of the two chunk sizes' residuals (0.2 ms each); 64 and 128 (0.7, 0.6 ms) pooled
    assert ys == pytest.approx([0.0, 2e-4, 6.5e-4, 6.5e-4])
    assert MixedSample(10, 1, 5.0, 1.0).pairs == 55
    with pytest.raises(ValueError, match="at least one mixed sample"):
        fit_mixed_decode([], lambda m: 0.0)


def test_typical_is_a_trimmed_mean() -> None:
    assert typical([1.0, 2.0, 3.0]) == pytest.approx(2.0)  # 10% of 3 steps trims nothing
    steps = [1.0] * 9 + [100.0]  # one stall in ten steps is trimmed, as is the lowest step
    assert typical(steps) == pytest.approx(1.0)
    assert typical([1.0] * 7 + [2.0] * 3) == pytest.approx((6 + 2 * 2) / 8)  # a slow stretch counts
    with pytest.raises(ValueError, match="at least one"):
        typical([])


def test_fit_verify_recovers_draft_attention_and_overhead() -> None:
    """Verification steps timed as base(rows, own ctx) + DRAFT * draft ctx + step + per-decode + per-draft
    costs: the fit returns the draft-attention rate and the three overhead coefficients."""
    draft_rate, step, per_decode, per_draft = 7e-10, 2e-4, 3e-6, 1.5e-6

    def base(v: VerifySample) -> float:  # the cost model's own price of the rows, whatever it is
        return 1e-3 + 2e-6 * v.rows + 3e-9 * v.ctx_tokens

    samples = []
    for b in (1, 4, 16, 48):
        for k in (1, 3, 6):
            for c in (32, 2048):
                y = b * (k * c + k * (k + 1) / 2)
                v = VerifySample(b, k, b * c, y, 0.0)
                t = base(v) + draft_rate * y + step + per_decode * b + per_draft * b * k
                samples.append(VerifySample(b, k, b * c, y, t))
    (xs, ys), overhead = fit_verify(samples, base)
    assert xs[0] == 0.0 and ys[0] == 0.0
    for x, y in zip(xs, ys, strict=True):
        assert y == pytest.approx(draft_rate * x, rel=1e-6, abs=1e-12)
    assert overhead == pytest.approx({"step": step, "per_decode": per_decode, "per_draft": per_draft}, rel=1e-6)
    with pytest.raises(ValueError, match="at >= 2 contexts"):
        fit_verify(samples[:1], base)


def test_nonnegative_lstsq_never_returns_a_negative_coefficient() -> None:
    rng = np.random.default_rng(3)
    a = np.c_[np.ones(12), rng.uniform(1, 64, 12), rng.uniform(1, 300, 12)]
    x = nonnegative_lstsq(a, a @ np.array([1.0, 0.5, 0.25]))
    assert x == pytest.approx([1.0, 0.5, 0.25])
    b = a @ np.array([1.0, -0.5, 0.25])  # the unconstrained fit would go negative on the second column
    x = nonnegative_lstsq(a, b)
    assert (x >= 0).all() and x[1] == 0.0
    err = float(np.sum((a @ x - b) ** 2))
    trials = np.abs(x + rng.normal(0, 0.5, (2000, 3)))  # random non-negative points around it fit no better
    assert (np.sum((trials @ a.T - b) ** 2, axis=1) >= err - 1e-9).all()


def test_decode_steps_table_keeps_each_batch_by_context_per_sequence() -> None:
    # batch 4 timed at three contexts (given out of order, one slower than the next: made monotone);
    # batch 2 at one context only: left out
    samples = [DecodeSample(4, 4 * 2048, 3e-3), DecodeSample(4, 4 * 32, 1e-3), DecodeSample(4, 4 * 512, 3.2e-3),
               DecodeSample(1, 40, 0.9e-3), DecodeSample(1, 6000, 1.1e-3), DecodeSample(2, 100, 1e-3)]
    table = decode_steps_table(samples)
    assert table["batch"] == [1, 4]
    assert table["ctx"] == [[40.0, 6000.0], [32.0, 512.0, 2048.0]]
    assert table["time_s"][0] == [0.9e-3, 1.1e-3]
    assert table["time_s"][1] == pytest.approx([1e-3, 3.1e-3, 3.1e-3])  # pooled, non-decreasing
    with pytest.raises(ValueError, match="a batch size timed at >= 2 contexts"):
        decode_steps_table([DecodeSample(2, 100, 1e-3), DecodeSample(4, 100, 1e-3)])


def test_short_chunks_on_a_long_prefix_cost_what_was_measured() -> None:
    """An engine whose cached context costs more per pair for short chunks (few query tiles): the
    prefill_context table prices each calibrated (T, C) exactly and a fresh step as before."""
    def ctx_cost(t: int) -> float:  # seconds per cached token read by a chunk of t tokens
        return 1e-7 + 2e-10 * t

    def timed(t: int, c: int) -> float:
        return OVH + EAGER + DENSE * t + PF * t * (t + 1) / 2 + ctx_cost(t) * c

    decodes = [DecodeSample(b, b * c, decode_time(b, b * c)) for b in (1, 8, 64) for c in (32, 2048)]
    prefills = [PrefillSample(t, c, timed(t, c)) for t in (16, 64, 256, 1024) for c in (0, 4096)]
    profile = profile_of(fit_profile(decodes, prefills))
    model = CalibratedCostModel(profile)
    without = CalibratedCostModel(profile | {"tables": {k: v for k, v in profile["tables"].items()
                                                        if k != "prefill_context"}})
    for t in (16, 64, 256, 1024):
        for c in (0, 4096, 1500):
            got = model.shape_time(t, 1, 0, 0, t * c + t * (t + 1) / 2, prefill_ctx_tokens=c)
            assert got == pytest.approx(timed(t, c), rel=1e-6), (t, c)
    # the pairs-only table prices a 16-token chunk on 4,096 cached tokens far off
    assert without.shape_time(16, 1, 0, 0, 16 * 4096 + 136) < 0.9 * timed(16, 4096)


def test_noise_that_makes_a_decode_base_negative_still_gives_a_valid_profile() -> None:
    """On a busy machine a batch's large-context step can be timed so slow that its base (the small-context
    time less the slope's share) is negative: the overhead is then 0, never negative (an invalid profile)."""
    decodes = [DecodeSample(b, b * c, decode_time(b, b * c)) for b in (1, 2, 8, 64, 256) for c in (32, 2048)]
    decodes[3] = DecodeSample(2, 2 * 2048, 500 * decode_time(2, 2 * 2048))  # one step hit by a stall
    prefills = [PrefillSample(t, c, prefill_time(t, c)) for t in (16, 128, 1024, 8192) for c in (0, 4096)]
    fit = fit_profile(decodes, prefills)
    assert fit.step_overhead_s == 0.0
    profile_of(fit)  # validates
