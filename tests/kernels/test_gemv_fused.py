"""Fused decode GEMVs (RMSNorm before, SwiGLU or residual after) against the unfused kernels and PyTorch.

Against the unfused Triton kernels (the same rounding points, fp32 accumulation in another order): within
1/64 relative plus 2e-3 * max|ref| absolute. Against the PyTorch references a rounded intermediate
(normalised activation, gate or up) may land one ulp the other way: the absolute bound adds 2^-8 times
the largest |a| @ |w|.T of the rounded operand a.
"""

import pytest
import torch

from kernels.activation import silu_and_mul
from kernels.gemv_bf16 import GemvConfig, gemv_bf16
from kernels.gemv_fused import (
    fused_candidates,
    gemv_residual,
    gemv_residual_ref,
    gemv_rms_norm,
    gemv_rms_norm_ref,
)
from kernels.norm import rms_norm, rms_norm_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5
# Uneven and empty K splits, tiles far larger than the weights, one row per program.
EXTRA_CONFIGS = [GemvConfig(4, 64, 4, 3), GemvConfig(64, 16, 1, 16), GemvConfig(16, 1024, 8, 1),
                 GemvConfig(1, 512, 4, 1)]
# Configs the engine times for the Llama-3.2-1B shapes, run here on the small weights.
LLAMA_CONFIGS = [*fused_candidates(3072, 2048, torch.device("cpu")), *fused_candidates(2048, 8192, "cpu"),
                 *fused_candidates(16384, 2048, torch.device("cpu"), glu=True)]


def _inputs(m: int, n: int, k: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed + m * n + k)
    x = (torch.randn(m, k, generator=g) * 3).to(dtype).to(DEVICE)
    nw = (1 + 0.5 * torch.randn(k, generator=g)).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=g) * 0.05).to(dtype).to(DEVICE)
    res = torch.randn(m, n, generator=g).to(dtype).to(DEVICE)
    return x, nw, w, res


def _close(got: torch.Tensor, want: torch.Tensor, what: str, slack: float = 0.0) -> None:
    torch.testing.assert_close(got, want, rtol=1 / 64, atol=2e-3 * want.float().abs().max().item() + slack,
                               msg=lambda msg: f"{what}: {msg}")


def _slack(a: torch.Tensor, w: torch.Tensor) -> float:
    """2^-8 * max(|a| @ |w|.T): one-ulp flips of the rounded operand a, summed over K."""
    return (a.float().abs() @ w.float().abs().T).max().item() / 256


def _configs(n: int, k: int, sweep: bool, glu: bool = False) -> list[GemvConfig | None]:
    """Every candidate, the odd configs and the Llama shapes' candidates when ``sweep`` (small shapes: the
    interpreter runs programs one by one), else the default and one 16-row config."""
    if not sweep:
        return [None, GemvConfig(16, 64, 4)]
    return list(dict.fromkeys([None, *fused_candidates(n, k, torch.device(DEVICE), glu), *EXTRA_CONFIGS,
                               *LLAMA_CONFIGS]))


def _poisoned(m: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("m,n,k,dtype,sweep", [(1, 37, 300, torch.bfloat16, True), (3, 40, 520, torch.bfloat16, False),
                                               (4, 1, 200, torch.float16, True), (1, 300, 64, torch.float16, False),
                                               (16, 21, 96, torch.bfloat16, False)])
def test_norm_gemv_matches_norm_then_gemv(m: int, n: int, k: int, dtype: torch.dtype, sweep: bool) -> None:
    x, nw, w, _ = _inputs(m, n, k, dtype)
    two_kernels = gemv_bf16(rms_norm(x, nw, EPS), w)
    ref, slack = gemv_rms_norm_ref(x, nw, EPS, w), _slack(rms_norm_ref(x, nw, EPS), w)
    for config in _configs(n, k, sweep):
        out = _poisoned(m, n, dtype)
        got = gemv_rms_norm(x, nw, EPS, w, out=out, config=config)
        assert got.data_ptr() == out.data_ptr()
        _close(got, two_kernels, f"config {config}")
        _close(got, ref, f"config {config} vs torch", slack)


@pytest.mark.parametrize("m,inter,k,dtype,sweep", [(1, 37, 300, torch.bfloat16, True),
                                                   (2, 20, 520, torch.bfloat16, False),
                                                   (4, 1, 200, torch.float16, True), (3, 70, 64, torch.float16, False)])
def test_norm_glu_gemv_matches_norm_gemv_then_activation(m: int, inter: int, k: int, dtype: torch.dtype,
                                                         sweep: bool) -> None:
    x, nw, w, _ = _inputs(m, 2 * inter, k, dtype, seed=1)
    gate_up = gemv_bf16(rms_norm(x, nw, EPS), w)
    three_kernels = silu_and_mul(gate_up)
    ref = gemv_rms_norm_ref(x, nw, EPS, w, glu=True)
    # A flipped gate/up rounding moves silu(g) * u by at most ~2^-8 * |g|*|u| terms: bound by the products.
    gu_ref = gemv_rms_norm_ref(x, nw, EPS, w).float()
    slack = 2 * (gu_ref[:, :inter].abs() * gu_ref[:, inter:].abs()).max().item() / 256 + _slack(
        rms_norm_ref(x, nw, EPS), w) * gu_ref.abs().max().item()
    for config in _configs(2 * inter, k, sweep, glu=True):
        out = _poisoned(m, inter, dtype)
        got = gemv_rms_norm(x, nw, EPS, w, out=out, config=config, glu=True)
        assert got.data_ptr() == out.data_ptr() and got.shape == (m, inter)
        _close(got, three_kernels, f"config {config}")
        _close(got, ref, f"config {config} vs torch", slack)


@pytest.mark.parametrize("m,n,k,dtype,sweep", [(1, 37, 300, torch.bfloat16, True), (3, 40, 520, torch.bfloat16, False),
                                               (4, 1, 4100, torch.float16, True), (2, 130, 64, torch.float16, False)])
def test_residual_gemv_matches_reference(m: int, n: int, k: int, dtype: torch.dtype, sweep: bool) -> None:
    x, _, w, res = _inputs(m, n, k, dtype, seed=2)
    ref = gemv_residual_ref(x, w, res)
    for config in _configs(n, k, sweep):
        before = res.clone()
        out = _poisoned(m, n, dtype)
        got = gemv_residual(x, w, res, out=out, config=config)
        assert got.data_ptr() == out.data_ptr() and torch.equal(res, before)
        _close(got, ref, f"config {config}")
        in_place = res.clone()  # out may be the residual itself
        gemv_residual(x, w, in_place, out=in_place, config=config)
        _close(in_place, ref, f"config {config} in place")


def test_glu_configs_are_made_valid() -> None:
    configs = fused_candidates(16384, 2048, torch.device("cpu"), glu=True)
    assert configs and all(c.block_n >= 2 and c.split_k == 1 for c in configs)
    x, nw, w, _ = _inputs(1, 2 * 9, 4096, torch.bfloat16)
    got = gemv_rms_norm(x, nw, EPS, w, config=GemvConfig(1, 1024, 4, 4), glu=True)  # raised to 2 rows, 1 split
    _close(got, silu_and_mul(gemv_bf16(rms_norm(x, nw, EPS), w)), "glu config")


def test_bad_inputs_name_the_argument() -> None:
    x, nw, w, res = _inputs(1, 8, 32, torch.bfloat16)
    with pytest.raises(ValueError, match=r"norm_weight must be 1-D of length K=32, got torch.Size\(\[31\]\)"):
        gemv_rms_norm(x, nw[:31], EPS, w)
    with pytest.raises(ValueError, match="eps must be > 0, got 0.0"):
        gemv_rms_norm(x, nw, 0.0, w)
    with pytest.raises(ValueError, match="glu needs a .* even number of rows, got 7"):
        gemv_rms_norm(x, nw, EPS, w[:7], glu=True)
    with pytest.raises(ValueError, match="x has M=17 rows; gemv_rms_norm takes at most 16"):
        gemv_rms_norm(torch.zeros(17, 32, dtype=torch.bfloat16, device=DEVICE), nw, EPS, w)
    with pytest.raises(ValueError, match="x must have w's dtype"):
        gemv_rms_norm(x.half(), nw, EPS, w)
    with pytest.raises(ValueError, match=r"residual must have shape \(1, 8\), got torch.Size\(\[1, 9\]\)"):
        gemv_residual(x, w, torch.zeros(1, 9, dtype=torch.bfloat16, device=DEVICE))
    with pytest.raises(ValueError, match="residual must have x's dtype torch.bfloat16"):
        gemv_residual(x, w, res.float())
    with pytest.raises(ValueError, match=r"out must be a torch.bfloat16 \[1, 4\] tensor"):
        gemv_rms_norm(x, nw, EPS, w, out=torch.empty(1, 8, dtype=torch.bfloat16, device=DEVICE), glu=True)
    with pytest.raises(ValueError, match="config must be a GemvConfig or None, got tuple"):
        gemv_residual(x, w, res, config=(4, 64))
