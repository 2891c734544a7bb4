"""Sizing the paged KV pool: the profiling step, and how many blocks fit in free GPU memory."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.config import EngineConfig
from engine.kv_cache import KVCache, block_bytes
from engine.model_config import LlamaSpec, read_llama_spec
from engine.sampler import Sampler
from engine.step_metadata import MetadataBuilder, StepMetadata
from policies.sequence import Sequence
from policies.types import PrefillChunk, Request, SamplingParams, StepPlan

ForwardFn = Callable[[StepMetadata, KVCache], torch.Tensor]  # (metadata, KV cache) -> logits


def profile_plan(tokens: int, max_model_len: int, block_size: int) -> tuple[StepPlan, int]:
    """A one-step plan prefilling ``tokens`` tokens as prompts of at most ``max_model_len``.

    Returns:
        The plan (block tables numbered from 0) and the number of KV blocks it uses.
    """
    chunks, used = [], 0
    for i, start in enumerate(range(0, tokens, max_model_len)):
        n = min(max_model_len, tokens - start)
        seq = Sequence(Request(f"profile{i}", 0.0, n, 1, prompt_token_ids=(0,) * n))
        seq.block_table = list(range(used, used + -(-n // block_size)))
        used += len(seq.block_table)
        chunks.append(PrefillChunk(seq, 0, n))
    return StepPlan(0, 0.0, prefills=chunks, num_prefill_tokens=tokens), used


def weight_bytes(spec: LlamaSpec, dtype: torch.dtype) -> int:
    """Device bytes of a Llama model's weights in ``dtype`` (projections, norms, embedding, LM head)."""
    h = spec.hidden_size
    layer = h * (2 * spec.q_size + 2 * spec.kv_size) + 3 * h * spec.intermediate_size + 2 * h
    heads = 1 if spec.tie_word_embeddings else 2
    return (spec.num_layers * layer + heads * spec.vocab_size * h + h) * torch.empty((), dtype=dtype).element_size()


def draft_reserve(cfg: EngineConfig, kv_dtype: torch.dtype, dtype: torch.dtype) -> tuple[int, int]:
    """What a draft model (``cfg.draft_model``) adds to the pool sizing: its KV bytes per block (its cache
    has as many blocks as the target's) and the bytes of its weights; ``(0, 0)`` without one."""
    if cfg.draft_model is None:
        return 0, 0
    d = read_llama_spec(cfg.draft_model)
    return (block_bytes(d.num_layers, cfg.block_size, d.num_kv_heads, d.head_dim, kv_dtype),
            weight_bytes(d, dtype))


def blocks_in_free_memory(cfg: EngineConfig, spec: LlamaSpec, max_model_len: int, kv_dtype: torch.dtype,
                          device: torch.device, forward: ForwardFn, extra_block_bytes: int = 0,
                          reserve_bytes: int = 0) -> int:
    """KV blocks that fit in ``cfg.gpu_memory_utilization`` of the GPU after a max-size step (CUDA only).

    The step prefills ``cfg.max_num_batched_tokens`` tokens into a scratch cache and samples
    ``max_num_seqs`` rows with top-p; its peak memory, the memory outside torch and one scratch block
    are kept out of the budget.

    Args:
        cfg: the engine configuration.
        spec: the model's shapes.
        max_model_len: the engine's longest sequence (the profiling step's prompts are at most this long).
        kv_dtype: the KV cache's storage dtype.
        device: the CUDA device.
        forward: the model's forward pass over a given cache.
        extra_block_bytes: device bytes per block held beside this cache's (a draft model's mirrored cache).
        reserve_bytes: device bytes to keep out of the budget (a draft model's weights, not loaded yet).

    Raises:
        ValueError: no block fits.
    """
    tokens = cfg.max_num_batched_tokens
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    free, total = torch.cuda.mem_get_info(device)
    outside_torch = total - free - torch.cuda.memory_reserved(device)
    plan, nblocks = profile_plan(tokens, max_model_len, cfg.block_size)
    scratch = KVCache(spec.num_layers, nblocks, cfg.block_size, spec.num_kv_heads, spec.head_dim, kv_dtype, device)
    meta = MetadataBuilder(cfg.block_size, scratch.scratch_block, device).build(plan)
    rows = min(cfg.max_num_seqs, tokens)
    meta.logits_indices = torch.arange(rows, device=device)
    logits = forward(meta, scratch)
    Sampler(device).sample(logits, [SamplingParams(temperature=1.0, top_p=0.9)] * rows, [0] * rows)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del scratch, logits, meta
    torch.cuda.empty_cache()
    budget = total * cfg.gpu_memory_utilization - peak - outside_torch - reserve_bytes
    per_block = block_bytes(spec.num_layers, cfg.block_size, spec.num_kv_heads, spec.head_dim, kv_dtype)
    per_block += extra_block_bytes
    n = int(budget // per_block) - 1  # one block is the scratch block
    if n < 1:
        raise ValueError(
            f"no memory left for the KV cache: {total / 2**30:.1f} GiB GPU x gpu_memory_utilization "
            f"{cfg.gpu_memory_utilization} < peak {peak / 2**30:.2f} GiB (weights + activations of a "
            f"{tokens}-token step) + {outside_torch / 2**30:.2f} GiB outside torch")
    return n
