"""Weight-only INT8 (per-channel) and INT4 (group-wise) linear layers, dequantised inside the kernels.

Quantise once at load time (``quantize_int8`` / ``quantize_int4``, plain PyTorch on the weight's device),
then call ``int8_linear`` / ``int4_linear`` every step. Paths by rows of x: INT4 with M == 1 its own GEMV
kernel (int4_gemv1_kernel); M <= FMA_MAX_M (4) a CUDA-core
GEMV with many programs over N (batch-1 decode, weight streaming); M <= 16 a tensor-core kernel with one
16-row tile and narrow N blocks; larger M a tiled tensor-core GEMM. ``dequantize_int8`` /
``dequantize_int4`` give the float weights the ``*_ref`` references multiply with.

INT4 packing (unsigned nibbles): read as little-endian int32 words, group g of row n is words
[g*G/8, (g+1)*G/8); nibble j (bits 4j..4j+3) of its word w holds q[n, g*G + j*G/8 + w]. Weight ~= (q - zero) *
scale, with zero = 8 for symmetric weights (zeros is None).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from kernels import _quant_linear_kernels as qk
from kernels._gemv_util import (
    FLOAT_DTYPES,
    FMA_MAX_M,
    SKINNY_MAX_M,
    check_activation,
    check_same_device,
    interpreting,
    pick_block_n,
    pow2_at_most,
    prepare_out,
)
from kernels.pdl import pdl_launch_options

_GEMV_TILE_BYTES = 4096  # weight bytes one GEMV program loads per loop step


@dataclass(frozen=True, eq=False)
class Int8Weight:
    """Per-output-channel symmetric INT8 weight: w ~= qweight * scale[:, None]."""

    qweight: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N]

    def __post_init__(self) -> None:
        if self.qweight.dtype != torch.int8 or self.qweight.dim() != 2 or not self.qweight.is_contiguous():
            raise ValueError(f"qweight must be a contiguous int8 [N, K] tensor, got {self.qweight.dtype} "
                             f"{tuple(self.qweight.shape)}")
        if self.scale.dtype != torch.float32 or tuple(self.scale.shape) != (self.qweight.shape[0],):
            raise ValueError(f"scale must be float32 [{self.qweight.shape[0]}], got {self.scale.dtype} "
                             f"{tuple(self.scale.shape)}")


def check_int8_call(x: torch.Tensor, w: object, kind: type, article: str = "a") -> tuple[int, int]:
    """Checks of an INT8-weight linear call (``w`` a ``kind``, x [M, K] on its device); returns (N, K)."""
    if not isinstance(w, kind):
        raise ValueError(f"w must be {article} {kind.__name__}, got {type(w).__name__}")
    n, k = w.qweight.shape
    check_activation(x, k)
    check_same_device(("x", x), ("w.qweight", w.qweight), ("w.scale", w.scale))
    return n, k


@dataclass(frozen=True, eq=False)
class Int4Weight:
    """Group-wise INT4 weight, two nibbles per byte (layout in the module docstring)."""

    packed: torch.Tensor  # uint8 [N, K // 2]
    scales: torch.Tensor  # float [N, K // G]
    zeros: torch.Tensor | None  # uint8 [N, K // G] (asymmetric) or None (symmetric, zero = 8)
    group_size: int

    def __post_init__(self) -> None:
        g = self.group_size
        if not isinstance(g, int) or g < 128 or g > 1024 or g & (g - 1):
            raise ValueError(f"group_size must be a power of two in [128, 1024], got {g}")
        if self.packed.dtype != torch.uint8 or self.packed.dim() != 2 or not self.packed.is_contiguous():
            raise ValueError(f"packed must be a contiguous uint8 [N, K/2] tensor, got {self.packed.dtype} "
                             f"{tuple(self.packed.shape)}")
        n, half_k = self.packed.shape
        if (2 * half_k) % g:
            raise ValueError(f"packed implies K={2 * half_k}, not a multiple of group_size={g}")
        groups = (n, 2 * half_k // g)
        if self.scales.dtype not in FLOAT_DTYPES or tuple(self.scales.shape) != groups:
            raise ValueError(f"scales must be a float {groups} tensor, got {self.scales.dtype} "
                             f"{tuple(self.scales.shape)}")
        if not self.scales.is_contiguous():
            raise ValueError("scales must be contiguous")
        if self.zeros is not None and (self.zeros.dtype != torch.uint8 or tuple(self.zeros.shape) != groups
                                       or not self.zeros.is_contiguous()):
            raise ValueError(f"zeros must be None or a contiguous uint8 {groups} tensor, got "
                             f"{self.zeros.dtype} {tuple(self.zeros.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K) of the unpacked weight."""
        return self.packed.shape[0], 2 * self.packed.shape[1]


def _check_weight(w: torch.Tensor, name: str = "w") -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [N, K] tensor, got {getattr(w, 'shape', type(w).__name__)}")
    if w.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be bfloat16, float16 or float32, got {w.dtype}")


def quantize_int8(w: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel INT8: scale = amax(|w[n]|) / 127, q = round(w / scale) in [-127, 127].

    Args:
        w: [N, K] float weight.

    Returns:
        Int8Weight on w's device.
    """
    _check_weight(w)
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / 127.0).clamp_min(1e-10)
    q = torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Weight(q.contiguous(), scale.contiguous())


def dequantize_int8(w: Int8Weight) -> torch.Tensor:
    """Float32 [N, K] weight that an Int8Weight stands for."""
    return w.qweight.float() * w.scale[:, None]


def quantize_int4(w: torch.Tensor, group_size: int = 128, symmetric: bool = False) -> Int4Weight:
    """Group-wise INT4 round-to-nearest quantisation.

    Asymmetric: per group, scale = (max(w, 0) - min(w, 0)) / 15 and integer zero = round(-min / scale), so
    0.0 is exact; q = clamp(round(w / scale) + zero, 0, 15). Symmetric: scale = amax / 7, q = clamp(round(w /
    scale), -8, 7) + 8. Scales are stored in w.dtype for bf16/fp16 weights (float32 otherwise) and q is
    computed with the stored scale.

    Args:
        w: [N, K] float weight, K a multiple of group_size.
        group_size: weights per scale, a power of two in [128, 1024].
        symmetric: no zero points (zeros is None) when True.

    Returns:
        Int4Weight on w's device.
    """
    _check_weight(w)
    g = group_size
    if not isinstance(g, int) or g < 128 or g > 1024 or g & (g - 1):
        raise ValueError(f"group_size must be a power of two in [128, 1024], got {group_size}")
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"w's K={k} is not a multiple of group_size={group_size}")
    sdtype = w.dtype if w.dtype in (torch.bfloat16, torch.float16) else torch.float32
    tiny = 2.0**-14 if sdtype == torch.float16 else 1e-10
    wg = w.float().reshape(n, k // group_size, group_size)
    if symmetric:
        scale = (wg.abs().amax(dim=2) / 7.0).clamp_min(tiny).to(sdtype)
        q = torch.round(wg / scale.float()[..., None]).clamp_(-8, 7) + 8
        zeros = None
    else:
        lo = wg.amin(dim=2).clamp_max(0.0)
        hi = wg.amax(dim=2).clamp_min(0.0)
        scale = ((hi - lo) / 15.0).clamp_min(tiny).to(sdtype)
        zf = torch.round(-lo / scale.float()).clamp_(0, 15)
        q = (torch.round(wg / scale.float()[..., None]) + zf[..., None]).clamp_(0, 15)
        zeros = zf.to(torch.uint8).contiguous()
    # [n, groups, j, w] -> [n, groups, w, j]: word w collects nibbles j = 0..7 (two per byte, low first)
    q = q.to(torch.uint8).reshape(n, k // group_size, 8, group_size // 8).transpose(2, 3)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).reshape(n, k // 2)
    return Int4Weight(packed.contiguous(), scale.contiguous(), zeros, group_size)


def dequantize_int4(w: Int4Weight) -> torch.Tensor:
    """Float32 [N, K] weight that an Int4Weight stands for."""
    n, k = w.shape
    g = w.group_size
    p = w.packed.reshape(n, k // g, g // 8, 4)  # [n, groups, word w, byte]
    q = torch.stack([p & 0xF, p >> 4], dim=4).reshape(n, k // g, g // 8, 8)  # [..., w, j]
    q = q.transpose(2, 3).reshape(n, k // g, g).float()
    z = w.zeros.float() if w.zeros is not None else torch.full_like(w.scales, 8, dtype=torch.float32)
    return ((q - z[..., None]) * w.scales.float()[..., None]).reshape(n, k)


def _mm_config(m: int, n: int, device: torch.device) -> dict[str, int]:
    """Tile sizes of the tensor-core kernels: one 16-row tile with narrow N blocks when skinny."""
    if m <= SKINNY_MAX_M:
        return {"BLOCK_M": 16, "BLOCK_N": pick_block_n(n, device, max_block=64, min_block=16),
                "num_warps": 4, "num_stages": 4}
    if m <= 64:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}


def _gemv1_config(n: int, kg: int, wg: int, device: torch.device) -> tuple[int, int, int]:
    """(HALF, NG, num_warps) of int4_gemv1_kernel: 2*HALF rows per program, NG groups per step."""
    half = pick_block_n(n, device, max_block=16, min_block=2) // 2
    ng = pow2_at_most(_GEMV_TILE_BYTES // (2 * half * 4 * wg), kg)
    return half, ng, 4


def int8_linear(x: torch.Tensor, w: Int8Weight, out: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """y = x @ dequant(w).T with the INT8 weight dequantised in registers.

    Args:
        x: [M, K] bf16/fp16/fp32 activations (rows contiguous).
        w: Int8Weight of shape [N, K].
        out: optional [M, N] output buffer of x.dtype.
        pdl: launch the decode-sized (M <= 4) kernel with programmatic dependent launch (``kernels.pdl``;
            ValueError off Hopper); the kernels of larger M launch without it.

    Returns:
        [M, N] tensor of x.dtype.
    """
    n, k = check_int8_call(x, w, Int8Weight, "an")
    out = prepare_out(x, n, out)
    m = x.shape[0]
    launch = pdl_launch_options(pdl, x.device)
    if m <= FMA_MAX_M:
        block_n = pick_block_n(n, x.device)
        block_k = pow2_at_most(_GEMV_TILE_BYTES // block_n, triton.next_power_of_2(k))
        grid = (triton.cdiv(n, block_n),)
        qk.int8_gemv_kernel[grid](x, w.qweight, w.scale, out, m, n, k, x.stride(0), w.qweight.stride(0),
                                  out.stride(0), BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n,
                                  BLOCK_K=block_k, PDL=pdl, num_warps=4, **launch)
        return out
    cfg = _mm_config(m, n, x.device)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    qk.int8_mm_kernel[grid](x, w.qweight, w.scale, out, m, n, k, x.stride(0), w.qweight.stride(0),
                            out.stride(0), BLOCK_K=64, GROUP_M=8, UPCAST=interpreting(), **cfg)
    return out


def int4_linear(x: torch.Tensor, w: Int4Weight, out: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """y = x @ dequant(w).T with the INT4 weight unpacked and dequantised in registers.

    Args:
        x: [M, K] bf16/fp16/fp32 activations (rows contiguous).
        w: Int4Weight of shape [N, K].
        out: optional [M, N] output buffer of x.dtype.
        pdl: as for :func:`int8_linear`.

    Returns:
        [M, N] tensor of x.dtype.
    """
    if not isinstance(w, Int4Weight):
        raise ValueError(f"w must be an Int4Weight, got {type(w).__name__}")
    n, k = w.shape
    check_activation(x, k)
    named = [("x", x), ("w.packed", w.packed), ("w.scales", w.scales)]
    check_same_device(*named, *([("w.zeros", w.zeros)] if w.zeros is not None else []))
    out = prepare_out(x, n, out)
    m = x.shape[0]
    kg = k // w.group_size
    wg = w.group_size // 8
    words = w.packed.view(torch.int32)  # [N, K/8]
    zeros = w.zeros if w.zeros is not None else w.packed  # never read when symmetric
    sym = w.zeros is None
    launch = pdl_launch_options(pdl, x.device)
    if m == 1:
        half, ng, warps = _gemv1_config(n, kg, wg, x.device)
        grid = (triton.cdiv(n, 2 * half),)
        qk.int4_gemv1_kernel[grid](x, words, w.scales, zeros, out, n, kg, words.stride(0), w.scales.stride(0),
                                   HALF=half, NG=ng, WG=wg, SYMMETRIC=sym, ASM=not interpreting(),
                                   PDL=pdl, num_warps=warps, **launch)
        return out
    if m <= FMA_MAX_M:
        block_n = pick_block_n(n, x.device)
        ng = pow2_at_most(_GEMV_TILE_BYTES // (block_n * 4 * wg), kg)
        grid = (triton.cdiv(n, block_n),)
        qk.int4_gemv_kernel[grid](x, words, w.scales, zeros, out, m, n, kg, x.stride(0),
                                  words.stride(0), w.scales.stride(0), out.stride(0),
                                  BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, NG=ng, WG=wg,
                                  SYMMETRIC=sym, PDL=pdl, num_warps=4, **launch)
        return out
    cfg = _mm_config(m, n, x.device)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    qk.int4_mm_kernel[grid](x, words, w.scales, zeros, out, m, n, kg, x.stride(0), words.stride(0),
                            w.scales.stride(0), out.stride(0), WG=wg, GROUP_M=8, SYMMETRIC=sym,
                            UPCAST=interpreting(), **cfg)
    return out


def int8_linear_ref(x: torch.Tensor, w: Int8Weight) -> torch.Tensor:
    """Plain PyTorch reference of :func:`int8_linear` (fp32 matmul with the dequantised weight)."""
    return (x.float() @ dequantize_int8(w).T).to(x.dtype)


def int4_linear_ref(x: torch.Tensor, w: Int4Weight) -> torch.Tensor:
    """Plain PyTorch reference of :func:`int4_linear` (fp32 matmul with the dequantised weight)."""
    return (x.float() @ dequantize_int4(w).T).to(x.dtype)
