"""W8A8 (int8 x int8 -> int32) linear and per-token activation quantisation.

Bounds: xq equal to the reference (same rounding rule; on a GPU an approximate division may move a value
sitting on a .5 boundary by one, so |diff| <= 1 with >= 99% exact), xs within 1e-6 relative; the linear within
1/64 relative plus 2e-3 * max|ref| of the exact-integer reference (bf16 output rounding), and within 3% (RMS,
relative) of the unquantised fp32 product.
"""

import pytest
import torch

from kernels.w8a8 import (
    W8A8Weight,
    quantize_act_per_token,
    quantize_act_per_token_ref,
    quantize_w8a8,
    w8a8_linear,
    w8a8_linear_ref,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _rand(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.bfloat16, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


@pytest.mark.parametrize("m,k", [(1, 300), (3, 2048), (17, 130), (2, 20000)])
def test_act_quant_matches_reference(m: int, k: int) -> None:
    x = _rand((m, k), m + k, scale=3.0)
    x[0, 0] = 0.0
    xq, xs = quantize_act_per_token(x)
    rq, rs = quantize_act_per_token_ref(x)
    diff = (xq.int() - rq.int()).abs()
    assert diff.max().item() <= 1 and (diff == 0).float().mean().item() >= 0.99
    torch.testing.assert_close(xs, rs, rtol=1e-6, atol=0)
    assert xq.abs().max().item() == 127


@pytest.mark.parametrize("m,n,k", [(1, 37, 300), (3, 100, 256), (17, 37, 130), (33, 70, 300)])
def test_w8a8_linear_matches_reference(m: int, n: int, k: int) -> None:
    w = quantize_w8a8(_rand((n, k), n + k, scale=0.05))
    x = _rand((m, k), m + k)
    out = torch.full((m, n), float("nan"), dtype=x.dtype, device=DEVICE)
    ref = w8a8_linear_ref(x, w)
    y = w8a8_linear(x, w, out=out)
    torch.testing.assert_close(y, ref, rtol=1 / 64, atol=2e-3 * ref.float().abs().max().item())


def test_w8a8_close_to_float_linear() -> None:
    w = _rand((64, 512), 1, torch.float32, scale=0.05)
    x = _rand((5, 512), 2, torch.float32)
    ref = x @ w.T
    y = w8a8_linear(x, quantize_w8a8(w))
    assert y.dtype == torch.float32
    assert ((y - ref).norm() / ref.norm()).item() < 0.03


def test_bad_inputs_name_the_argument() -> None:
    w = quantize_w8a8(_rand((8, 64), 3))
    with pytest.raises(ValueError, match="x has K=63 but the weight has K=64"):
        w8a8_linear(_rand((1, 63), 1), w)
    with pytest.raises(ValueError, match="x must be bfloat16"):
        w8a8_linear(torch.ones(1, 64, dtype=torch.int8, device=DEVICE), w)
    with pytest.raises(ValueError, match="w must be a W8A8Weight"):
        w8a8_linear(_rand((1, 64), 1), object())
    with pytest.raises(ValueError, match="scale must be float32"):
        W8A8Weight(w.qweight, w.scale.double())
    with pytest.raises(ValueError, match="x must be a 2-D"):
        quantize_act_per_token(_rand((64,), 1))
    with pytest.raises(ValueError, match="w must be a 2-D float"):
        quantize_w8a8(torch.ones(4, 4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r"out must be a torch.bfloat16 \[2, 8\] tensor with contiguous rows"):
        w8a8_linear(_rand((2, 64), 1), w, out=torch.empty(2, 7, dtype=torch.bfloat16, device=DEVICE))
