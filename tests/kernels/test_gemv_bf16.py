"""bf16/fp16 GEMV (decode) against an fp32 matmul, for the default launch and every candidate config.

Bound: within 1/64 relative plus 2e-3 * max|ref| absolute (fp32 accumulation, one output rounding).
"""

import pytest
import torch

from kernels.gemv_bf16 import GemvConfig, candidate_configs, default_config, gemv_bf16, gemv_bf16_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The Llama-3.2-1B/3B decode shapes (N, K); their candidates also run on the small test weights below.
LLAMA_SHAPES = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048), (3072, 8192)]
RUN_SHAPES = [(3072, 2048), (2048, 8192), (128256, 2048)]  # whose candidates run on every test weight
# Tiles much larger than the test weights, K split in uneven pieces, empty splits (K=64 in 16 splits).
EXTRA_CONFIGS = [GemvConfig(16, 1024, 8, 1), GemvConfig(4, 64, 4, 3), GemvConfig(64, 16, 1, 16),
                 GemvConfig(2, 4096, 8, 2)]


def _inputs(m: int, n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=g).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=g) * 0.05).to(dtype).to(DEVICE)
    return x, w


def _check(x: torch.Tensor, w: torch.Tensor, config: GemvConfig | None) -> None:
    out = torch.full((x.shape[0], w.shape[0]), float("nan"), dtype=x.dtype, device=DEVICE)
    ref = gemv_bf16_ref(x, w)
    y = gemv_bf16(x, w, out=out, config=config)
    assert y.data_ptr() == out.data_ptr()
    torch.testing.assert_close(y, ref, rtol=1 / 64, atol=2e-3 * ref.float().abs().max().item(),
                               msg=lambda msg: f"config {config}: {msg}")


@pytest.mark.parametrize("m,n,k", [(1, 37, 300), (3, 100, 1000), (16, 21, 64), (1, 4229, 200)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemv_matches_reference(m: int, n: int, k: int, dtype: torch.dtype) -> None:
    _check(*_inputs(m, n, k, dtype), None)


@pytest.mark.parametrize("m,n,k,dtype", [(1, 300, 64, torch.bfloat16), (2, 37, 520, torch.bfloat16),
                                         (3, 1, 520, torch.bfloat16), (4, 37, 200, torch.float16),
                                         (1, 1, 200, torch.float16)])
def test_every_candidate_config_matches_reference(m: int, n: int, k: int, dtype: torch.dtype) -> None:
    x, w = _inputs(m, n, k, dtype)
    configs = candidate_configs(n, k, x.device)
    configs += [c for nk in RUN_SHAPES for c in candidate_configs(*nk, x.device)] + EXTRA_CONFIGS
    for config in dict.fromkeys(configs):
        _check(x, w, config)


@pytest.mark.parametrize("n,k", LLAMA_SHAPES + [(1, 64), (37, 200), (300, 520), (5, 4096)])
def test_candidates_are_few_distinct_and_cover_the_variants(n: int, k: int) -> None:
    configs = candidate_configs(n, k, torch.device("cpu"))
    assert configs[0] == default_config(n, k, torch.device("cpu"))
    assert 1 <= len(configs) <= 6
    assert len(set(configs)) == len(configs)
    assert any(c.split_k > 1 for c in configs) == (k >= 4096)
    k_pow2 = max(16, 1 << (k - 1).bit_length())
    if k_pow2 <= 8192:  # whole rows in one tile (two above 4096)
        assert any(c.block_k * (1 if k_pow2 <= 4096 else 2) == k_pow2 and c.split_k == 1 for c in configs)


def test_default_config_is_the_old_launch_shape() -> None:
    cpu = torch.device("cpu")  # off CUDA the heuristics assume an H100's 132 SMs
    assert default_config(3072, 2048, cpu) == GemvConfig(8, 512, 4, 1)
    assert default_config(128256, 2048, cpu) == GemvConfig(16, 256, 4, 1)
    assert default_config(37, 300, cpu) == GemvConfig(1, 512, 4, 1)


@pytest.mark.parametrize("kwargs,match", [
    ({"block_n": 3}, r"GemvConfig.block_n must be a power of two in \[1, 64\], got 3"),
    ({"block_n": 128, "block_k": 16}, r"GemvConfig.block_n must be a power of two in \[1, 64\], got 128"),
    ({"block_k": 8}, r"GemvConfig.block_k must be a power of two in \[16, 8192\], got 8"),
    ({"block_k": 1000}, r"GemvConfig.block_k must be a power of two in \[16, 8192\], got 1000"),
    ({"num_warps": 3}, r"GemvConfig.num_warps must be 1, 2, 4, 8 or 16, got 3"),
    ({"split_k": 0}, r"GemvConfig.split_k must be in \[1, 16\], got 0"),
    ({"split_k": 17}, r"GemvConfig.split_k must be in \[1, 16\], got 17"),
    ({"block_n": 4, "block_k": 8192}, r"tile block_n \* block_k = 32768 elements exceeds 16384"),
    ({"block_n": 8, "block_k": 2048, "num_warps": 4},
     r"tile of 16384 elements is 128 per thread with num_warps=4; at most 64"),
    ({"block_n": 2.0}, r"GemvConfig.block_n must be an int, got 2.0"),
    ({"split_k": True}, r"GemvConfig.split_k must be an int, got True"),
])
def test_bad_configs_name_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GemvConfig(**kwargs)


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
    with pytest.raises(ValueError, match=r"out must be a torch.bfloat16 \[1, 8\] tensor with contiguous"):
        gemv_bf16(torch.randn(1, 32, dtype=torch.bfloat16, device=DEVICE), w,
                  out=torch.empty(1, 8, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="config must be a GemvConfig or None, got dict"):
        gemv_bf16(torch.randn(1, 32, dtype=torch.bfloat16, device=DEVICE), w, config={"block_n": 4})
