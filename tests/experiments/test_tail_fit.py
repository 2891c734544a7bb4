"""fit_host_tail: the profile's host tail from the calibration samples' tails."""

from __future__ import annotations

import pytest

from experiments.profile_fit import DecodeSample, PrefillSample
from experiments.tail_fit import fit_host_tail


def test_recovers_a_linear_tail_and_keeps_coefficients_non_negative() -> None:
    step, per_token, per_decode = 2e-5, 8e-8, 1.5e-6
    decodes = [DecodeSample(b, 1000.0 * b, 1e-3, (), step + per_decode * b) for b in (1, 8, 64, 256)]
    prefills = [PrefillSample(t, 0, 1e-2, 1, step + per_token * t) for t in (128, 2048, 32768)]
    fit = fit_host_tail(decodes, prefills)
    assert fit["step"] == pytest.approx(step, rel=1e-6)
    assert fit["per_prefill_token"] == pytest.approx(per_token, rel=1e-6)
    assert fit["per_decode"] == pytest.approx(per_decode, rel=1e-6)
    # tails that shrink with the decodes would need a negative slope: it is 0, the rest refitted
    shrinking = [DecodeSample(b, 0.0, 1e-3, (), 1e-4 - 1e-7 * b) for b in (1, 64, 256)]
    fit = fit_host_tail(shrinking, [])
    assert fit["per_decode"] == 0.0 and fit["per_prefill_token"] == 0.0
    assert fit["step"] == pytest.approx(sum(d.tail_s for d in shrinking) / 3)
    with pytest.raises(ValueError, match="at least one sample"):
        fit_host_tail([], [])


def test_step_term_comes_from_the_decodes_and_prefixed_prefills_are_left_out() -> None:
    # prefills behind a cached prefix free that prefix's blocks in their step (their requests finish
    # there): a cost replay steps do not pay, so their long tails must not raise the per-step term
    step, per_token, per_decode = 1e-5, 9e-8, 1e-6
    decodes = [DecodeSample(b, 100.0 * b, 1e-3, (), step + per_decode * b) for b in (1, 4, 16, 64)]
    fresh = [PrefillSample(t, 0, 1e-2, 1, step + per_token * t) for t in (16, 256, 512)]
    prefixed = [PrefillSample(t, 4096, 1e-2, 1, 2e-4 + per_token * t) for t in (16, 256, 512)]
    fit = fit_host_tail(decodes, fresh + prefixed)
    assert fit == pytest.approx({"step": step, "per_prefill_token": per_token, "per_decode": per_decode}, rel=1e-6)
    # with only prefixed prefills they are all there is: fitted, not dropped
    only = fit_host_tail([], prefixed)
    assert only["step"] == pytest.approx(2e-4, rel=1e-6) and only["per_prefill_token"] == pytest.approx(per_token)
