"""Shipped profiles: the roofline ones are current, measured ones win, and ``load_cost_model`` finds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.cost_model import CalibratedCostModel, RooflineCostModel, write_profile
from sim.make_default_profiles import DEFAULTS, make_roofline_profile
from sim.make_default_profiles import main as make_defaults
from sim.shipped_profiles import MEASURED_DIR, PROFILES_DIR, load_cost_model, profile_name
from tests.sim.test_cost_model import tiny_profile


def test_shipped_profiles_load_and_are_current() -> None:
    for model, gpu, weights, kv in DEFAULTS:
        path = PROFILES_DIR / profile_name(model, gpu, weights, kv)
        shipped = json.loads(path.read_text())
        assert shipped["meta"]["source"] == "roofline"
        assert shipped["meta"]["command"].startswith("python -m sim.make_default_profiles")
        assert shipped["tables"] == make_roofline_profile(model, gpu, weights, kv)["tables"], (
            f"{path.name} is stale: run python -m sim.make_default_profiles")
        assert isinstance(load_cost_model(model, gpu), CalibratedCostModel)


def test_make_default_profiles_writes_all(tmp_path: Path) -> None:
    assert make_defaults(["--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == sorted(profile_name(*d) for d in DEFAULTS)
    meta = json.loads((tmp_path / files[0]).read_text())["meta"]
    assert meta["command"] == f"python -m sim.make_default_profiles --out {tmp_path}"


def test_measured_profiles_are_preferred() -> None:
    """A measured profile shipped for (model, gpu, weights, kv) is the default over the roofline one."""
    measured = sorted(MEASURED_DIR.glob("*.json"))
    assert measured, "no measured profiles shipped"
    for path in measured:
        cm = CalibratedCostModel.from_file(path)
        assert cm.meta["source"] == "measured" and cm.meta["command"].startswith("servegym calibrate")
        model, gpu = cm.meta["model"], cm.meta["gpu"]
        weights = cm.meta["quantization"] or cm.meta["dtype"]
        assert path.name == profile_name(model, gpu, weights, cm.meta["kv_cache_dtype"])
        default = load_cost_model(model, gpu, weight_dtype=weights, kv_dtype=cm.meta["kv_cache_dtype"])
        assert isinstance(default, CalibratedCostModel) and default.meta == cm.meta
    assert load_cost_model("llama-3.2-3b", "h200").meta["source"] == "roofline"  # nothing measured there


def test_load_cost_model(tmp_path: Path) -> None:
    assert isinstance(load_cost_model("llama-3.2-1b", "h100", kind="roofline"), RooflineCostModel)
    path = write_profile(tiny_profile(), tmp_path / "p.json")
    cm = load_cost_model("llama-3.2-1b", "h100", profile=path, block_size=4)
    assert isinstance(cm, CalibratedCostModel) and cm.meta["source"] == "measured"
    with pytest.raises(ValueError, match=r"unknown model 'gpt-2'.*shipped: \['llama-3\.2-1b'"):
        load_cost_model("gpt-2", "h100")
    with pytest.raises(ValueError, match="unknown GPU 'tpu'"):
        load_cost_model("llama-3.2-1b", "tpu", kind="roofline")
    with pytest.raises(ValueError, match="unknown cost model kind 'magic'"):
        load_cost_model("llama-3.2-1b", "h100", kind="magic")
    with pytest.raises(FileNotFoundError, match=r"llama-3.2-1b_a100_bf16.json; shipped profiles: \["):
        load_cost_model("llama-3.2-1b", "a100")
