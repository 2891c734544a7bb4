"""Paged attention backends: rotate q/k and write the step's new K/V into the cache, then attend.

A backend (``AttentionBackend``) works on the packed step (prefill tokens first,
then decodes) in two calls per layer: ``rope_and_write`` rotates q and k in place
(RoPE) and stores k and v at the step's slots; ``attend`` returns ``[T, Hq, D]``
from q and the cache. ``TorchAttention`` is plain PyTorch (the CPU path and the
reference): prefill chunks attend one sequence at a time to their gathered
context, decodes attend in one padded batch. ``TritonAttention`` calls the
paged kernels of ``kernels/`` (imported when the backend is built), RoPE and the
cache write fused into one launch.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from engine.kv_cache import QMAX, KVCache, raw
from engine.layers import apply_rope_
from engine.step_metadata import StepMetadata

AMAX_FLOOR = 1e-12  # an all-zero head still gets a positive scale (its codes are 0)
_TILE_ROWS = 16  # the decode kernel's smallest tile of (query row, head) pairs (tl.dot needs 16 rows)


def verify_group_rows(configured: int | None, num_heads: int, num_kv_heads: int) -> int:
    """Most verification rows of one decode the triton decode kernel attends together
    (``EngineConfig.verify_group_rows``): ``configured``, or by default as many rows as fill its 16-row
    tile with their ``num_heads / num_kv_heads`` query heads each (at least 1)."""
    if configured is not None:
        return configured
    return max(1, _TILE_ROWS // (num_heads // num_kv_heads))


def quantize_kv(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (token, head) symmetric quantization: ``scale = max(amax, floor) / QMAX``.

    Returns:
        ``(codes [.., D] in dtype, scales [..] fp32)``; dequantize as ``codes * scale``.
    """
    qmax = QMAX[dtype]
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp_min(AMAX_FLOOR) / qmax
    q = (xf / scale[..., None]).clamp(-qmax, qmax)
    if dtype == torch.int8:
        q = q.round()
    return q.to(dtype), scale


class AttentionBackend(Protocol):
    """What the model calls per layer: ``rope_and_write`` first, then ``attend``."""

    def rope_and_write(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       positions: torch.Tensor, cos_sin: torch.Tensor, meta: StepMetadata) -> None:
        """Rotate ``q`` [T, Hq, D] and ``k`` [T, Hkv, D] in place by ``positions`` [T] (``cos_sin`` table of
        ``rope_cos_sin``), then store the rotated k and ``v`` at ``meta.slot_mapping`` of layer ``layer``."""
        ...

    def attend(self, layer: int, q: torch.Tensor, meta: StepMetadata) -> torch.Tensor:
        """Attention ``[T, Hq, D]`` of the rotated ``q`` over layer ``layer``'s cache (step's K/V in it)."""
        ...

    def plain_cache(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Layer ``layer``'s K and V caches when another kernel may write the step's rotated k and v into
        them directly instead of ``rope_and_write`` (model-dtype codes, no scales), else None."""
        ...


class TorchAttention:
    """Attention in plain PyTorch over the paged cache.

    Args:
        kv: the KV cache.
        num_heads: query heads.
        num_kv_heads: KV heads.
        head_dim: per-head width.
    """

    def __init__(self, kv: KVCache, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        self.kv = kv
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5

    def _write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        k_cache, v_cache, k_scale, v_scale = self.kv.layer(layer)
        h, d = self.num_kv_heads, self.head_dim
        for x, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
            if scale is None:
                cache.view(-1, h, d)[slots] = x.to(cache.dtype)
            else:
                codes, sc = quantize_kv(x, cache.dtype)
                raw(cache).view(-1, h, d)[slots] = raw(codes)
                scale.view(-1, h)[slots] = sc

    def _gather(self, cache: torch.Tensor, scale: torch.Tensor | None, blocks: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        """Blocks' entries as ``[..., num_blocks * block_size, Hkv, D]`` in ``dtype``."""
        vals = raw(cache)[blocks].view(cache.dtype)
        vals = vals.flatten(-4, -3)
        if scale is None:
            return vals.to(dtype)
        return (vals.float() * scale[blocks].flatten(-3, -2)[..., None]).to(dtype)

    def plain_cache(self, layer: int) -> None:
        """See ``AttentionBackend``: None (this backend writes its cache itself)."""
        return None

    def rope_and_write(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       positions: torch.Tensor, cos_sin: torch.Tensor, meta: StepMetadata) -> None:
        """See ``AttentionBackend``: the PyTorch RoPE of ``engine.layers``, then a scatter into the cache."""
        apply_rope_(q, k, positions, cos_sin)
        self._write(layer, k, v, meta.slot_mapping)

    def attend(self, layer: int, q: torch.Tensor, meta: StepMetadata) -> torch.Tensor:
        """See ``AttentionBackend``."""
        k_cache, v_cache, k_scale, v_scale = self.kv.layer(layer)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        bs = self.kv.block_size
        start = 0
        for s, (n, ctx) in enumerate(zip(meta.prefill_q_lens, meta.prefill_ctx_lens, strict=True)):
            blocks = meta.prefill_block_tables[s, : -(-ctx // bs)].long()
            keys = self._gather(k_cache, k_scale, blocks, q.dtype)[:ctx]
            vals = self._gather(v_cache, v_scale, blocks, q.dtype)[:ctx]
            qs = q[start : start + n].transpose(0, 1)[None]
            if n == ctx:
                mask, causal = None, True
            else:  # query i sits at position ctx - n + i and sees keys 0..that position
                qpos = torch.arange(ctx - n, ctx, device=q.device)
                mask, causal = torch.arange(ctx, device=q.device)[None, :] <= qpos[:, None], False
            o = F.scaled_dot_product_attention(qs, keys.transpose(0, 1)[None], vals.transpose(0, 1)[None],
                                               attn_mask=mask, is_causal=causal, scale=self.scale,
                                               enable_gqa=True)
            out[start : start + n] = o[0].transpose(0, 1)
            start += n
        if meta.num_decodes:
            p = meta.num_prefill_tokens
            tables = meta.decode_block_tables.long()
            keys = self._gather(k_cache, k_scale, tables, q.dtype).transpose(1, 2)
            vals = self._gather(v_cache, v_scale, tables, q.dtype).transpose(1, 2)
            length = keys.shape[2]
            mask = torch.arange(length, device=q.device)[None, :] < meta.decode_seq_lens[:, None]
            o = F.scaled_dot_product_attention(q[p:, :, None, :], keys, vals,
                                               attn_mask=mask[:, None, None, :], scale=self.scale,
                                               enable_gqa=True)
            out[p:] = o[:, :, 0, :]
        return out


class TritonAttention:
    """Attention through the paged Triton kernels (kernels/attention_*.py, kernels/rope_kv_write.py).

    Args:
        kv: the KV cache.
        num_heads: query heads.
        num_kv_heads: KV heads.
        head_dim: per-head width.
        decode_splits: split-KV factor for decodes; None lets the kernel choose from
            the block-table width (host side, so fixed for a captured graph).
        pdl: launch the fused RoPE + KV write and the decode attention kernels with
            programmatic dependent launch (``kernels.pdl``; Hopper GPUs only).
        max_group: most decode rows one group of ``StepMetadata.decode_group_lens`` holds (the decode
            kernel's tile; used where the metadata carries groups).
        merge_rows: with > 0, decodes of up to that many rows merge their splits inside the decode kernel
            (``merge_counters``: one zeroed int32 counter per row and kv head, allocated here once, so
            CUDA graphs replay over the same buffer); 0, or more rows: the reduction kernel.

    Raises:
        ImportError: a kernel module is missing.
    """

    def __init__(self, kv: KVCache, num_heads: int, num_kv_heads: int, head_dim: int,
                 decode_splits: int | None = None, pdl: bool = False, max_group: int = 1,
                 merge_rows: int = 0) -> None:
        try:
            from kernels.attention_decode import paged_decode_attention
            from kernels.attention_prefill import paged_prefill_attention
            from kernels.rope_kv_write import rope_and_write_kv
        except ImportError as exc:
            raise ImportError(f"attention_backend 'triton' needs the paged attention kernels: {exc}") from exc
        self._rope_and_write_kv = rope_and_write_kv
        self._prefill, self._decode = paged_prefill_attention, paged_decode_attention
        self.kv = kv
        self.scale = head_dim**-0.5
        self.decode_splits = decode_splits
        self.pdl = pdl
        self.max_group = max_group
        self.num_kv_heads = num_kv_heads
        self.merge_counters = (torch.zeros(merge_rows * num_kv_heads, dtype=torch.int32, device=kv.data.device)
                               if merge_rows > 0 else None)

    def _counters(self, rows: int) -> torch.Tensor | None:
        """The merge counters for a decode of ``rows`` rows, or None (reduction kernel)."""
        c = self.merge_counters
        return c if c is not None and rows * self.num_kv_heads <= c.numel() else None

    def plain_cache(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """See ``AttentionBackend``: the layer's caches unless they are quantised."""
        k_cache, v_cache, k_scale, _ = self.kv.layer(layer)
        return (k_cache, v_cache) if k_scale is None else None

    def rope_and_write(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       positions: torch.Tensor, cos_sin: torch.Tensor, meta: StepMetadata) -> None:
        """See ``AttentionBackend``: one kernel launch (``kernels/rope_kv_write.py``)."""
        k_cache, v_cache, k_scale, v_scale = self.kv.layer(layer)
        self._rope_and_write_kv(q, k, v, positions, cos_sin, k_cache, v_cache, meta.slot_mapping,
                                k_scale, v_scale, pdl=self.pdl)

    def attend(self, layer: int, q: torch.Tensor, meta: StepMetadata) -> torch.Tensor:
        """See ``AttentionBackend``."""
        k_cache, v_cache, k_scale, v_scale = self.kv.layer(layer)
        # Padding rows of a captured mixed step belong to no sequence: zeros, not stale memory.
        out = (torch.zeros if meta.padded else torch.empty)(q.shape, dtype=q.dtype, device=q.device)
        if meta.padded:  # a captured mixed step: decode slots lead, then the chunks (see StepMetadata)
            nd = meta.num_decodes
            self._decode(q[:nd], k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens, self.scale,
                         k_scale, v_scale, num_splits=self.decode_splits, out=out[:nd], pdl=self.pdl,
                         group_lens=meta.decode_group_lens, max_group=self.max_group,
                         merge_counters=self._counters(nd))
            self._prefill(q, k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_seqlens,
                          meta.prefill_seq_lens, self.scale, k_scale, v_scale, out=out)
            return out
        p = meta.num_prefill_tokens
        if p:
            self._prefill(q[:p], k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_seqlens,
                          meta.prefill_seq_lens, self.scale, k_scale, v_scale, out=out[:p])
        if meta.num_decodes:
            self._decode(q[p:], k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens, self.scale,
                         k_scale, v_scale, num_splits=self.decode_splits, out=out[p:], pdl=self.pdl,
                         group_lens=meta.decode_group_lens, max_group=self.max_group,
                         merge_counters=self._counters(q.shape[0] - p))
        return out
