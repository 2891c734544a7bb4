"""engine.gemv_choice: which launch config is chosen, with a fake timer (runs on the CPU).

The kernels are the real ones (Triton interpreter off CUDA); the timer returns made-up seconds per label
after running the timed function once, so the choice is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from engine.gemv_choice import GemvTiming, choose_gemv, default_kernels
from engine.linear import Linear
from kernels.gemv_bf16 import candidate_configs, gemv_bf16

CPU = torch.device("cpu")
QKV, DOWN = (24, 64), (16, 64)  # (N, K)


def _linears() -> dict[str, list[Linear]]:
    g = torch.Generator().manual_seed(0)

    def weight(n: int, k: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return (torch.randn(n, k, generator=g) * 0.1).to(dtype)

    return {"qkv": [Linear(weight(*QKV)), Linear(weight(*QKV))],
            "down": [Linear(weight(*DOWN)), Linear(weight(*DOWN))],
            "fp32": [Linear(weight(8, 16, torch.float32))]}  # not a GEMV dtype: skipped


def _timer(table: dict[str, float], calls: list[str]) -> Callable[[str, Callable[[], object]], float]:
    """Seconds for two layers by label (1 s when absent), after one run of the timed function."""

    def timer(label: str, fn: Callable[[], object]) -> float:
        fn()
        calls.append(label)
        return table.get(label, 1.0)

    return timer


def _by_kind(timings: list[GemvTiming]) -> dict[str, GemvTiming]:
    return {t.kind: t for t in timings}


def test_fastest_config_is_chosen_and_used() -> None:
    qkv_cfgs, down_cfgs = candidate_configs(*QKV, CPU), candidate_configs(*DOWN, CPU)
    fast_qkv, fast_down = qkv_cfgs[-1], down_cfgs[0]
    table = {"qkv:linear": 20e-6, f"qkv:gemv:{fast_qkv.label}": 10e-6, "down:linear": 20e-6,
             f"down:gemv:{fast_down.label}": 12e-6}
    calls: list[str] = []
    lins = _linears()
    got = _by_kind(choose_gemv(lins, CPU, timer=_timer(table, calls)))
    assert set(got) == {"qkv", "down"}
    assert calls[0] == "qkv:linear" and len(calls) == 2 + len(qkv_cfgs) + len(down_cfgs)
    qkv, down = got["qkv"], got["down"]
    assert (qkv.chosen, qkv.config, qkv.shape) == (True, fast_qkv, QKV)
    assert qkv.linear_us == pytest.approx(10.0) and qkv.gemv_us == pytest.approx(5.0)  # per layer of two
    assert [c for c, _ in qkv.candidates] == [c.label for c in qkv_cfgs]
    assert (down.chosen, down.config, down.note) == (True, fast_down, "")
    assert any("gemv_bf16 5.0 us" in line for line in qkv.summary())

    x = torch.randn(3, QKV[1]).to(torch.bfloat16)
    lin = lins["qkv"][1]
    torch.testing.assert_close(lin(x), gemv_bf16(x, lin.weight, config=fast_qkv), rtol=0, atol=0)
    many = torch.randn(5, QKV[1]).to(torch.bfloat16)  # above GEMV_MAX_ROWS: F.linear
    torch.testing.assert_close(lin(many), F.linear(many, lin.weight), rtol=0, atol=0)


def test_linear_kept_when_faster() -> None:
    table = {"qkv:linear": 1e-6, "down:linear": 1e-6}
    lins = _linears()
    got = _by_kind(choose_gemv(lins, CPU, timer=_timer(table, [])))
    assert not got["qkv"].chosen and not got["down"].chosen
    assert got["qkv"].config is not None and got["qkv"].gemv_us == pytest.approx(0.5e6)  # fastest, not chosen
    assert all(lin.gemv is None for ls in lins.values() for lin in ls)


def test_wrong_or_failing_candidates_are_not_chosen() -> None:
    cfgs = candidate_configs(*QKV, CPU)
    bad, broken = cfgs[0], cfgs[1]

    def gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None,
             config: object = None) -> torch.Tensor:
        if config == broken:
            raise RuntimeError("no such kernel here")
        y = gemv_bf16(x, w, out=out, config=config)
        return -y if config == bad else y

    kernels = dataclasses.replace(default_kernels(), gemv=gemv)
    table = {f"qkv:gemv:{bad.label}": 1e-9, f"qkv:gemv:{broken.label}": 1e-9}
    qkv = _by_kind(choose_gemv(_linears(), CPU, timer=_timer(table, []), kernels=kernels))["qkv"]
    assert qkv.config not in (bad, broken) and math.isnan(dict(qkv.candidates)[bad.label])
    assert f"{bad.label}: ValueError: differs from the reference" in qkv.note
    assert f"{broken.label}: RuntimeError: no such kernel here" in qkv.note


def test_a_failed_timing_resets_every_layer() -> None:
    def timer(label: str, fn: Callable[[], object]) -> float:
        if label == "down:linear":
            raise RuntimeError("capture failed")
        return 1e-9 if ":gemv:" in label else 1.0

    lins = _linears()
    with pytest.raises(RuntimeError, match="capture failed"):
        choose_gemv(lins, CPU, timer=timer)
    assert all(lin.gemv is None for ls in lins.values() for lin in ls)
