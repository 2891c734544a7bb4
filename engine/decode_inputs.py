"""Static inputs of captured decode steps: one device buffer, its host mirror, one copy per step.

The buffer holds, field after field (each on a ``SEGMENT_ALIGN``-byte boundary),
``input_ids``, ``positions``, ``slot_mapping`` (int64 [R]), ``seq_lens`` (int32
[R]), with row groups ``group_lens`` (int32 [R]; speculative verification) and
``block_tables`` (int32 [R, W]) for up to ``R`` rows. Block tables come
last, so a step of ``b`` rows copies one prefix of the buffer: every field in
full plus ``b`` table rows. The host mirror is pinned on CUDA and written in
place; nothing is allocated per step.

Rows past the step's real decodes are padding: token 0 at position 0, one key
(the scratch block's first slot, where they also write). Table entries past a
sequence's own blocks are left as they were: they are valid block ids and no
kernel reads them (a row of context ``c`` reads only its first ``ceil(c / bs)``
entries).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np
import torch

from engine.static_buffers import StaticBuffers
from engine.step_metadata import DecodeRows, StepMetadata, padded_width
from engine.table_mirror import TableMirror
from policies.sequence import Sequence

_FIELDS = (("input_ids", np.int64, 1), ("positions", np.int64, 1), ("slot_mapping", np.int64, 1),
           ("seq_lens", np.int32, 1), ("group_lens", np.int32, 1), ("block_tables", np.int32, 0))  # 0: table width


class DecodeInputs:
    """The static decode-step buffers that captured graphs read.

    Args:
        max_rows: most rows (the largest captured batch).
        table_width: block-table width (rounded up to a multiple of 16).
        block_size: tokens per KV block.
        scratch_block: the KV block padding rows use.
        device: where the buffers live (CUDA for graphs; the CPU works too, for tests).
        max_group: most rows of one sequence attended together (``DecodeRows.group_lens``; 1: no groups,
            and ``meta`` carries none).
    """

    def __init__(self, max_rows: int, table_width: int, block_size: int, scratch_block: int,
                 device: torch.device, max_group: int = 1) -> None:
        if max_rows < 1:
            raise ValueError(f"DecodeInputs.max_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows
        self.width = padded_width(table_width)
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.device = device
        self.max_group = max_group
        self.buffers = StaticBuffers(tuple((name, dtype, (max_rows,) if cols else (max_rows, self.width))
                                           for name, dtype, cols in _FIELDS), device)
        self.host, self.dev = self.buffers.host, self.buffers.dev
        self._table_offset = self.buffers.offsets["block_tables"]
        self.tables = TableMirror(self.host["block_tables"])  # rewrites only the entries that changed
        self._pad(0, max_rows)
        self.host["block_tables"][:] = scratch_block
        self.buffers.upload_all()

    def _pad(self, start: int, stop: int) -> None:
        h = self.host
        h["input_ids"][start:stop] = 0
        h["positions"][start:stop] = 0
        h["slot_mapping"][start:stop] = self.scratch_block * self.block_size
        h["seq_lens"][start:stop] = 1
        h["group_lens"][start:stop] = 1
        h["block_tables"][start:stop, 0] = self.scratch_block
        self.tables.forget(start, stop)

    def stage(self, decodes: Seq[Sequence] | DecodeRows, rows: int) -> bool:
        """Write a decode step into rows ``0..rows-1`` (padding after them) and copy it.

        Args:
            decodes: the step's decoding sequences in row order (one row each), or its rows
                (speculative verification, draft-model steps).
            rows: the captured batch size the step runs at (>= the step's rows).

        Returns:
            Whether the step has a group of more than one row (verification): only then does it need
            the grouped kernel (``meta(rows, grouped=True)``); groups of one run faster ungrouped.

        Raises:
            ValueError: more rows than ``rows``, or ``rows`` above ``max_rows``.
        """
        step = decodes if isinstance(decodes, DecodeRows) else DecodeRows.of(list(decodes))
        n = len(step)
        if not n <= rows <= self.max_rows:
            raise ValueError(f"cannot stage {n} decodes in {rows} rows (at most {self.max_rows})")
        self.buffers.wait_for_copy()  # the previous copy must have left the pinned buffer
        bs, h = self.block_size, self.host
        # With row groups the decode kernel reads only a group leader's table row: the other rows of a
        # group keep stale (valid) entries, and their slots come from the host-side table below.
        groups = step.group_lens(self.max_group)
        slots = [0] * n
        for i, (p, table, lead) in enumerate(zip(step.positions, step.tables, groups, strict=True)):
            slots[i] = table[p // bs] * bs + p % bs
            if lead:
                self.tables.write(i, table)
        h["input_ids"][:n] = step.ids
        h["positions"][:n] = step.positions
        h["slot_mapping"][:n] = slots
        h["seq_lens"][:n] = h["positions"][:n] + 1
        if self.max_group > 1:
            h["group_lens"][:n] = groups
        if rows > n:
            self._pad(n, rows)
        self.buffers.upload((0, self._table_offset + rows * self.width * 4))
        return 0 in groups  # a row inside a group (never without groups: then every row leads)

    def advance(self, ids: torch.Tensor, rows: int) -> None:
        """Turn the first ``rows`` rows, on the device, into the next decode step of the same sequences.

        Live rows take ``ids`` as their input token and move one position on (context + 1, the slot
        of the new position in the row's table); padding rows stay as they are. The host mirror is
        not updated: the next ``stage`` rewrites every row it uses. Capturable (Triton on CUDA,
        plain PyTorch elsewhere; ``kernels.decode_advance``).

        Args:
            ids: the step's greedy ids, int64 [rows], on the buffers' device.
            rows: rows of the step (its graph's batch size).
        """
        from kernels import decode_advance as adv  # kernels/ needs triton: imported on use

        fn = adv.advance_decode_inputs if self.device.type == "cuda" else adv.advance_decode_inputs_ref
        d = self.dev
        fn(ids, d["input_ids"][:rows], d["positions"][:rows], d["slot_mapping"][:rows], d["seq_lens"][:rows],
           d["block_tables"][:rows], self.block_size)

    def meta(self, rows: int, grouped: bool = True) -> StepMetadata:
        """Views of the first ``rows`` rows as a decode-only step (every row samples); with ``grouped`` (and
        ``max_group > 1``) the attention reads the row groups, else every row alone."""
        d = self.dev
        i32 = {"dtype": torch.int32, "device": self.device}
        return StepMetadata(
            input_ids=d["input_ids"][:rows], positions=d["positions"][:rows],
            slot_mapping=d["slot_mapping"][:rows], logits_indices=None,
            prefill_cu_seqlens=torch.zeros(1, **i32), prefill_seq_lens=torch.zeros(0, **i32),
            prefill_block_tables=torch.zeros((0, 1), **i32),
            decode_seq_lens=d["seq_lens"][:rows], decode_block_tables=d["block_tables"][:rows],
            num_prefill_tokens=0, num_decodes=rows, prefill_q_lens=[], prefill_ctx_lens=[], sampling_seqs=[],
            decode_group_lens=d["group_lens"][:rows] if grouped and self.max_group > 1 else None)
