"""Static inputs of captured mixed steps (prefill chunks with or without decodes).

A mixed step runs as one varlen batch: its ``D`` decodes first (rows ``0..D-1``,
attended by the paged decode kernel), then its prefill chunks (attended by the
paged prefill kernel, whose ``cu_seqlens`` start at ``D``), then padding up to the
graph's token count. Both kernels' launch grids depend only on the padded token
count and the slot counts, so one graph per padded token count serves every mix
of prefills and decodes.

The buffer holds, field after field (each on a ``SEGMENT_ALIGN``-byte boundary),
``input_ids``, ``positions``, ``slot_mapping`` (int64 [T]), ``logits_indices``
(int64 [R]), ``cu_seqlens`` (int32 [S + 1]), ``seq_lens`` (int32 [S]),
``decode_seq_lens`` and ``decode_group_lens`` (int32 [S]; the decode rows' groups,
``DecodeRows.group_lens``), ``block_tables`` (int32 [S, W], the chunks') and
``decode_block_tables`` (int32 [S, W]). A step copies the fields up to its chunks'
table rows, then its decodes' table rows. Invariants after ``stage``:

* tokens past the step's own (up to the graph's padded count) are token 0 at
  position 0 writing the scratch block's first slot; no kernel owns them, so
  attention gives them zero rows (``StepMetadata.padded``), and what they write
  to the scratch block stays finite;
* decode slots past the step's ``D`` have context 0 (the decode kernel writes
  zero rows there, which the prefill kernel then overwrites where its chunks lie);
* chunk slots past the step's own are empty (``cu_seqlens`` repeats the end), so
  their table rows, stale or not, are never read;
* sampling rows past the step's own point at row 0; their results are dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.static_buffers import StaticBuffers
from engine.step_metadata import DecodeRows, StepMetadata, padded_width
from engine.table_mirror import TableMirror
from policies.sequence import Sequence
from policies.types import StepPlan


class MixedInputs:
    """The static buffers that captured mixed-step graphs read.

    Args:
        max_tokens: most tokens of a step (the largest captured token count).
        max_seqs: sequence slots (prefill chunks + decodes of one step).
        max_rows: sampling rows (at most ``max_seqs``).
        table_width: block-table width (rounded up to a multiple of 16).
        block_size: tokens per KV block.
        scratch_block: the KV block padding tokens write.
        device: where the buffers live (CUDA for graphs; the CPU works too, for tests).
        max_group: most decode rows of one sequence attended together (1: no groups; see
            ``DecodeInputs``).
    """

    def __init__(self, max_tokens: int, max_seqs: int, max_rows: int, table_width: int, block_size: int,
                 scratch_block: int, device: torch.device, max_group: int = 1) -> None:
        if min(max_tokens, max_seqs, max_rows) < 1 or max_rows > max_seqs:
            raise ValueError(f"MixedInputs needs max_tokens, max_seqs >= 1 and 1 <= max_rows <= max_seqs, got "
                             f"{max_tokens}, {max_seqs}, {max_rows}")
        self.max_tokens, self.max_seqs, self.max_rows = max_tokens, max_seqs, max_rows
        self.width = padded_width(table_width)
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.device = device
        self.max_group = max_group
        fields = (("input_ids", np.int64, (max_tokens,)), ("positions", np.int64, (max_tokens,)),
                  ("slot_mapping", np.int64, (max_tokens,)), ("logits_indices", np.int64, (max_rows,)),
                  ("cu_seqlens", np.int32, (max_seqs + 1,)), ("seq_lens", np.int32, (max_seqs,)),
                  ("decode_seq_lens", np.int32, (max_seqs,)), ("decode_group_lens", np.int32, (max_seqs,)),
                  ("block_tables", np.int32, (max_seqs, self.width)),
                  ("decode_block_tables", np.int32, (max_seqs, self.width)))
        self.buffers = StaticBuffers(fields, device)
        self.host, self.dev = self.buffers.host, self.buffers.dev
        self._table_offset = self.buffers.offsets["block_tables"]
        self._decode_table_offset = self.buffers.offsets["decode_block_tables"]
        self.host["block_tables"][:] = scratch_block
        self.host["decode_block_tables"][:] = scratch_block
        # both tables rewrite only the entries that changed (a chunked prompt's or a decode's table in the
        # same slot step after step)
        self.tables, self.decode_tables = TableMirror(self.host["block_tables"]), TableMirror(
            self.host["decode_block_tables"])
        self.host["slot_mapping"][:] = scratch_block * block_size
        self.host["decode_group_lens"][:] = 1
        self.buffers.upload_all()

    def fits(self, plan: StepPlan) -> bool:
        """Whether ``plan`` has room here: tokens, sequences and sampling rows."""
        seqs = len(plan.prefills) + plan.num_decode_rows  # every decode row takes a decode slot
        rows = sum(c.samples for c in plan.prefills) + plan.num_decode_rows
        return plan.num_tokens <= self.max_tokens and seqs <= self.max_seqs and rows <= self.max_rows

    def stage(self, plan: StepPlan, tokens: int, decode_rows: DecodeRows | None = None,
              ) -> tuple[list[Sequence], bool]:
        """Write ``plan`` (decode rows, then prefill chunks) padded to ``tokens`` and copy it.

        Args:
            plan: the step (it must ``fit``).
            tokens: the captured token count the step runs at (>= its own tokens).
            decode_rows: the plan's decode rows (default: one per decode; a speculative step passes
                its verification rows, ``plan.num_decode_rows`` of them).

        Returns:
            The sampling sequences in row order (row ``i`` of the graph's logits is sequence ``i``):
            the decode rows' sequences, then the chunks that sample; and whether a group of decode rows
            holds more than one row (``DecodeInputs.stage``: only then is the grouped kernel needed).

        Raises:
            ValueError: the plan does not fit, or ``tokens`` is below its tokens or above ``max_tokens``.
        """
        own = plan.num_tokens
        if not self.fits(plan) or not own <= tokens <= self.max_tokens:
            raise ValueError(f"cannot stage a step of {own} tokens, {len(plan.prefills) + len(plan.decodes)} "
                             f"sequences in {tokens} tokens (at most {self.max_tokens} tokens, "
                             f"{self.max_seqs} sequences, {self.max_rows} sampling rows)")
        step = decode_rows if decode_rows is not None else DecodeRows.of(plan.decodes)
        self.buffers.wait_for_copy()  # the previous copy must have left the pinned buffer
        h, bs = self.host, self.block_size
        ids, pos, rows = h["input_ids"], h["positions"], h["logits_indices"]
        cu, lens = h["cu_seqlens"], h["seq_lens"]
        sampling: list[Sequence] = list(step.seqs)
        nd = len(sampling)
        d_blocks = [0] * nd  # filled in Python, written to numpy at once
        groups = step.group_lens(self.max_group)
        for i, (p, bt, lead) in enumerate(zip(step.positions, step.tables, groups, strict=True)):
            d_blocks[i] = bt[p // bs]
            if lead:  # the decode kernel reads only a group leader's table row
                self.decode_tables.write(i, bt)
        if self.max_group > 1:
            h["decode_group_lens"][:nd] = groups
            h["decode_group_lens"][nd:] = 1
        ids[:nd], pos[:nd] = step.ids, step.positions
        slot_blocks = [np.asarray(d_blocks, dtype=np.int64)]
        h["decode_seq_lens"][:nd] = pos[:nd] + 1
        h["decode_seq_lens"][nd:] = 0
        rows[:nd] = np.arange(nd)
        offset = cu[0] = nd
        for i, chunk in enumerate(plan.prefills):
            seq, start, n = chunk.seq, chunk.start, chunk.num_tokens
            ids[offset : offset + n] = seq.token_ids[start : start + n]
            p = np.arange(start, start + n)
            pos[offset : offset + n] = p
            bt = seq.block_table
            self.tables.write(i, bt)
            slot_blocks.append(np.asarray(bt, dtype=np.int64)[p // bs])
            lens[i] = start + n
            offset += n
            cu[i + 1] = offset
            if chunk.samples:
                rows[len(sampling)] = offset - 1
                sampling.append(seq)
        npf = len(plan.prefills)
        cu[npf + 1 :] = offset
        h["slot_mapping"][:offset] = np.concatenate(slot_blocks) * bs + pos[:offset] % bs
        ids[offset:tokens], pos[offset:tokens] = 0, 0  # rows past ``tokens`` are not read by this graph
        h["slot_mapping"][offset:tokens] = self.scratch_block * bs
        rows[len(sampling) :] = 0
        d_lo = self._decode_table_offset
        self.buffers.upload((0, self._table_offset + npf * self.width * 4), (d_lo, d_lo + nd * self.width * 4))
        return sampling, 0 in groups

    def meta(self, tokens: int, rows: int, grouped: bool = True) -> StepMetadata:
        """Views of a step of ``tokens`` tokens with ``rows`` sampling rows: ``min(tokens, max_seqs)``
        leading decode slots, then every chunk slot (``padded``: see ``StepMetadata``); with ``grouped``
        (and ``max_group > 1``) the decode attention reads the row groups."""
        d = self.dev
        nd = min(tokens, self.max_seqs)
        # Chunks fill slots 0.. in order and each holds a token, so a step of ``tokens`` tokens uses at most
        # ``nd`` chunk slots: the prefill kernel's grid (tiles + slots) need not cover the others.
        return StepMetadata(
            input_ids=d["input_ids"][:tokens], positions=d["positions"][:tokens],
            slot_mapping=d["slot_mapping"][:tokens], logits_indices=d["logits_indices"][:rows],
            prefill_cu_seqlens=d["cu_seqlens"][: nd + 1], prefill_seq_lens=d["seq_lens"][:nd],
            prefill_block_tables=d["block_tables"][:nd], decode_seq_lens=d["decode_seq_lens"][:nd],
            decode_block_tables=d["decode_block_tables"][:nd], num_prefill_tokens=tokens, num_decodes=nd,
            prefill_q_lens=[], prefill_ctx_lens=[], sampling_seqs=[], padded=True,
            decode_group_lens=d["decode_group_lens"][:nd] if grouped and self.max_group > 1 else None)
