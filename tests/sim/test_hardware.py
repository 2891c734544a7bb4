"""GPUSpec: shipped numbers, derived rates, errors."""

from __future__ import annotations

import dataclasses

import pytest

from sim.hardware import GPUS, GPUSpec, get_gpu


def test_h100_numbers() -> None:
    h100 = get_gpu("H100")  # case-insensitive
    assert h100.peak_bf16_flops == 989.4e12 and h100.peak_int8_ops == 1979e12 == h100.peak_fp8_ops
    assert h100.peak_bw == 3.35e12 and h100.attainable_bw == 2.97e12
    assert h100.attainable_bf16_flops == pytest.approx(0.75 * 989.4e12)
    assert h100.attainable_ops("int8") == pytest.approx(0.75 * 1979e12)
    assert h100.ridge_point() == pytest.approx(0.75 * 989.4e12 / 2.97e12)
    assert 79 * 2**30 < h100.memory_bytes < 80 * 2**30


def test_h200_and_a100() -> None:
    h200, a100 = get_gpu("h200"), get_gpu("a100")
    assert h200.peak_bw == 4.8e12 and h200.peak_bf16_flops == 989.4e12
    assert h200.attainable_bw == pytest.approx(4.8e12 * 2.97 / 3.35)
    assert 139 * 2**30 < h200.memory_bytes < 141 * 2**30
    assert (a100.peak_bf16_flops, a100.peak_int8_ops, a100.peak_bw) == (312e12, 624e12, 2.039e12)
    with pytest.raises(ValueError, match="a100' has no fp8 tensor cores"):
        a100.attainable_ops("fp8")


@pytest.mark.parametrize("name", sorted(GPUS))
def test_attainable_below_peak(name: str) -> None:
    gpu = get_gpu(name)
    assert gpu.attainable_bw <= gpu.peak_bw and gpu.attainable_bf16_flops <= gpu.peak_bf16_flops
    assert gpu.host_bw < gpu.attainable_bw and gpu.source


def test_unknown_gpu_lists_names() -> None:
    with pytest.raises(ValueError, match=r"unknown GPU 'v100'; known: \['a100', 'h100', 'h200'\]"):
        get_gpu("v100")
    with pytest.raises(ValueError, match="unknown compute type 'int4'"):
        get_gpu("h100").peak_ops("int4")


def test_invalid_spec_rejected() -> None:
    h100 = get_gpu("h100")
    with pytest.raises(ValueError, match="attainable rates cannot exceed the peaks"):
        dataclasses.replace(h100, attainable_bw=4e12)
    with pytest.raises(ValueError, match="host_bw must be > 0"):
        dataclasses.replace(h100, host_bw=0.0)
    assert isinstance(get_gpu(h100), GPUSpec)
