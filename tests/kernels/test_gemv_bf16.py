"""bf16/fp16 GEMV (decode) against an fp32 matmul.

Bound: within 1/64 relative plus 2e-3 * max|ref| absolute (fp32 accumulation, one output rounding).
"""

import pytest
import torch

from kernels.gemv_bf16 import gemv_bf16, gemv_bf16_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("m,n,k", [(1, 37, 300), (3, 100, 1000), (16, 21, 64), (1, 4229, 200)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemv_matches_reference(m: int, n: int, k: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=g).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=g) * 0.05).to(dtype).to(DEVICE)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
    ref = gemv_bf16_ref(x, w)
    y = gemv_bf16(x, w, out=out)
    torch.testing.assert_close(y, ref, rtol=1 / 64, atol=2e-3 * ref.float().abs().max().item())


def test_bad_inputs_name_the_argument() -> None:
    w = torch.randn(8, 32, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="x has M=17 rows"):
        gemv_bf16(torch.randn(17, 32, dtype=torch.bfloat16, device=DEVICE), w)
    with pytest.raises(ValueError, match="x must have w's dtype"):
        gemv_bf16(torch.randn(1, 32, dtype=torch.float16, device=DEVICE), w)
    with pytest.raises(ValueError, match="w must be bfloat16 or float16"):
        gemv_bf16(torch.randn(1, 32, device=DEVICE), w.float())
    with pytest.raises(ValueError, match="x has K=31"):
        gemv_bf16(torch.randn(1, 31, dtype=torch.bfloat16, device=DEVICE), w)
    with pytest.raises(ValueError, match=r"out must be a torch.bfloat16 \[1, 8\] tensor with contiguous rows"):
        gemv_bf16(torch.randn(1, 32, dtype=torch.bfloat16, device=DEVICE), w,
                  out=torch.empty(1, 8, dtype=torch.float16, device=DEVICE))
