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
from kernels.gemv_bf16 import GemvConfig, candidate_configs, gemv_bf16

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
             f"down:gemv:{fast_down.label}": 12e-6,
             "qkv:linear:rows=2": 30e-6, "qkv:gemv:rows=2": 20e-6,  # qkv: faster at 2 rows, slower at 4
             "qkv:linear:rows=4": 40e-6, "qkv:gemv:rows=4": 50e-6,
             "down:linear:rows=2": 30e-6, "down:gemv:rows=2": 20e-6,  # down: faster at both
             "down:linear:rows=4": 40e-6, "down:gemv:rows=4": 30e-6}
    calls: list[str] = []
    used: list[tuple[int, GemvConfig]] = []

    def gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None,
             config: GemvConfig | None = None) -> torch.Tensor:
        used.append((x.shape[0], config))
        return gemv_bf16(x, w, out=out, config=config)

    kernels = dataclasses.replace(default_kernels(), gemv=gemv)
    lins = _linears()
    got = _by_kind(choose_gemv(lins, CPU, timer=_timer(table, calls), kernels=kernels))
    assert set(got) == {"qkv", "down"}
    assert calls[0] == "qkv:linear" and len(calls) == 2 + len(qkv_cfgs) + len(down_cfgs) + 8
    assert calls[1 + len(qkv_cfgs):5 + len(qkv_cfgs)] == [
        "qkv:linear:rows=2", "qkv:gemv:rows=2", "qkv:linear:rows=4", "qkv:gemv:rows=4"]
    qkv, down = got["qkv"], got["down"]
    assert (qkv.chosen, qkv.config, qkv.shape, qkv.rows) == (True, fast_qkv, QKV, 2)
    assert qkv.linear_us == pytest.approx(10.0) and qkv.gemv_us == pytest.approx(5.0)  # per layer of two
    assert [m for m, _, _ in qkv.by_rows] == [2, 4]
    assert [v for _, a, b in qkv.by_rows for v in (a, b)] == pytest.approx([15.0, 10.0, 20.0, 25.0])
    assert [c for c, _ in qkv.candidates] == [c.label for c in qkv_cfgs]
    assert (down.chosen, down.config, down.note, down.rows) == (True, fast_down, "", 4)
    summary = qkv.summary()
    assert "gemv_bf16 5.0 us" in summary[0] and "up to 2 rows" in summary[0]
    assert summary[-1] == "  by rows (F.linear / gemv): 2: 15.0 / 10.0 us, 4: 20.0 / 25.0 us"

    q, d = lins["qkv"][1], lins["down"][1]
    for rows, lin, kernel_rows in ((2, q, True), (3, q, False), (3, d, True), (4, d, True), (5, d, False)):
        used.clear()
        x = torch.randn(rows, lin.in_features).to(torch.bfloat16)
        y = lin(x)
        if kernel_rows:
            assert used == [(rows, fast_qkv if lin is q else fast_down)]
        else:
            assert used == []
            torch.testing.assert_close(y, F.linear(x, lin.weight), rtol=0, atol=0)


def test_rows_stop_at_the_first_loss() -> None:
    """A kernel slower at 2 rows keeps one row, and is not timed at 4."""
    cfg = candidate_configs(*QKV, CPU)[0]
    table = {"qkv:linear": 2.0, f"qkv:gemv:{cfg.label}": 1e-9, "qkv:gemv:rows=4": 1e-9}
    calls: list[str] = []
    lins = {"qkv": _linears()["qkv"]}
    qkv = choose_gemv(lins, CPU, timer=_timer(table, calls))[0]
    assert (qkv.chosen, qkv.rows) == (True, 1) and qkv.by_rows == ((2, 5e5, 5e5),)  # 1 s over two layers
    assert "qkv:gemv:rows=4" not in calls and all(lin.gemv_rows == 1 for lin in lins["qkv"])


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
