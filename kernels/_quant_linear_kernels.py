"""Triton kernels behind kernels.quant_linear (weight-only INT8 / INT4, dequantised in registers).

INT4 layout (see quant_linear.quantize_int4): each group of G weights of a row is G/8 little-endian int32
words (WG = G/8); nibble j (bits 4j..4j+3) of word w holds weight j*WG + w of the group. Shifting a whole word
by 4j therefore yields WG consecutive weights for every j, which multiply a contiguous slice of x: the kernels
load the packed bytes as int32 words and spend a shift, a mask-or (one LOP3) and a float subtract per weight.
Dequantised weight = (nibble - zero) * scale; symmetric weights use zero = 8.

The M == 1 GEMV (int4_gemv1_kernel) reads nibble P of a word or of its upper half with one LOP3 as the float
2^(23-4P) + q (see _nib), subtracts 2^(23-4P) + z exactly and FMAs with x, each converted x serving two row
sets. The CUDA-core INT4 GEMV for 2 <= M <= 4 applies the scale once per group: s * sum_k (q_k - z) x_k,
so the per-weight work is a shift, a mask-or, one subtract and one FMA; the tensor-core GEMMs
dequantise each weight tile to x.dtype in registers (its cost is shared by BLOCK_M rows). Conversions use
bitcast(0x4B000000 | v) - 2^23 == v  (exact for 0 <= v < 2^23), cheaper than I2F on GPUs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.pdl import pdl_enter


@triton.jit
def _u4_to_f32(v):
    # v: int32/uint32 in [0, 255] -> exact float32
    return (v | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _i8_to_f32(q):
    # int8 -> exact float32: bitcast(0x4B000000 + (q + 128)) - (2^23 + 128)
    return (q.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def int4_gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, KG,
                     stride_xm, stride_qn, stride_sn, stride_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, WG: tl.constexpr,
                     SYMMETRIC: tl.constexpr, PDL: tl.constexpr):
    """CUDA-core GEMV for tiny M: program = BLOCK_N output columns x all K, NG groups per step.

    q_ptr points at the packed weight viewed as int32 [N, K/8] (stride_qn in words).
    """
    pdl_enter(PDL)
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    n64 = n.to(tl.int64)
    g_off = tl.arange(0, NG)
    w_off = tl.arange(0, WG)
    m_idx = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, NG], dtype=tl.float32)  # M == 1: reduced over groups once, after the loop
    for kg in range(0, KG, NG):
        g = kg + g_off
        gmask = g < KG
        m2 = nmask[:, None] & gmask[None, :]
        q_ptrs = q_ptr + n64[:, None, None] * stride_qn + (g[None, :, None] * WG + w_off[None, None, :])
        words = tl.load(q_ptrs, mask=m2[:, :, None], other=0, eviction_policy="evict_first")
        words = words.to(tl.uint32, bitcast=True)  # logical shifts: shift + one LOP3 per nibble
        s = tl.load(s_ptr + n64[:, None] * stride_sn + g[None, :], mask=m2, other=0.0).to(tl.float32)
        if SYMMETRIC:
            zc = tl.full([BLOCK_N, NG], 8388616.0, dtype=tl.float32)  # 2^23 + 8
        else:
            z = tl.load(z_ptr + n64[:, None] * stride_sn + g[None, :], mask=m2, other=0).to(tl.int32)
            zc = _u4_to_f32(z) + 8388608.0  # 2^23 + z: one subtract per weight gives q - z exactly
        zc3 = zc[:, :, None]
        for m in tl.static_range(BLOCK_M):
            # x pointers in the weight tile's 3-D shape: each thread loads the x it needs (L1 hits), no
            # shared-memory layout conversion
            x3 = x_ptr + m * stride_xm + (n64[:, None, None] * 0 + g[None, :, None] * (8 * WG) + w_off[None, None, :])
            xmask = m2[:, :, None] & ((w_off[None, None, :] * 0 + m) < M)
            xj = tl.load(x3, mask=xmask, other=0.0).to(tl.float32)
            qx3 = ((words & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - zc3
            qx3 = qx3 * xj
            for j in tl.static_range(1, 8):
                xj = tl.load(x3 + j * WG, mask=xmask, other=0.0).to(tl.float32)
                wq = (((words >> (4 * j)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - zc3
                qx3 += wq * xj
            part2 = s * tl.sum(qx3, axis=2)
            if BLOCK_M == 1:
                acc1 += part2
            else:
                part = tl.sum(part2, axis=1)
                acc = tl.where(m_idx[:, None] == m, acc + part[None, :], acc)
    if BLOCK_M == 1:
        acc = tl.sum(acc1, axis=1)[None, :]
    o_ptrs = out_ptr + m_idx[:, None] * stride_om + n64[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(m_idx[:, None] < M) & nmask[None, :])


@triton.jit
def _nib(words, P: tl.constexpr, ASM: tl.constexpr):
    # Nibble P (bits 4P..4P+3) of int32 words as the exact float 2^(23-4P) + q: the nibble sits in the mantissa
    # at weight 2^(4P) of a float with exponent 23-4P. On GPUs one explicit LOP3 ((w & mask) | magic): left to
    # ptxas, the two immediates become two LOP3s. The interpreter runs the same formula in plain ops.
    if ASM:
        if P == 0:
            v = tl.inline_asm_elementwise("lop3.b32 $0, $1, 0xF, 0x4B000000, 0xEA;", "=r,r", [words],
                                          dtype=tl.int32, is_pure=True, pack=1)
        elif P == 1:
            v = tl.inline_asm_elementwise("lop3.b32 $0, $1, 0xF0, 0x49000000, 0xEA;", "=r,r", [words],
                                          dtype=tl.int32, is_pure=True, pack=1)
        elif P == 2:
            v = tl.inline_asm_elementwise("lop3.b32 $0, $1, 0xF00, 0x47000000, 0xEA;", "=r,r", [words],
                                          dtype=tl.int32, is_pure=True, pack=1)
        else:
            v = tl.inline_asm_elementwise("lop3.b32 $0, $1, 0xF000, 0x45000000, 0xEA;", "=r,r", [words],
                                          dtype=tl.int32, is_pure=True, pack=1)
    else:
        v = (words & (15 << (4 * P))) | ((150 - 4 * P) << 23)
    return v.to(tl.float32, bitcast=True)


@triton.jit
def _int4_rows(q_ptr, s_ptr, z_ptr, n, nmask, g, gmask, stride_qn, stride_sn, WG: tl.constexpr,
               SYMMETRIC: tl.constexpr):
    # words [R, NG, WG] of rows n, groups g; their high halves; scales [R, NG, 1]; z + 2^(23-4P), P = 0..3
    m2 = nmask[:, None] & gmask[None, :]
    w_off = tl.arange(0, WG)
    n64 = n.to(tl.int64)
    q_ptrs = q_ptr + n64[:, None, None] * stride_qn + (g[:, None] * WG + w_off[None, :])[None, :, :]
    lo = tl.load(q_ptrs, mask=m2[:, :, None], other=0, eviction_policy="evict_first")
    s = tl.load(s_ptr + n64[:, None] * stride_sn + g[None, :], mask=m2, other=0.0).to(tl.float32)
    if SYMMETRIC:
        z = tl.full(s.shape, 8.0, dtype=tl.float32)
    else:
        z = tl.load(z_ptr + n64[:, None] * stride_sn + g[None, :], mask=m2, other=0).to(tl.float32)
    # arithmetic >> 16 sign-fills bits 16..31, which _nib masks off
    return (lo, lo >> 16, s[:, :, None], (z + 8388608.0)[:, :, None], (z + 524288.0)[:, :, None],
            (z + 32768.0)[:, :, None], (z + 2048.0)[:, :, None])


@triton.jit
def _nib_dot(lo, hi, z0, z1, z2, z3, xj, t, J: tl.constexpr, ASM: tl.constexpr):
    # t + (q_J - z) * x_J for nibble J of every word (nibbles 0-3 from lo, 4-7 from hi)
    src = lo if J < 4 else hi
    P: tl.constexpr = J % 4
    zc = z0 if P == 0 else (z1 if P == 1 else (z2 if P == 2 else z3))
    return tl.fma(_nib(src, P, ASM) - zc, xj, t)


@triton.jit
def int4_gemv1_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, N, KG, stride_qn, stride_sn,
                      HALF: tl.constexpr, NG: tl.constexpr, WG: tl.constexpr, SYMMETRIC: tl.constexpr,
                      ASM: tl.constexpr, PDL: tl.constexpr):
    """CUDA-core GEMV for M == 1: program = two sets of HALF rows sharing every converted x value.

    Per weight: one LOP3 (_nib), one exact subtract of 2^(23-4P) + z, one FMA; per 8 weights one shift; x is
    converted once for both row sets; the group scale is one FMA per word position per step.
    """
    pdl_enter(PDL)
    pid = tl.program_id(0)
    na = pid * (2 * HALF) + tl.arange(0, HALF)
    nb = na + HALF
    ma = na < N
    mb = nb < N
    g_off = tl.arange(0, NG)
    w_off = tl.arange(0, WG)
    acc_a = tl.zeros([HALF, NG, WG], dtype=tl.float32)
    acc_b = tl.zeros([HALF, NG, WG], dtype=tl.float32)
    for kg in range(0, KG, NG):
        g = kg + g_off
        gmask = g < KG
        lo_a, hi_a, s_a, a0, a1, a2, a3 = _int4_rows(q_ptr, s_ptr, z_ptr, na, ma, g, gmask, stride_qn, stride_sn,
                                                    WG, SYMMETRIC)
        lo_b, hi_b, s_b, b0, b1, b2, b3 = _int4_rows(q_ptr, s_ptr, z_ptr, nb, mb, g, gmask, stride_qn, stride_sn,
                                                    WG, SYMMETRIC)
        # x pointers in the weight tile's shape (every thread loads the x of its own words, L1 hits)
        x3 = x_ptr + (na[:, None, None] * 0 + g[None, :, None] * (8 * WG) + w_off[None, None, :])
        xmask = (na[:, None, None] * 0 + g[None, :, None]) < KG
        x0 = tl.load(x3, mask=xmask, other=0.0).to(tl.float32)
        t_a = (_nib(lo_a, 0, ASM) - a0) * x0
        t_b = (_nib(lo_b, 0, ASM) - b0) * x0
        for j in tl.static_range(1, 8):
            xj = tl.load(x3 + j * WG, mask=xmask, other=0.0).to(tl.float32)
            t_a = _nib_dot(lo_a, hi_a, a0, a1, a2, a3, xj, t_a, j, ASM)
            t_b = _nib_dot(lo_b, hi_b, b0, b1, b2, b3, xj, t_b, j, ASM)
        acc_a = tl.fma(t_a, s_a, acc_a)
        acc_b = tl.fma(t_b, s_b, acc_b)
    ya = tl.sum(tl.sum(acc_a, axis=2), axis=1)
    yb = tl.sum(tl.sum(acc_b, axis=2), axis=1)
    tl.store(out_ptr + na, ya.to(out_ptr.dtype.element_ty), mask=ma)
    tl.store(out_ptr + nb, yb.to(out_ptr.dtype.element_ty), mask=mb)


@triton.jit
def int8_gemv_kernel(x_ptr, q_ptr, s_ptr, out_ptr, M, N, K, stride_xm, stride_qn, stride_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """CUDA-core GEMV for tiny M: program = BLOCK_N output columns x all K, per-channel scale at the end."""
    pdl_enter(PDL)
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    n64 = n.to(tl.int64)
    k_off = tl.arange(0, BLOCK_K)
    m_idx = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # M == 1: elementwise FMAs, reduced after the loop
    for k0 in range(0, K, BLOCK_K):
        k = k0 + k_off
        kmask = k < K
        wmask = nmask[:, None] & kmask[None, :]
        q = tl.load(q_ptr + n64[:, None] * stride_qn + k[None, :], mask=wmask, other=0,
                    eviction_policy="evict_first")
        w = _i8_to_f32(q)
        if BLOCK_M == 1:
            xv = tl.load(x_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            acc1 += w * xv[None, :]
        else:
            for m in tl.static_range(BLOCK_M):
                xv = tl.load(x_ptr + m * stride_xm + k, mask=kmask & ((k * 0 + m) < M), other=0.0).to(tl.float32)
                part = tl.sum(w * xv[None, :], axis=1)
                acc = tl.where(m_idx[:, None] == m, acc + part[None, :], acc)
    if BLOCK_M == 1:
        acc = tl.sum(acc1, axis=1)[None, :]
    s = tl.load(s_ptr + n64, mask=nmask, other=0.0).to(tl.float32)
    acc = acc * s[None, :]
    o_ptrs = out_ptr + m_idx[:, None] * stride_om + n64[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(m_idx[:, None] < M) & nmask[None, :])


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    # UPCAST (interpreter only): the numpy tl.dot treats bfloat16 bits as integers
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc=acc)
    return tl.dot(a, b, acc=acc)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped ordering: GROUP_M row tiles share each column tile while it sits in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def tile_coords(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile (grouped order): int64 rows and columns, and their in-bounds masks."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return m.to(tl.int64), n.to(tl.int64), m < M, n < N


@triton.jit
def store_tile(out_ptr, m64, n64, mmask, nmask, stride_om, acc):
    """out[m, n] = acc in out's dtype, inside the bounds."""
    tl.store(out_ptr + m64[:, None] * stride_om + n64[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


@triton.jit
def int4_mm_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, KG,
                   stride_xm, stride_qn, stride_sn, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WG: tl.constexpr, GROUP_M: tl.constexpr,
                   SYMMETRIC: tl.constexpr, UPCAST: tl.constexpr):
    """Tensor-core INT4 GEMM: one group of K per step, dequantised to x.dtype in registers (int32 words)."""
    m64, n64, mmask, nmask = tile_coords(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    w_off = tl.arange(0, WG)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for g in range(0, KG):
        s = tl.load(s_ptr + n64 * stride_sn + g, mask=nmask, other=0.0).to(tl.float32)
        if SYMMETRIC:
            zc = tl.full([BLOCK_N], 8388616.0, dtype=tl.float32)  # 2^23 + 8
        else:
            z = tl.load(z_ptr + n64 * stride_sn + g, mask=nmask, other=0).to(tl.int32)
            zc = 8388608.0 + z.to(tl.float32)
        # words^T tile [WG, BLOCK_N]; bitcast(0x4B000000 | q) - (2^23 + z) == q - z exactly
        words = tl.load(q_ptr + n64[None, :] * stride_qn + g * WG + w_off[:, None], mask=nmask[None, :], other=0)
        words = words.to(tl.uint32, bitcast=True)
        x_ptrs = x_ptr + m64[:, None] * stride_xm + g * (8 * WG) + w_off[None, :]
        for j in tl.static_range(8):
            xj = tl.load(x_ptrs + j * WG, mask=mmask[:, None], other=0.0)
            nib = ((words >> (4 * j)) & 0xF) | 0x4B000000
            wj = (nib.to(tl.float32, bitcast=True) - zc[None, :]) * s[None, :]
            acc = _dot(xj, wj.to(xj.dtype), acc, UPCAST)
    store_tile(out_ptr, m64, n64, mmask, nmask, stride_om, acc)


@triton.jit
def int8_mm_kernel(x_ptr, q_ptr, s_ptr, out_ptr, M, N, K, stride_xm, stride_qn, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                   UPCAST: tl.constexpr):
    """Tensor-core weight-only INT8 GEMM: weights converted to x.dtype (exact), per-channel scale last."""
    m64, n64, mmask, nmask = tile_coords(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        kmask = k < K
        xv = tl.load(x_ptr + m64[:, None] * stride_xm + k[None, :], mask=mmask[:, None] & kmask[None, :],
                     other=0.0)
        wmask = nmask[None, :] & kmask[:, None]
        q = tl.load(q_ptr + n64[None, :] * stride_qn + k[:, None], mask=wmask, other=0)
        acc = _dot(xv, _i8_to_f32(q).to(xv.dtype), acc, UPCAST)
    s = tl.load(s_ptr + n64, mask=nmask, other=0.0).to(tl.float32)
    store_tile(out_ptr, m64, n64, mmask, nmask, stride_om, acc * s[None, :])
