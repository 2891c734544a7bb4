"""Fused SwiGLU + down GEMV against silu_and_mul followed by the GEMV, and against a PyTorch reference.

The fused kernel rounds silu(g) * u to the activation dtype with silu_and_mul's formula, so it agrees with
the two-kernel path up to fp32 accumulation order: within 1/64 relative plus 2e-3 * max|ref| absolute.
Against the PyTorch reference (torch's exp) a product may round one ulp the other way: the absolute bound
adds 2^-8 * max(|silu(g) * u| @ |w|.T).
"""

import pytest
import torch

from kernels.activation import silu_and_mul
from kernels.gemv_bf16 import GemvConfig, candidate_configs, gemv_bf16
from kernels.gemv_swiglu import silu_mul_gemv, silu_mul_gemv_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Candidates of the Llama down projections (hidden, intermediate), a long-K shape with split-K candidates,
# and explicit odd ones (uneven / empty splits, tiles larger than the weight).
SHAPE_CONFIGS = [*candidate_configs(2048, 8192, "cpu"), *candidate_configs(2048, 2048, "cpu")]
EXTRA_CONFIGS = [GemvConfig(4, 64, 4, 3), GemvConfig(64, 16, 1, 16)]


def _inputs(m: int, n: int, inter: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(m * n + inter)
    gate_up = (torch.randn(m, 2 * inter, generator=g) * 2).to(dtype).to(DEVICE)
    w = (torch.randn(n, inter, generator=g) * 0.05).to(dtype).to(DEVICE)
    return gate_up, w


def _close(got: torch.Tensor, want: torch.Tensor, config: GemvConfig | None, slack: float = 0.0) -> None:
    torch.testing.assert_close(got, want, rtol=1 / 64, atol=2e-3 * want.float().abs().max().item() + slack,
                               msg=lambda msg: f"config {config}: {msg}")


def _rounding_slack(gate_up: torch.Tensor, w: torch.Tensor) -> float:
    """2^-8 * max(|silu(g) * u| @ |w|.T): one-ulp flips of the rounded products, summed over K."""
    inter = w.shape[1]
    act = torch.nn.functional.silu(gate_up[:, :inter].float()) * gate_up[:, inter:].float()
    return (act.abs() @ w.float().abs().T).max().item() / 256


@pytest.mark.parametrize("m,n,inter,dtype", [(1, 300, 64, torch.bfloat16), (2, 37, 520, torch.bfloat16),
                                             (3, 1, 200, torch.bfloat16), (4, 37, 200, torch.float16),
                                             (1, 37, 520, torch.float16), (2, 1, 64, torch.float16)])
def test_fused_matches_activation_then_gemv(m: int, n: int, inter: int, dtype: torch.dtype) -> None:
    gate_up, w = _inputs(m, n, inter, dtype)
    two_kernels = gemv_bf16(silu_and_mul(gate_up), w)
    ref, slack = silu_mul_gemv_ref(gate_up, w), _rounding_slack(gate_up, w)
    _close(two_kernels, ref, None, slack)
    configs = [None, *candidate_configs(n, inter, gate_up.device), *EXTRA_CONFIGS]
    if n < 100:  # the interpreter runs programs one by one: other shapes' configs on the small weights only
        configs += SHAPE_CONFIGS
    for config in dict.fromkeys(configs):
        out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
        got = silu_mul_gemv(gate_up, w, out=out, config=config)
        assert got.data_ptr() == out.data_ptr()
        _close(got, two_kernels, config)
        _close(got, ref, config, slack)


def test_large_gate_values_do_not_overflow() -> None:
    gate_up, w = _inputs(1, 16, 64, torch.bfloat16)
    gate_up[0, :8] = 300.0  # silu(300) = 300; silu(-300) = -0
    gate_up[0, 8:16] = -300.0
    got = silu_mul_gemv(gate_up, w)
    assert torch.isfinite(got).all()
    _close(got, silu_mul_gemv_ref(gate_up, w), None, _rounding_slack(gate_up, w))


def test_bad_inputs_name_the_argument() -> None:
    w = torch.randn(8, 16, dtype=torch.bfloat16, device=DEVICE)
    gu = torch.randn(1, 32, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match=r"gate_up has 30 columns but w_down \[8, 16\] needs 2 \* 16"):
        silu_mul_gemv(gu[:, :30], w)
    with pytest.raises(ValueError, match="gate_up has M=5 rows; silu_mul_gemv takes 1 to 4"):
        silu_mul_gemv(torch.randn(5, 32, dtype=torch.bfloat16, device=DEVICE), w)
    with pytest.raises(ValueError, match="gate_up must have w_down's dtype torch.bfloat16"):
        silu_mul_gemv(gu.half(), w)
    with pytest.raises(ValueError, match="w_down must be bfloat16 or float16"):
        silu_mul_gemv(gu.float(), w.float())
    with pytest.raises(ValueError, match="gate_up must be a 2-D"):
        silu_mul_gemv(gu[0], w)
    with pytest.raises(ValueError, match="gate_up must have contiguous rows"):
        silu_mul_gemv(torch.randn(1, 64, dtype=torch.bfloat16, device=DEVICE)[:, ::2], w)
    with pytest.raises(ValueError, match=r"out must be a torch.bfloat16 \[1, 8\] tensor"):
        silu_mul_gemv(gu, w, out=torch.empty(1, 9, dtype=torch.bfloat16, device=DEVICE))
    with pytest.raises(ValueError, match="config must be a GemvConfig or None, got tuple"):
        silu_mul_gemv(gu, w, config=(4, 64))
