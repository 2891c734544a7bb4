"""Shared helpers of the attention / KV-cache kernels: argument validation and launch choices.

Nothing here launches a kernel; the helpers only check tensors and pick compile-time constants.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Storage dtypes accepted for the paged KV cache (see kernels/attention_decode.py).
KV_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.int8)
#: KV storage dtypes that carry one fp32 scale per token and head.
QUANT_KV_DTYPES: tuple[torch.dtype, ...] = (torch.float8_e4m3fn, torch.int8)
#: Activation dtypes accepted for queries / keys / values entering the kernels.
ACT_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
#: Largest magnitude a quantized code may take, per storage dtype (scale = amax / QMAX).
QMAX: dict[torch.dtype, float] = {torch.float8_e4m3fn: 448.0, torch.int8: 127.0}


def is_pow2(v: int) -> bool:
    """Whether ``v`` is a positive power of two."""
    return v > 0 and v & (v - 1) == 0


def check_int_fields(config: object, names: tuple[str, ...]) -> None:
    """Raise ValueError ``'<Class>.<name> must be an int, got ...'`` for the first of ``names`` that is not
    an int (bools are refused too) on a launch-config dataclass."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{type(config).__name__}.{name} must be an int, got {value!r}")


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return int(triton.next_power_of_2(max(int(n), 1)))


def check_tensor(
    name: str, t: object, ndim: int, dtypes: tuple[torch.dtype, ...] | None = None
) -> torch.Tensor:
    """Raise ValueError naming ``name`` unless ``t`` is a tensor of rank ``ndim`` with an allowed dtype.

    Args:
        name: argument name used in the error message.
        t: the value to check.
        ndim: required number of dimensions.
        dtypes: allowed dtypes, or None for any.

    Returns:
        ``t`` (typed as a tensor).
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}, expected one of {[str(d) for d in dtypes]}")
    if t.dim() > 0 and t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")
    return t


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise ValueError naming ``name`` unless ``t.shape == shape``."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_kv_cache(
    k_cache: object, v_cache: object, k_scale: object, v_scale: object
) -> tuple[int, int, int, int, bool]:
    """Validate a paged KV cache pair and its optional scales.

    Args:
        k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim], dtype in KV_DTYPES, contiguous.
        k_scale, v_scale: fp32 [num_blocks, block_size, num_kv_heads] for fp8/int8 caches, else None.

    Returns:
        (num_blocks, block_size, num_kv_heads, head_dim, quantized).
    """
    kc = check_tensor("k_cache", k_cache, 4, KV_DTYPES)
    vc = check_tensor("v_cache", v_cache, 4, KV_DTYPES)
    check_shape("v_cache", vc, tuple(kc.shape))
    if vc.dtype != kc.dtype:
        raise ValueError(f"v_cache dtype {vc.dtype} differs from k_cache dtype {kc.dtype}")
    if not (kc.is_contiguous() and vc.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    nb, bs, hkv, d = kc.shape
    quantized = kc.dtype in QUANT_KV_DTYPES
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if quantized:
            if s is None:
                raise ValueError(f"{name} is required for a {kc.dtype} KV cache")
            st = check_tensor(name, s, 3, (torch.float32,))
            check_shape(name, st, (nb, bs, hkv))
            if not st.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
        elif s is not None:
            raise ValueError(f"{name} must be None for a {kc.dtype} KV cache")
    return int(nb), int(bs), int(hkv), int(d), quantized


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ValueError naming the first tensor whose device differs from the first one given."""
    first: torch.device | None = None
    for name, t in tensors.items():
        if t is None:
            continue
        if first is None:
            first = t.device
        elif t.device != first:
            raise ValueError(f"{name} is on {t.device}, expected {first}")


def dot_dtype(act_dtype: torch.dtype, device: torch.device) -> tl.dtype:
    """Operand dtype of tl.dot: the activation dtype on CUDA, fp32 under the CPU interpreter.

    The Triton interpreter multiplies raw bit patterns in a bfloat16 tl.dot and mis-converts
    int8 -> bfloat16 (triton-lang/triton#11584), so CPU runs compute the products in fp32.
    """
    if device.type != "cuda" or act_dtype == torch.float32:
        return tl.float32
    return tl.bfloat16 if act_dtype == torch.bfloat16 else tl.float16


def sm_count(device: torch.device) -> int:
    """Number of streaming multiprocessors of a CUDA device (a nominal 8 elsewhere)."""
    if device.type != "cuda":
        return 8
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


@triton.jit
def round_to_fp8e4m3(x):
    """Round fp32 ``x`` to the nearest float8 e4m3fn value (ties to even), returned as fp32.

    Only the CPU interpreter path uses this: its own fp32 -> fp8 cast mis-rounds values that round up
    into the next binade and flushes subnormals. Inputs are expected within [-448, 448].
    """
    ax = tl.abs(x)
    bits = ax.to(tl.int32, bitcast=True)
    expo = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # e4m3fn: smallest normal exponent is -6
    step = ((expo - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(expo-3): 3 mantissa bits
    y = ax / step
    r = tl.floor(y + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    r = tl.where(((r - y) == 0.5) & odd, r - 1.0, r)
    return tl.where(x < 0, -r * step, r * step)


@triton.jit
def attend_block(
    acc, m_i, l_i, q, qk_scale, start_n, n_end, pos,
    kc_ptr, vc_ptr, ks_ptr, vs_ptr, bt_row_ptr, block_size, num_kv_heads, kvh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    QUANT: tl.constexpr, MASKED: tl.constexpr, DOT_DT: tl.constexpr,
):
    """One online-softmax step over keys [start_n, start_n + BLOCK_N) of one sequence and one kv head.

    Scores live in the log2 domain: ``qk_scale`` = softmax_scale * log2(e), so exp2 replaces exp and m_i
    is a log2-domain running max. acc is the unnormalised output, l_i the running denominator. With
    MASKED, key n is used by row r only if n < n_end and n <= pos[r]; without it every key is valid
    (the caller guarantees the whole block lies inside the sequence). Returns the updated (acc, m_i, l_i).
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if MASKED:
        key_ok = offs_n < n_end
        blk = tl.load(bt_row_ptr + offs_n // block_size, mask=key_ok, other=0)
    else:
        blk = tl.load(bt_row_ptr + offs_n // block_size)
    # Row of (token, kv head) in the flattened [num_blocks * block_size * num_kv_heads] index space.
    tok_head = (blk.to(tl.int64) * block_size + offs_n % block_size) * num_kv_heads + kvh
    if BLOCK_D == HEAD_DIM:
        k = tl.load(kc_ptr + tok_head[None, :] * HEAD_DIM + offs_d[:, None])
        v = tl.load(vc_ptr + tok_head[:, None] * HEAD_DIM + offs_d[None, :])
    else:
        d_ok = offs_d < HEAD_DIM
        k = tl.load(kc_ptr + tok_head[None, :] * HEAD_DIM + offs_d[:, None], mask=d_ok[:, None], other=0.0)
        v = tl.load(vc_ptr + tok_head[:, None] * HEAD_DIM + offs_d[None, :], mask=d_ok[None, :], other=0.0)
    qk = tl.dot(q, k.to(DOT_DT))  # [M, N] fp32 accumulation
    # Per-key dequant scale commutes with the dot product: apply it to the score column.
    qk = qk * (tl.load(ks_ptr + tok_head) * qk_scale)[None, :] if QUANT else qk * qk_scale
    if MASKED:
        qk = tl.where(key_ok[None, :] & (offs_n[None, :] <= pos[:, None]), qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet must not give NaN
    p = tl.exp2(qk - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if QUANT:
        p = p * tl.load(vs_ptr + tok_head)[None, :]  # V's per-key scale folds into P's column
    acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DT), v.to(DOT_DT))
    return acc, m_new, l_i


def gather_kv_ref(
    k_cache: torch.Tensor, v_cache: torch.Tensor, block_table_row: torch.Tensor, ctx_len: int,
    k_scale: torch.Tensor | None, v_scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference gather of one sequence's first ``ctx_len`` keys/values, dequantised to fp32.

    Returns:
        (k, v), each fp32 [ctx_len, num_kv_heads, head_dim].
    """
    bs = k_cache.shape[1]
    n = torch.arange(ctx_len, device=k_cache.device)
    blk = block_table_row.long()[n // bs]
    off = n % bs
    k = k_cache[blk, off].float()
    v = v_cache[blk, off].float()
    if k_scale is not None and v_scale is not None:
        k = k * k_scale[blk, off][..., None]
        v = v * v_scale[blk, off][..., None]
    return k, v


def causal_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float
) -> torch.Tensor:
    """Explicit fp32 softmax attention of the last ``q.shape[0]`` positions of a sequence (causal, GQA).

    Args:
        q: [n, Hq, D]; query i sits at position ctx - n + i.
        k, v: fp32 [ctx, Hkv, D].

    Returns:
        fp32 [n, Hq, D].
    """
    n, hq, _ = q.shape
    ctx, hkv, _ = k.shape
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * softmax_scale
    pos = torch.arange(ctx - n, ctx, device=q.device)
    allowed = torch.arange(ctx, device=q.device)[None, :] <= pos[:, None]
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)
