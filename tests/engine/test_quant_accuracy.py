"""Each quantisation flag against the bf16 engine on one fixed random model: the stated bounds.

Error = |logits - bf16 logits| / std(bf16 logits), over every position of a 49-token prompt
(prefilled in two chunks, so the quantised KV cache is read back). Measured on the CPU (the
figures are in BENCHMARKS.md); INT4's error is the quantisation itself: the INT4 engine computes
exactly the model of its dequantised weights (test_triton_backend.py).
"""

from __future__ import annotations

import pytest
import torch

from tests.engine.test_model import chunked_logits, make_seq, runner

DEV = "cuda" if torch.cuda.is_available() else "cpu"
IDS = list(range(11, 60))
# flag: (engine settings, bound on the mean error, bound on the max error, least top-1 agreement)
BOUNDS = {
    "int8": ({"quantization": "int8"}, 0.05, 0.4, 0.8),
    "int4": ({"quantization": "int4"}, 0.5, 3.0, 0.3),
    "w8a8": ({"quantization": "w8a8"}, 0.06, 0.4, 0.8),
    "kv-int8": ({"kv_cache_dtype": "int8"}, 0.03, 0.2, 0.85),
    "kv-fp8": ({"kv_cache_dtype": "fp8"}, 0.1, 0.6, 0.8),
}


@pytest.fixture(scope="module")
def bf16_logits(tiny_llama_wide) -> torch.Tensor:
    r = runner(tiny_llama_wide, dtype="bfloat16", device=DEV, enforce_eager=True)
    return chunked_logits(r, make_seq("a", IDS, 0), [len(IDS)])


@pytest.mark.parametrize("flag", list(BOUNDS))
def test_quantized_engine_within_bound_of_bf16(tiny_llama_wide, bf16_logits: torch.Tensor, flag: str) -> None:
    settings, mean_bound, max_bound, agree_bound = BOUNDS[flag]
    r = runner(tiny_llama_wide, dtype="bfloat16", device=DEV, enforce_eager=True, **settings)
    got = chunked_logits(r, make_seq("a", IDS, 0), [30, len(IDS) - 30])
    err = (got - bf16_logits).abs() / bf16_logits.std()
    assert 0 < err.mean() < mean_bound and err.max() < max_bound  # > 0: the flag really changed the numbers
    assert (got.argmax(-1) == bf16_logits.argmax(-1)).float().mean() >= agree_bound
