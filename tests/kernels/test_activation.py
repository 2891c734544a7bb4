"""silu_and_mul against the PyTorch reference.

Bounds: bf16 within 1/64 relative + 1e-2 absolute (fp32 math, one output rounding); fp32 within 1e-5 relative.
"""

import pytest
import torch

from kernels.activation import silu_and_mul, silu_and_mul_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("t,inter", [(1, 8192), (3, 77), (17, 1000), (33, 2051)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_silu_and_mul_matches_reference(t: int, inter: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(t + inter)
    gate_up = (torch.randn(t, 2 * inter, generator=g) * 4).to(dtype).to(DEVICE)
    out = torch.full((t, inter), float("nan"), dtype=dtype, device=DEVICE)
    silu_and_mul(gate_up, out=out)
    rtol, atol = (1 / 64, 1e-2) if dtype == torch.bfloat16 else (1e-5, 1e-5)
    torch.testing.assert_close(out, silu_and_mul_ref(gate_up), rtol=rtol, atol=atol)


def test_extreme_gates_stay_finite() -> None:
    gate_up = torch.tensor([[-200.0, 0.0, 200.0, 2.0, 2.0, 2.0]], device=DEVICE)
    out = silu_and_mul(gate_up)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 400.0]], device=DEVICE))


def test_bad_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match="gate_up must be a 2-D"):
        silu_and_mul(torch.randn(8, device=DEVICE))
    with pytest.raises(ValueError, match="must be even"):
        silu_and_mul(torch.randn(2, 7, device=DEVICE))
    with pytest.raises(ValueError, match="gate_up must be bfloat16"):
        silu_and_mul(torch.ones(2, 8, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="out must be"):
        silu_and_mul(torch.randn(2, 8, device=DEVICE), out=torch.empty(2, 8, device=DEVICE))
