"""Decode attention launch studies (CUDA only; nothing runs at import): a long context among short ones,
the split count, and the partition kernel's launch shape (``kernels.decode_launch.DecodeConfig``) with and
without programmatic dependent launch. Rows as in ``benchmarks.bench_attention``."""

from __future__ import annotations

import torch

from benchmarks.attention_setup import MODELS, Paged, attn_graph_time, kv_bytes, num_copies
from benchmarks.common import row
from kernels.attention_decode import paged_decode_attention
from kernels.decode_launch import DecodeConfig


def mixed_rows(model: str, copy_bw: float) -> list[dict]:
    """Batch 64 in tables 8192 tokens wide (the engine's graphs): 1 x 8192 + 63 x 512 contexts against the
    same total spread evenly; per-sequence splits should make both cost about the same."""
    hq, _, d = MODELS[model]
    batch, long, short = 64, 8192, 512
    paged = Paged(model, batch, long, torch.bfloat16, 1)
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    mixed = torch.tensor([long] + [short] * (batch - 1), dtype=torch.int32, device="cuda")
    even = torch.full_like(mixed, int(mixed.sum()) // batch)
    times = [attn_graph_time([lambda lens=lens: paged_decode_attention(q, paged.k_cache, paged.v_cache,
                                                                       paged.tables[0], lens, d**-0.5)])
             for lens in (mixed, even)]
    nbytes = kv_bytes(model, int(mixed.sum()), torch.bfloat16)
    return [row("decode_mixed", f"{model} B=64 1x{long}+63x{short}, table {long}", times[0] * 1e6, "us",
                reference=f"64 x {int(even[0])} (same total)", ref_value=times[1] * 1e6,
                ceiling="bytes / copy_bw", ceiling_value=nbytes / copy_bw * 1e6)]


def split_rows(model: str, ctx: int, table: int, copy_bw: float) -> list[dict]:
    """Batch 1, ``ctx`` keys in a ``table``-token block table (an engine decode graph), per split count:
    the default's time against each explicit ``num_splits`` (the sweep shows where the default stands)."""
    hq, _, d = MODELS[model]
    paged = Paged(model, 1, table, torch.bfloat16, num_copies(kv_bytes(model, table, torch.bfloat16)))
    q = torch.randn(1, hq, d, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((1,), ctx, dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)

    def timed(splits: int | None) -> float:
        return attn_graph_time([lambda bt=bt: paged_decode_attention(q, paged.k_cache, paged.v_cache, bt, lens,
                                                                     d**-0.5, num_splits=splits, out=out)
                                for bt in paged.tables])

    default = timed(None)
    floor = kv_bytes(model, ctx, torch.bfloat16) / copy_bw * 1e6
    return [row("decode_splits", f"{model} B=1 ctx={ctx} table={table} splits={n}", timed(n) * 1e6, "us",
                reference="default splits", ref_value=default * 1e6, ceiling="bytes / copy_bw",
                ceiling_value=floor) for n in (1, 2, 4, 8, 16, 32, 64, 128)]


def config_rows(model: str, batch: int, ctx: int, copy_bw: float) -> list[dict]:
    """One decode shape under each partition-kernel launch shape (``DecodeConfig``: keys per step, warps,
    pipeline stages; default splits), against the default shape; then the default launched with PDL
    against without (a graph of back-to-back calls, each call's reduction launched right behind its
    partition kernel)."""
    hq, _, d = MODELS[model]
    paged = Paged(model, batch, ctx, torch.bfloat16, num_copies(kv_bytes(model, batch * ctx, torch.bfloat16)))
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)

    def timed(config: DecodeConfig | None, pdl: bool = False) -> float:
        return attn_graph_time([lambda bt=bt: paged_decode_attention(q, paged.k_cache, paged.v_cache, bt,
                                                                     paged.seq_lens, d**-0.5, out=out,
                                                                     config=config, pdl=pdl)
                                for bt in paged.tables])

    case = f"{model} B={batch} ctx={ctx}"
    default = timed(None)
    floor = kv_bytes(model, batch * ctx, torch.bfloat16) / copy_bw * 1e6
    rows = []
    for block_n in (64, 128, 256):
        for warps in (4, 8):
            for stages in (2, 3, 4):
                cfg = DecodeConfig(block_n, warps, stages)
                try:
                    us = timed(cfg) * 1e6
                except Exception as e:  # e.g. too much shared memory for this tile: recorded, not fatal
                    rows.append(row("decode_config", f"{case} {cfg.label}", float("nan"), "us",
                                    reference=f"error: {type(e).__name__}: {str(e)[:120]}"))
                    continue
                rows.append(row("decode_config", f"{case} {cfg.label}", us, "us", reference="default config",
                                ref_value=default * 1e6, ceiling="bytes / copy_bw", ceiling_value=floor))
    rows.append(row("decode_pdl", f"{case} default config, pdl", timed(None, pdl=True) * 1e6, "us",
                    reference="without pdl", ref_value=default * 1e6, ceiling="bytes / copy_bw", ceiling_value=floor))
    return rows
