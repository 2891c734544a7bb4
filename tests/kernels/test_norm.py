"""RMSNorm and fused add + RMSNorm against the PyTorch references.

Bounds: bf16 outputs within 1/64 relative + 1e-2 absolute of the fp32-math reference (a bf16 ulp is 1/128
relative; the interpreter's bf16 cast truncates); fp32 outputs within 1e-5 relative.
"""

import pytest
import torch

from kernels.norm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.bfloat16: (1 / 64, 1e-2), torch.float32: (1e-5, 1e-5)}


def _poison(like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, float("nan"))


@pytest.mark.parametrize("t,h", [(1, 2048), (3, 1000), (17, 3072), (2, 20000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rms_norm_matches_reference(t: int, h: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(t * h)
    x = (torch.randn(t, h, generator=g) * 3).to(dtype).to(DEVICE)
    w = (torch.rand(h, generator=g) + 0.5).to(dtype).to(DEVICE)
    out = rms_norm(x, w, 1e-6, out=_poison(x))
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out, rms_norm_ref(x, w, 1e-6), rtol=rtol, atol=atol)


@pytest.mark.parametrize("t,h", [(1, 2048), (3, 1000), (17, 3072), (2, 20000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_add_rms_norm_matches_reference(t: int, h: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7 * t + h)
    x = torch.randn(t, h, generator=g).to(dtype).to(DEVICE)
    res = (torch.randn(t, h, generator=g) * 4).to(dtype).to(DEVICE)
    w = (torch.rand(h, generator=g) + 0.5).to(dtype).to(DEVICE)
    out, new_res = fused_add_rms_norm(x, res, w, 1e-5, out=_poison(x), residual_out=_poison(x))
    ref_out, ref_res = fused_add_rms_norm_ref(x, res, w, 1e-5)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(new_res, ref_res, rtol=rtol, atol=atol)
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)


def test_fused_add_rms_norm_in_place() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 1000, generator=g).to(torch.bfloat16).to(DEVICE)
    res = torch.randn(5, 1000, generator=g).to(torch.bfloat16).to(DEVICE)
    w = torch.ones(1000, dtype=torch.bfloat16, device=DEVICE)
    ref_out, ref_res = fused_add_rms_norm_ref(x, res, w, 1e-5)
    out, new_res = fused_add_rms_norm(x, res, w, 1e-5, out=x, residual_out=res)
    assert out.data_ptr() == x.data_ptr() and new_res.data_ptr() == res.data_ptr()
    torch.testing.assert_close(res, ref_res, rtol=1 / 64, atol=1e-2)
    torch.testing.assert_close(x, ref_out, rtol=1 / 64, atol=1e-2)


def test_bad_inputs_name_the_argument() -> None:
    x = torch.randn(3, 64, device=DEVICE)
    w = torch.ones(64, device=DEVICE)
    with pytest.raises(ValueError, match="x must be a 2-D"):
        rms_norm(x[0], w, 1e-5)
    with pytest.raises(ValueError, match="weight must be 1-D of length H=64"):
        rms_norm(x, torch.ones(63, device=DEVICE), 1e-5)
    with pytest.raises(ValueError, match="x must be bfloat16"):
        rms_norm(x.to(torch.int32), w, 1e-5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        rms_norm(x, w, 0.0)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        fused_add_rms_norm(x, torch.randn(3, 65, device=DEVICE), w, 1e-5)
    with pytest.raises(ValueError, match="residual must have x's dtype"):
        fused_add_rms_norm(x, x.to(torch.bfloat16), w, 1e-5)
    with pytest.raises(ValueError, match="out must be"):
        rms_norm(x, w, 1e-5, out=torch.empty(3, 63, device=DEVICE))
