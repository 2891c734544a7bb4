"""``servegym refit``: a measured profile's fitted fields recomputed from the samples its meta keeps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from experiments.cli import main
from experiments.profile_fit import DecodeSample, MixedSample, PrefillSample
from experiments.profile_tables import add_fitted_fields, refit
from sim.profile import PROFILE_FORMAT, read_profile
from sim.shipped_profiles import MEASURED_DIR, PROFILES_DIR


def measured() -> dict[str, Any]:
    decodes = [DecodeSample(b, b * c, 1e-3 + 2e-6 * b + 3e-9 * b * c, tail_s=1e-5 + 1e-7 * b)
               for b in (1, 4, 16, 64) for c in (32, 2048)]
    prefills = [PrefillSample(t, c, 1.5e-3 + 2e-6 * t + (1e-7 + 1e-10 * t) * c + 4e-11 * t * t, tail_s=2e-5)
                for t in (16, 128, 1024) for c in (0, 4096)]
    mixed = [MixedSample(128, b, b * 1024, 1.8e-3 + 4e-6 * b) for b in (4, 16)]
    meta = {"model": "m", "gpu": "g", "dtype": "bf16", "kv_cache_dtype": "bf16", "quantization": None,
            "source": "measured", "command": "test", "created": "2026-01-01T00:00:00+00:00",
            "decode_samples": [dataclasses.asdict(d) for d in decodes],
            "prefill_samples": [dataclasses.asdict(p) for p in prefills],
            "mixed_samples": [dataclasses.asdict(m) for m in mixed]}
    profile = {"format": PROFILE_FORMAT, "meta": meta, "kv_bytes_per_token": 1000.0, "swap_bytes_per_s": 1e9,
               "graph_batch_sizes": [1, 2, 4, 8, 16, 32, 64]}
    return add_fitted_fields(profile, decodes, [], prefills, mixed, [], 16)


def test_refit_reproduces_the_fit_and_restores_a_missing_table() -> None:
    profile = json.loads(json.dumps(measured()))  # as read back from a file (lists, not tuples)
    assert "prefill_context" in profile["tables"] and "mixed_decode" in profile["tables"]
    again = refit(profile)
    assert set(again) == set(profile)
    assert again["step_overhead_s"] == pytest.approx(profile["step_overhead_s"])
    assert again["host_tail_s"] == pytest.approx(profile["host_tail_s"])
    assert again["decode_steps"]["time_s"] == [pytest.approx(row) for row in profile["decode_steps"]["time_s"]]
    for name, table in profile["tables"].items():
        assert again["tables"][name]["x"] == pytest.approx(table["x"])
        assert again["tables"][name]["time_s"] == pytest.approx(table["time_s"])
    old = profile | {"tables": {k: v for k, v in profile["tables"].items() if k != "prefill_context"}}
    assert refit(old)["tables"]["prefill_context"]["time_s"] == pytest.approx(
        profile["tables"]["prefill_context"]["time_s"])
    assert refit(old)["graph_batch_sizes"] == profile["graph_batch_sizes"]  # engine fields kept


def test_refit_refuses_profiles_without_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roofline = PROFILES_DIR / "llama-3.2-1b_h100_bf16.json"
    with pytest.raises(ValueError, match="only a measured profile"):
        refit(read_profile(roofline), source=str(roofline))
    assert main(["refit", "--profile", str(roofline), "--out", str(tmp_path / "p.json")]) == 2
    assert "can be refitted" in capsys.readouterr().err
    bad = measured()
    bad["meta"]["prefill_samples"] = [{"tokens": 16}]
    with pytest.raises(ValueError, match="meta.prefill_samples has a malformed sample"):
        refit(bad, source="bad.json")


def test_cli_refits_a_shipped_measured_profile(tmp_path: Path) -> None:
    src = MEASURED_DIR / "llama-3.2-1b_h200_bf16.json"
    out = tmp_path / "refit.json"
    assert main(["refit", "--profile", str(src), "--out", str(out)]) == 0
    new, old = read_profile(out), read_profile(src)
    assert new["meta"]["prefill_samples"] == old["meta"]["prefill_samples"]
    assert new["tables"]["dense"] == old["tables"]["dense"]
    assert "prefill_context" in new["tables"]


def test_refit_only_named_tables_keeps_the_rest() -> None:
    profile = json.loads(json.dumps(measured()))
    old = profile | {"tables": {k: v for k, v in profile["tables"].items() if k != "prefill_context"}}
    old = old | {"step_overhead_s": 1.0, "tables": old["tables"] | {"dense": {"x": [1, 2], "time_s": [1.0, 2.0]}}}
    got = refit(old, only=["prefill_context"])
    assert got["tables"]["prefill_context"] == profile["tables"]["prefill_context"]
    assert got["tables"]["dense"] == {"x": [1, 2], "time_s": [1.0, 2.0]} and got["step_overhead_s"] == 1.0
    with pytest.raises(ValueError, match=r"the fit writes no table \['lm_head'\]"):
        refit(old, only=["lm_head"])
