"""The QKV GEMV with RMSNorm before and RoPE + KV-cache write after (kernels/gemv_rope.py), against its
PyTorch reference and against the unfused kernels (gemv_rms_norm, then rope_and_write_kv).

Caches are poisoned with NaN before each run, so a slot written by mistake or left unwritten fails. The
projection is bf16-rounded before the rotation in both paths; the fp32 matmul of the reference sums in
another order than the kernel, so either half of a pair may round one bf16 ulp (2^-7 relative) the other
way, which the rotation carries into both outputs times |cos| + |sin| <= sqrt(2), plus the final rounding:
the bound is 1/64 relative plus 2^-6 * max|ref|. Against the unfused kernels (the same accumulation order
and rounding points) the outputs and the caches agree to 2^-7 relative.
"""

from __future__ import annotations

import pytest
import torch

from kernels.gemv_bf16 import GemvConfig
from kernels.gemv_fused import gemv_rms_norm
from kernels.gemv_rope import gemv_rms_norm_rope, gemv_rms_norm_rope_ref, rope_config
from kernels.rope import rope_cos_sin
from kernels.rope_kv_write import rope_and_write_kv
from tests.kernels.paged_kv_fixtures import DEVICE

EPS = 1e-5
SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 64}


def _case(m: int, hq: int, hkv: int, d: int, hidden: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = (hq + 2 * hkv) * d
    blocks, bs = 6, 8

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16).to(DEVICE)

    slots = torch.randperm(blocks * bs, generator=g)[:m]
    if m > 1:
        slots[1] = -1  # this token's cache write is skipped
    return {"x": rnd(m, hidden, scale=3.0), "nw": rnd(hidden, scale=0.5) + 1, "w": rnd(n, hidden, scale=0.05),
            "pos": torch.randint(0, 200, (m,), generator=g).to(DEVICE), "slots": slots.to(DEVICE),
            "cos_sin": rope_cos_sin(d, 256, 500000.0, SCALING).to(DEVICE), "hq": hq,
            "cache_shape": (blocks, bs, hkv, d)}


def _caches(c: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full(c["cache_shape"], float("nan"), dtype=torch.bfloat16, device=DEVICE),
            torch.full(c["cache_shape"], float("nan"), dtype=torch.bfloat16, device=DEVICE))


def _fused(c: dict, config: GemvConfig | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kc, vc = _caches(c)
    out = gemv_rms_norm_rope(c["x"], c["nw"], EPS, c["w"], c["pos"], c["cos_sin"], kc, vc, c["slots"], c["hq"],
                             config=config)
    return out, kc, vc


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    finite = want.isfinite()
    assert torch.equal(got.isfinite(), finite), "written / poisoned elements differ"
    g, w = got[finite].float(), want[finite].float()
    torch.testing.assert_close(g, w, rtol=1 / 64, atol=2**-6 * w.abs().max().item())


@pytest.mark.parametrize(("m", "hq", "hkv", "d", "hidden"), [
    (1, 4, 4, 16, 96),    # no GQA, batch-1 decode
    (3, 8, 2, 32, 80),    # GQA 4, three tokens, K not a power of two
    (4, 16, 2, 16, 64),   # GQA 8
    (2, 6, 1, 8, 48),     # one kv head, heads not a power of two, tiny head_dim
])
@pytest.mark.parametrize("config", [None, GemvConfig(2, 32, 1), GemvConfig(16, 64, 4), GemvConfig(4, 16, 2, 2)])
def test_matches_the_reference_and_the_unfused_kernels(m: int, hq: int, hkv: int, d: int, hidden: int,
                                                       config: GemvConfig | None) -> None:
    c = _case(m, hq, hkv, d, hidden, seed=m * 100 + hq + d)
    out, kc, vc = _fused(c, config)
    rk, rv = _caches(c)
    ref = gemv_rms_norm_rope_ref(c["x"], c["nw"], EPS, c["w"], c["pos"], c["cos_sin"], rk, rv, c["slots"], c["hq"])
    _close(out, ref)
    _close(kc, rk)
    _close(vc, rv)
    # unfused: the same GEMV (rows in natural order), then the RoPE + KV write kernel
    uk, uv = _caches(c)
    cfg = rope_config(config) if config is not None else None
    y = gemv_rms_norm(c["x"], c["nw"], EPS, c["w"], config=cfg)
    q = y[:, :hq * d].view(m, hq, d)
    k, v = y[:, hq * d:(hq + hkv) * d].view(m, hkv, d), y[:, (hq + hkv) * d:].view(m, hkv, d)
    rope_and_write_kv(q, k, v, c["pos"], c["cos_sin"], uk, uv, c["slots"])
    for got, want in ((out, y), (kc, uk), (vc, uv)):
        assert torch.equal(got.isfinite(), want.isfinite())
        torch.testing.assert_close(got[want.isfinite()].float(), want[want.isfinite()].float(), rtol=2**-7, atol=0)


def test_rope_config_makes_rows_even_and_k_whole() -> None:
    assert rope_config(GemvConfig(1, 512, 4, 4)) == GemvConfig(2, 512, 4, 1)
    assert rope_config(GemvConfig(8, 1024, 8, pdl=True)) == GemvConfig(8, 1024, 8, 1, True)


def test_bad_arguments_name_what_is_wrong() -> None:
    c = _case(2, 4, 2, 16, 64, seed=5)
    kc, vc = _caches(c)
    args = (c["x"], c["nw"], EPS, c["w"], c["pos"], c["cos_sin"], kc, vc, c["slots"])
    with pytest.raises(ValueError, match=r"w has 128 rows; num_q_heads=6 .* need \(Hq \+ 2 Hkv\) \* D = 160"):
        gemv_rms_norm_rope(*args, 6)
    with pytest.raises(ValueError, match="writes caches of x's dtype torch.bfloat16 only, got torch.float8_e4m3fn"):
        q8 = kc.to(torch.float8_e4m3fn)
        gemv_rms_norm_rope(*args[:6], q8, q8, c["slots"], 4)
    with pytest.raises(ValueError, match="positions"):
        gemv_rms_norm_rope(*args[:4], c["pos"][:1], *args[5:], 4)
    with pytest.raises(ValueError, match="slot_mapping"):
        gemv_rms_norm_rope(*args[:8], c["slots"].float(), 4)
    with pytest.raises(ValueError, match=r"cos_sin must be a contiguous \[max_pos, 16\]"):
        gemv_rms_norm_rope(*args[:5], c["cos_sin"][:, :8].contiguous(), *args[6:], 4)
