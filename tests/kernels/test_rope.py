"""RoPE: cos/sin cache and reference vs transformers' Llama rotary embedding; kernel vs reference.

Bounds: cache vs HF (same fp32 formula) <= 1e-6 absolute; reference vs HF apply_rotary_pos_emb in fp32
<= 1e-5 absolute (|x| ~ 1); kernel vs reference: fp32 <= 2e-6 (FMA contraction on CUDA), bf16 within
one output ulp (rtol 2^-7).
"""

from __future__ import annotations

import pytest
import torch

from kernels.rope import apply_rope_, apply_rope_ref, rope_cos_sin, rope_inv_freq
from tests.kernels.paged_kv_fixtures import DEVICE

LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("scaling", [None, LLAMA3])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_reference_matches_transformers(scaling: dict | None, head_dim: int) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    theta = 500000.0
    params = {"rope_type": "default", "rope_theta": theta} if scaling is None else {**scaling, "rope_theta": theta}
    config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=head_dim, max_position_embeddings=131072, rope_parameters=params)
    gen = torch.Generator().manual_seed(head_dim)
    positions = torch.tensor([0, 1, 7, 2047, 8191, 8192, 30000, 131071])
    hf_cos, hf_sin = LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), positions[None])
    cos_sin = rope_cos_sin(head_dim, 131072, theta, scaling)
    half = head_dim // 2
    torch.testing.assert_close(cos_sin[positions, :half], hf_cos[0, :, :half], rtol=0, atol=1e-6)
    torch.testing.assert_close(cos_sin[positions, half:], hf_sin[0, :, :half], rtol=0, atol=1e-6)

    q = torch.randn(len(positions), 4, head_dim, generator=gen)
    k = torch.randn(len(positions), 2, head_dim, generator=gen)
    # HF layout: [batch, heads, seq, dim] with cos/sin [batch, seq, dim].
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], hf_cos, hf_sin)
    apply_rope_ref(q, k, positions, cos_sin)
    torch.testing.assert_close(q, hf_q[0].transpose(0, 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(k, hf_k[0].transpose(0, 1), rtol=0, atol=1e-5)


def test_llama3_scaling_changes_only_low_frequencies() -> None:
    plain = rope_inv_freq(64, 500000.0, None)
    scaled = rope_inv_freq(64, 500000.0, LLAMA3)
    # High frequencies (wavelength < 8192 / 4) are kept; the lowest (wavelength > 8192) are divided by 32.
    assert torch.equal(plain[:4], scaled[:4])
    torch.testing.assert_close(scaled[-1], plain[-1] / 32, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("dtype", "rtol", "atol"), [(torch.float32, 0.0, 2e-6), (torch.bfloat16, 2**-7, 1e-6)])
@pytest.mark.parametrize(("hq", "hkv", "head_dim"), [(32, 8, 64), (6, 2, 128)])
def test_kernel_matches_reference(dtype: torch.dtype, rtol: float, atol: float, hq: int, hkv: int,
                                  head_dim: int) -> None:
    gen = torch.Generator().manual_seed(hq)
    num_tokens = 11
    cos_sin = rope_cos_sin(head_dim, 5000, 500000.0, LLAMA3, device=DEVICE)
    positions = torch.randint(0, 5000, (num_tokens,), generator=gen)
    positions[0] = 0
    positions = positions.to(DEVICE)
    # q and k as strided views of one fused qkv buffer (as the engine produces them).
    qkv = torch.randn(num_tokens, hq + 2 * hkv, head_dim, generator=gen).to(dtype).to(DEVICE)
    original, expected = qkv.clone(), qkv.clone()
    q, k = qkv[:, :hq], qkv[:, hq:hq + hkv]
    apply_rope_(q, k, positions, cos_sin)
    apply_rope_ref(expected[:, :hq], expected[:, hq:hq + hkv], positions, cos_sin)
    torch.testing.assert_close(qkv.float(), expected.float(), rtol=rtol, atol=atol)
    assert torch.equal(qkv[0], original[0])  # position 0 is the identity rotation
    assert torch.equal(qkv[:, hq + hkv:], original[:, hq + hkv:])  # v untouched
    assert not torch.allclose(qkv[1:, :hq + hkv].float(), original[1:, :hq + hkv].float(), atol=0.1)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="scaling rope_type 'yarn' is not supported"):
        rope_cos_sin(64, 16, 10000.0, {"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="lacks"):
        rope_cos_sin(64, 16, 10000.0, {"rope_type": "llama3", "factor": 8.0})
    q = torch.zeros(3, 4, 64)
    with pytest.raises(ValueError, match="positions has dtype torch.float32"):
        apply_rope_(q, q[:, :2], torch.zeros(3), rope_cos_sin(64, 16, 10000.0))
