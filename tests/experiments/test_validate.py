"""servegym validate's guard against a profile measured on other engine settings."""

from __future__ import annotations

from experiments.validate import profile_mismatches


def test_profile_mismatches_name_the_timing_settings_that_differ() -> None:
    measured = {"dtype": "bfloat16", "block_size": 16, "verify_group_rows": 8, "seed": 1}
    same = dict(measured, seed=2)  # the seed does not change step times
    assert profile_mismatches(measured, same) == []
    assert profile_mismatches(measured, dict(measured, verify_group_rows=None)) == [
        "verify_group_rows: profile 8, this run None"]
    assert profile_mismatches(None, measured) == []
