"""servegym validate's guard against a profile measured on other engine settings."""

from __future__ import annotations

from experiments.validate import profile_mismatches


def test_profile_mismatches_name_the_timing_settings_that_differ() -> None:
    measured = {"dtype": "bfloat16", "block_size": 16, "kv_cache_dtype": "fp8", "verify_group_rows": 8, "seed": 1}
    same = dict(measured, seed=2)  # the seed does not change step times
    assert profile_mismatches(measured, same) == []
    assert profile_mismatches(measured, dict(measured, kv_cache_dtype="bf16")) == [
        "kv_cache_dtype: profile 'fp8', this run 'bf16'"]
    # the configured group size is no timing field: None resolves to a per-model size, compared once resolved
    assert profile_mismatches(measured, dict(measured, verify_group_rows=None)) == []
    assert profile_mismatches(None, measured) == []
