"""engine.l2_plan: which weights each fused decode layer prefetches into L2, and that it changes no output
(CPU interpreter without a GPU: the prefetch is dropped there; on CUDA it is issued)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.config import EngineConfig
from engine.fused_choice import choose_fused
from engine.l2_plan import budget_rows, layer_ranges, plan_l2_prefetch
from engine.linear import Linear
from policies.types import StepPlan
from tests.engine.test_fused_choice import DEV, _decoding, _kernels, _timer
from tests.engine.test_model import runner


def _fused_runner(tiny_llama):
    r = runner(tiny_llama, dtype="bfloat16", device=str(DEV), attention_backend="triton", enforce_eager=True)
    assert choose_fused(r.model, DEV, timer=_timer({"chain:fused": 1e-9}), kernels=_kernels()).chosen
    return r


def test_plan_takes_o_first_then_equal_gate_and_up_rows(tiny_llama):
    r = _fused_runner(tiny_llama)
    layer = r.model.layers[0]
    o, gu = layer.o.weight, layer.gate_up.weight
    half = gu.shape[0] // 2
    o_bytes, gu_row = o.numel() * o.element_size(), gu.shape[1] * gu.element_size()
    budget = o_bytes + 2 * 3 * gu_row + gu_row  # three rows of each half fit, a fourth pair does not
    plan = plan_l2_prefetch(r.model, budget, "line")
    assert (plan.o_rows, plan.gate_up_rows, plan.mode) == (o.shape[0], 3, "line")
    assert plan.bytes_per_layer == o_bytes + 6 * gu_row <= budget
    assert "3 gate/up rows" in plan.summary()
    for lay in r.model.layers:
        pf = lay.qkv.prefetch
        assert [t.data_ptr() for t in pf] == [lay.o.weight.data_ptr(), lay.gate_up.weight.data_ptr(),
                                              lay.gate_up.weight[half].data_ptr()]
        assert [t.shape[0] for t in pf] == [o.shape[0], 3, 3] and lay.qkv.prefetch_mode == "line"
        assert not lay.o.prefetch and not lay.gate_up.prefetch and not lay.down.prefetch


def test_small_budget_prefetches_part_of_o_only() -> None:
    o, gu = torch.zeros(64, 32, dtype=torch.bfloat16), torch.zeros(2 * 96, 64, dtype=torch.bfloat16)
    assert budget_rows(o, gu, 10 * 64 + 5) == (10, 0)  # 64-byte o rows
    assert budget_rows(o, gu, 10**9) == (64, 96)  # everything, capped at the weights
    (only_o,) = layer_ranges(o, gu, 10, 0)
    assert only_o.data_ptr() == o.data_ptr() and only_o.shape == (10, 32)
    gate, up = layer_ranges(o, gu, 0, 5)
    assert (gate.data_ptr(), up.data_ptr()) == (gu.data_ptr(), gu[96].data_ptr()) and gate.shape == up.shape == (5, 64)


def test_prefetch_changes_no_logits(tiny_llama):
    r = _fused_runner(tiny_llama)
    plan = StepPlan(9, 0.0, decodes=_decoding(r, 1))
    want = r.logits(plan)[0]
    for mode in ("bulk", "line"):
        plan_l2_prefetch(r.model, 1 << 20, mode)
        assert all(layer.qkv.prefetch for layer in r.model.layers)
        assert torch.equal(r.logits(plan)[0], want)


def test_plan_refuses_a_bad_budget_and_quantized_weights(tiny_llama):
    r = _fused_runner(tiny_llama)
    with pytest.raises(ValueError, match="budget must be > 0 bytes, got 0"):
        plan_l2_prefetch(r.model, 0, "bulk")
    quantized = Linear(torch.zeros(8, 8))
    quantized.weight = None  # as a quantized layer holds it
    layer = SimpleNamespace(o=quantized, gate_up=Linear(torch.zeros(8, 8)), qkv=Linear(torch.zeros(8, 8)))
    with pytest.raises(ValueError, match="needs full-precision o and gate_up weights"):
        plan_l2_prefetch(SimpleNamespace(layers=[layer]), 1024, "bulk")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("l2_prefetch_mb", -1.0, r"l2_prefetch_mb: must be a number of MiB in \[0, 1024\], got -1.0"),
    ("l2_prefetch_mb", True, r"l2_prefetch_mb: must be a number of MiB in \[0, 1024\], got True"),
    ("l2_prefetch_mb", "8", r"l2_prefetch_mb: must be a number of MiB"),
    ("l2_prefetch_mode", "l1", r"l2_prefetch_mode: must be one of \('bulk', 'line'\), got 'l1'"),
])
def test_engine_config_checks_the_prefetch_flags(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EngineConfig("m", **{field: value})
