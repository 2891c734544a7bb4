"""The decode QKV projection with RMSNorm before and RoPE + KV-cache write after, in one kernel.

At batch 1 a fused decoder layer (``kernels.gemv_fused``) still launches a separate RoPE + KV-write kernel
(``kernels.rope_kv_write``) between the QKV GEMV and attention: ~2 µs of launch and dependency latency per
layer for a few KiB of work. :func:`gemv_rms_norm_rope` folds it into the GEMV's epilogue:

- rows are assigned to programs in rotate-half pairs: local row ``2j`` of a program is element ``d`` of
  some head and local row ``2j + 1`` is element ``d + D/2`` of the same head, so every program holds both
  halves of each pair it computes (``BLOCK_N`` even);
- the epilogue rounds each output to the activation dtype (as the unfused GEMV stores it), rotates q and k
  pairs by the token's position in fp32 with ``kernels.rope``'s formula, rounds once, stores q, k and v
  into the [M, N] output like the unfused path leaves it, and stores k and v into the paged caches at the
  token's slot (a negative slot skips the cache write, as ``kernels.kv_write`` does).

Only caches of the activation dtype (bf16/fp16, no scales) are written here; quantised caches keep the
separate kernel.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from kernels._gemv_kernel import gemv_rows
from kernels._gemv_util import prepare_out
from kernels._util import check_kv_cache, check_same_device, check_shape, check_tensor
from kernels.gemv_bf16 import GemvConfig, check_rows, check_weight, resolve_config
from kernels.gemv_fused import check_norm, gemv_rms_norm_ref
from kernels.kv_write import write_kv_ref
from kernels.pdl import pdl_launch_options, pdl_trigger
from kernels.rope import apply_rope_ref, check_positions


def rope_config(config: GemvConfig) -> GemvConfig:
    """``config`` made valid for :func:`gemv_rms_norm_rope`: an even number of rows (at least 2), no K split."""
    return dataclasses.replace(config, block_n=max(2, config.block_n), split_k=1)


@triton.jit
def _qkv_rope_kernel(x_ptr, w_ptr, out_ptr, nw_ptr, pos_ptr, cs_ptr, slot_ptr, kc_ptr, vc_ptr, M, N, K, eps,
                     stride_xm, stride_wn, stride_om, num_q_heads, num_kv_heads,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HALF: tl.constexpr,
                     PDL: tl.constexpr, LATE_TRIGGER: tl.constexpr):
    # Pair p (global) = (head p // HALF, element p % HALF); local row 2j + h of program pid is pair
    # pid * BLOCK_N / 2 + j, half h, i.e. weight row head * 2 * HALF + h * HALF + element.
    PAIRS: tl.constexpr = BLOCK_N // 2
    pid = tl.program_id(0)
    i = tl.arange(0, BLOCK_N)
    pair = pid * PAIRS + i // 2
    n = (pair // HALF) * (2 * HALF) + (i % 2) * HALF + pair % HALF
    nmask = n < N
    n64 = n.to(tl.int64)
    m_idx = tl.arange(0, BLOCK_M)
    acc, _ = gemv_rows(x_ptr, w_ptr, nw_ptr, n64, nmask, 0, K, K, M, 0, eps, stride_xm, stride_wn, BLOCK_M, BLOCK_N,
                       BLOCK_K, True, False, PDL, LATE_TRIGGER)
    dt = out_ptr.dtype.element_ty
    # the projection as the unfused GEMV stores it, then split into the pairs' halves [BLOCK_M, PAIRS]
    x1, x2 = tl.split(tl.reshape(acc.to(dt).to(tl.float32), [BLOCK_M, PAIRS, 2]))
    p = pid * PAIRS + tl.arange(0, PAIRS)
    head, e = p // HALF, p % HALF
    mmask = m_idx < M
    pmask = mmask[:, None] & (head < num_q_heads + 2 * num_kv_heads)[None, :]
    pos = tl.load(pos_ptr + m_idx, mask=mmask, other=0).to(tl.int64)
    cs = cs_ptr + pos[:, None] * (2 * HALF) + e[None, :]
    cos = tl.load(cs, mask=pmask, other=1.0)
    sin = tl.load(cs + HALF, mask=pmask, other=0.0)
    rotate = (head < num_q_heads + num_kv_heads)[None, :]  # q and k heads; v heads pass through
    y1 = tl.where(rotate, x1 * cos - x2 * sin, x1).to(dt)
    y2 = tl.where(rotate, x2 * cos + x1 * sin, x2).to(dt)
    o1 = out_ptr + m_idx[:, None] * stride_om + (head * (2 * HALF) + e)[None, :]
    tl.store(o1, y1, mask=pmask)
    tl.store(o1 + HALF, y2, mask=pmask)
    # k heads [Hq, Hq + Hkv) into k_cache, v heads after them into v_cache, at the token's slot
    slot = tl.load(slot_ptr + m_idx, mask=mmask, other=-1).to(tl.int64)
    is_v = head >= num_q_heads + num_kv_heads
    kv_head = tl.where(is_v, head - num_q_heads - num_kv_heads, head - num_q_heads)
    cmask = pmask & (slot >= 0)[:, None] & (head >= num_q_heads)[None, :]
    c1 = (tl.where(slot >= 0, slot, 0)[:, None] * num_kv_heads + kv_head[None, :]) * (2 * HALF) + e[None, :]
    kmask = cmask & ~is_v[None, :]
    vmask = cmask & is_v[None, :]
    ety = kc_ptr.dtype.element_ty
    tl.store(kc_ptr + c1, y1.to(ety), mask=kmask)
    tl.store(kc_ptr + c1 + HALF, y2.to(ety), mask=kmask)
    tl.store(vc_ptr + c1, y1.to(ety), mask=vmask)
    tl.store(vc_ptr + c1 + HALF, y2.to(ety), mask=vmask)
    if LATE_TRIGGER:
        pdl_trigger(PDL)


def gemv_rms_norm_rope(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor,
                       positions: torch.Tensor, cos_sin: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_q_heads: int,
                       out: torch.Tensor | None = None, config: GemvConfig | None = None,
                       late_trigger: bool = True) -> torch.Tensor:
    """``rms_norm(x) @ w.T`` for a fused [q | k | v] weight, with RoPE applied to q and k and the rotated
    k and v written into the paged caches (see the module docstring).

    Args:
        x: [M, K] residual stream, 1 <= M <= 16, w's dtype, rows contiguous (one token per row).
        norm_weight: [K] RMSNorm weight; eps: its epsilon (> 0).
        w: [(Hq + 2 Hkv) * D, K] bf16/fp16 weight, rows q heads, then k heads, then v heads.
        positions: int32/int64 [M] token positions; cos_sin: fp32 [max_pos, D] (``kernels.rope``).
        k_cache, v_cache: [num_blocks, block_size, Hkv, D] of x's dtype (not quantised).
        slot_mapping: int32/int64 [M] cache slots (block * block_size + offset; negative: no write).
        num_q_heads: Hq (Hkv and D come from the cache).
        out: optional [M, N] output of x's dtype.
        config: launch shape (None: the default of the shape), made even-rowed without a K split by
            :func:`rope_config`.
        late_trigger: with PDL, let the next kernel launch only after this one's stores (else as soon as
            every program has waited, as the other decode kernels do).

    Returns:
        [M, N]: q and k rotated, v as projected, in x's dtype.

    Raises:
        ValueError: a bad argument, naming it.
    """
    n, k = check_weight(w)
    check_rows(x, w, k, "gemv_rms_norm_rope")
    m = x.shape[0]
    check_norm(norm_weight, eps, k)
    if getattr(k_cache, "dtype", None) != x.dtype or getattr(v_cache, "dtype", None) != x.dtype:
        raise ValueError(f"gemv_rms_norm_rope writes caches of x's dtype {x.dtype} only, got "
                         f"{getattr(k_cache, 'dtype', None)} / {getattr(v_cache, 'dtype', None)}")
    _, _, hkv, d, _ = check_kv_cache(k_cache, v_cache, None, None)
    if d % 2 or n != (num_q_heads + 2 * hkv) * d:
        raise ValueError(f"w has {n} rows; num_q_heads={num_q_heads} and the cache's {hkv} kv heads of dim {d} "
                         f"need (Hq + 2 Hkv) * D = {(num_q_heads + 2 * hkv) * d} (D even)")
    check_positions(positions, cos_sin, m, d)
    check_tensor("slot_mapping", slot_mapping, 1, (torch.int64, torch.int32))
    check_shape("slot_mapping", slot_mapping, (m,))
    check_same_device(x=x, norm_weight=norm_weight, w=w, positions=positions, cos_sin=cos_sin, k_cache=k_cache,
                      v_cache=v_cache, slot_mapping=slot_mapping)
    cfg = rope_config(resolve_config(config, n, k, x.device))
    out = prepare_out(x, n, out)
    _qkv_rope_kernel[(triton.cdiv(n, cfg.block_n),)](
        x, w, out, norm_weight, positions, cos_sin, slot_mapping, k_cache, v_cache, m, n, k, float(eps),
        x.stride(0), w.stride(0), out.stride(0), num_q_heads, hkv,
        BLOCK_M=triton.next_power_of_2(m), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, HALF=d // 2, PDL=cfg.pdl,
        LATE_TRIGGER=late_trigger, num_warps=cfg.num_warps, **pdl_launch_options(cfg.pdl, x.device))
    return out


def gemv_rms_norm_rope_ref(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor,
                           positions: torch.Tensor, cos_sin: torch.Tensor, k_cache: torch.Tensor,
                           v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """Plain PyTorch reference of :func:`gemv_rms_norm_rope`: ``gemv_rms_norm_ref``, ``apply_rope_ref`` on the
    q and k views, ``write_kv_ref``; returns the [M, N] projection (caches written in place)."""
    d, hkv = k_cache.shape[3], k_cache.shape[2]
    y = gemv_rms_norm_ref(x, norm_weight, eps, w)
    q = y[:, :num_q_heads * d].view(-1, num_q_heads, d)
    kk = y[:, num_q_heads * d:(num_q_heads + hkv) * d].view(-1, hkv, d)
    v = y[:, (num_q_heads + hkv) * d:].view(-1, hkv, d)
    qr, kr = q.clone(), kk.clone()
    apply_rope_ref(qr, kr, positions, cos_sin)
    q.copy_(qr)
    kk.copy_(kr)
    write_kv_ref(kk, v, k_cache, v_cache, slot_mapping)
    return y
