"""Weight-only INT8 / INT4 linear kernels and quantisers.

Kernel vs reference (same dequantised weight, fp32 math): bf16/fp16 outputs within 1/64 relative plus
2e-3 * max|ref| absolute (bf16 output rounding); fp32 outputs within 2e-3 * max|ref| (tf32 tensor cores on
a GPU).
Round trips: INT8 |w - deq| <= scale/2; INT4 symmetric <= 0.51 * scale; asymmetric <= scale everywhere
(rounding of the zero point and of the value can add up at the group's ends) and RMS <= 0.35 * scale.
"""

import pytest
import torch

from kernels.quant_linear import (
    Int4Weight,
    dequantize_int4,
    dequantize_int8,
    int4_linear,
    int4_linear_ref,
    int8_linear,
    int8_linear_ref,
    quantize_int4,
    quantize_int8,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _rand(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.bfloat16, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def _check_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    atol = 2e-3 * ref.float().abs().max().item()
    rtol = 2e-3 if y.dtype == torch.float32 else 1 / 64
    torch.testing.assert_close(y, ref, rtol=rtol, atol=atol)


def test_int8_round_trip() -> None:
    w = _rand((67, 300), 1, scale=0.05)
    q = quantize_int8(w)
    err = (dequantize_int8(q) - w.float()).abs()
    assert (err <= q.scale[:, None] * (0.5 + 1e-5)).all()
    assert q.qweight.abs().max().item() == 127


@pytest.mark.parametrize("group_size", [128, 256])
def test_int4_round_trip(group_size: int) -> None:
    w = _rand((37, 3 * group_size), 2, scale=0.05)
    w[0, :5] = 0.0
    for symmetric in (False, True):
        q = quantize_int4(w, group_size, symmetric)
        deq = dequantize_int4(q)
        scale = q.scales.float().repeat_interleave(group_size, dim=1)
        err = (deq - w.float()).abs() / scale
        if symmetric:
            assert q.zeros is None and err.max().item() <= 0.51
        else:
            assert err.max().item() <= 1.0 and err.pow(2).mean().sqrt().item() <= 0.35
            assert (deq[0, :5] == 0).all()  # integer zero points keep 0.0 exact


def test_int4_packing_layout_and_exact_grid() -> None:
    # A weight already on the symmetric grid (scale 0.25, each group spans -7..7) must round-trip exactly.
    n, k, gs = 5, 256, 128
    ints = (torch.arange(n * k).reshape(n, k) * 7 + torch.arange(n)[:, None]) % 15 - 7
    ints[:, ::gs] = 7
    w = (ints.float() * 0.25).to(torch.bfloat16).to(DEVICE)
    q = quantize_int4(w, gs, symmetric=True)
    assert torch.equal(dequantize_int4(q), w.float())
    # int32 word w of a group, nibble j = weight j * G/8 + w: byte 4w + t holds nibbles 2t (low), 2t+1 (high)
    wg, word, t = gs // 8, 5, 3
    b = int(q.packed[1, gs // 2 + 4 * word + t])  # second group of row 1
    assert (b & 0xF) - 8 == int(ints[1, gs + 2 * t * wg + word])
    assert (b >> 4) - 8 == int(ints[1, gs + (2 * t + 1) * wg + word])


@pytest.mark.parametrize("m", [1, 3, 9, 17, 33])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_linear_matches_reference(m: int, symmetric: bool) -> None:
    n, k = 37, 384
    w = quantize_int4(_rand((n, k), 10 + m, scale=0.05), 128, symmetric)
    x = _rand((m, k), 20 + m)
    out = torch.full((m, n), float("nan"), dtype=x.dtype, device=DEVICE)
    _check_close(int4_linear(x, w, out=out), int4_linear_ref(x, w))


@pytest.mark.parametrize("m,dtype", [(1, torch.float16), (1, torch.float32), (2, torch.float32),
                                     (20, torch.float16)])
def test_int4_linear_other_dtypes_and_groups(m: int, dtype: torch.dtype) -> None:
    n, k = 53, 512
    w = quantize_int4(_rand((n, k), 3, dtype, scale=0.05), 256)
    x = _rand((m, k), 4, dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
    _check_close(int4_linear(x, w, out=out), int4_linear_ref(x, w))


def test_int4_gemv_many_programs() -> None:
    # N large enough that the GEMV heuristic picks 8-row blocks (with a ragged last block).
    n, k = 2203, 256
    w = quantize_int4(_rand((n, k), 5, scale=0.05), 128)
    x = _rand((1, k), 6)
    out = torch.full((1, n), float("nan"), dtype=x.dtype, device=DEVICE)
    _check_close(int4_linear(x, w, out=out), int4_linear_ref(x, w))


@pytest.mark.parametrize("m", [1, 3, 9, 17, 33])
def test_int8_linear_matches_reference(m: int) -> None:
    n, k = 37, 300
    w = quantize_int8(_rand((n, k), 30 + m, scale=0.05))
    x = _rand((m, k), 40 + m)
    out = torch.full((m, n), float("nan"), dtype=x.dtype, device=DEVICE)
    _check_close(int8_linear(x, w, out=out), int8_linear_ref(x, w))


def test_quantised_linear_close_to_float_linear() -> None:
    w = _rand((48, 512), 7, torch.float32, scale=0.05)
    x = _rand((2, 512), 8, torch.float32)
    ref = x @ w.T

    def rel(y: torch.Tensor) -> float:
        return ((y - ref).norm() / ref.norm()).item()

    assert rel(int8_linear(x, quantize_int8(w))) < 0.01
    assert rel(int4_linear(x, quantize_int4(w, 128))) < 0.15
    assert rel(int4_linear(x, quantize_int4(w, 128, symmetric=True))) < 0.2


def test_bad_inputs_name_the_argument() -> None:
    w = _rand((16, 256), 9)
    q4 = quantize_int4(w, 128)
    q8 = quantize_int8(w)
    with pytest.raises(ValueError, match="K=192 is not a multiple of group_size=128"):
        quantize_int4(_rand((4, 192), 1), 128)
    with pytest.raises(ValueError, match="group_size must be a power of two"):
        quantize_int4(w, 100)
    with pytest.raises(ValueError, match="w must be bfloat16"):
        quantize_int8(w.to(torch.int32))
    with pytest.raises(ValueError, match="x has K=255 but the weight has K=256"):
        int4_linear(_rand((1, 255), 1), q4)
    with pytest.raises(ValueError, match="x must be bfloat16"):
        int8_linear(torch.ones(1, 256, dtype=torch.int8, device=DEVICE), q8)
    with pytest.raises(ValueError, match="x must be 2-D"):
        int8_linear(_rand((256,), 1), q8)
    with pytest.raises(ValueError, match="w must be an Int4Weight"):
        int4_linear(_rand((1, 256), 1), q8)
    with pytest.raises(ValueError, match="zeros must be None or a contiguous uint8"):
        Int4Weight(q4.packed, q4.scales, q4.zeros[:, :1].contiguous(), 128)
    with pytest.raises(ValueError, match="out must be"):
        int8_linear(_rand((2, 256), 1), q8, out=torch.empty(2, 15, dtype=torch.bfloat16, device=DEVICE))
