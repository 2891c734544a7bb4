"""CUDA graphs of decode-only steps for a ladder of batch sizes.

One set of static input buffers, sized for the largest batch, backs every
graph; a graph of batch ``B`` reads their first ``B`` rows. A decode step of
``n <= max(sizes)`` sequences is padded to the next captured size: padding rows
attend to one token of the scratch block and write their K/V there.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch

from engine.step_metadata import StepMetadata

ForwardFn = Callable[[StepMetadata], torch.Tensor]


class DecodeGraphs:
    """Captured decode steps, replayed with fresh metadata copied into static buffers.

    Args:
        forward: ``meta -> logits [B, V]`` (model forward with a capture-safe attention).
        sizes: batch sizes to capture (strictly increasing).
        table_width: block-table width of every captured graph (max blocks per sequence).
        scratch_block: the KV block padding rows use.
        block_size: tokens per block.
        device: the CUDA device.
    """

    def __init__(self, forward: ForwardFn, sizes: tuple[int, ...], table_width: int, scratch_block: int,
                 block_size: int, device: torch.device) -> None:
        self.sizes = sizes
        self.table_width = table_width
        bmax = sizes[-1]
        i64 = {"dtype": torch.int64, "device": device}
        i32 = {"dtype": torch.int32, "device": device}
        self.input_ids = torch.zeros(bmax, **i64)
        self.positions = torch.zeros(bmax, **i64)
        self.slot_mapping = torch.full((bmax,), scratch_block * block_size, **i64)
        self.seq_lens = torch.ones(bmax, **i32)
        self.block_tables = torch.full((bmax, table_width), scratch_block, **i32)
        self.logits_indices = torch.arange(bmax, **i64)
        self._empty_i32 = torch.zeros(0, **i32)
        self._cu = torch.zeros(1, **i32)
        self._table0 = torch.zeros((0, 1), **i32)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = None
        for b in reversed(sizes):  # largest first, so smaller graphs fit in its memory pool
            meta = self._static_meta(b)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    forward(meta)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = forward(meta)
            pool = graph.pool()
            self.graphs[b] = (graph, out)
        torch.cuda.synchronize(device)

    def _static_meta(self, b: int) -> StepMetadata:
        return StepMetadata(
            input_ids=self.input_ids[:b], positions=self.positions[:b], slot_mapping=self.slot_mapping[:b],
            logits_indices=self.logits_indices[:b], prefill_cu_seqlens=self._cu,
            prefill_seq_lens=self._empty_i32, prefill_block_tables=self._table0,
            decode_seq_lens=self.seq_lens[:b], decode_block_tables=self.block_tables[:b],
            num_prefill_tokens=0, num_decodes=b, prefill_q_lens=[], prefill_ctx_lens=[], sampling_seqs=[])

    def size_for(self, num_decodes: int) -> int | None:
        """The captured batch size a decode step of ``num_decodes`` runs at, or None (eager)."""
        i = bisect.bisect_left(self.sizes, num_decodes)
        return self.sizes[i] if i < len(self.sizes) else None

    def replay(self, meta: StepMetadata) -> torch.Tensor:
        """Run the graph of ``meta.num_decodes`` rows (already padded to a captured size).

        Returns:
            fp32 logits [B, V] (a static buffer: read it before the next replay).
        """
        b = meta.num_decodes
        graph, out = self.graphs[b]
        self.input_ids[:b].copy_(meta.input_ids, non_blocking=True)
        self.positions[:b].copy_(meta.positions, non_blocking=True)
        self.slot_mapping[:b].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:b].copy_(meta.decode_seq_lens, non_blocking=True)
        self.block_tables[:b].copy_(meta.decode_block_tables, non_blocking=True)
        graph.replay()
        return out
