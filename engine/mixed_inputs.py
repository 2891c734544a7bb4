"""Static inputs of captured mixed steps (prefill chunks with or without decodes).

A mixed step runs as one varlen batch in which every sequence is a chunk: a
prefill chunk of ``n`` tokens starting at ``start``, or a decode as a chunk of
one token at ``num_computed``. All of them go through the paged prefill
attention kernel, whose launch grid depends only on the padded token count and
the number of sequence slots, so one graph per padded token count serves every
mix of prefills and decodes.

The buffer holds, field after field (each on a ``SEGMENT_ALIGN``-byte boundary),
``input_ids``, ``positions``, ``slot_mapping`` (int64 [T]), ``logits_indices``
(int64 [R]), ``cu_seqlens`` (int32 [S + 1]), ``seq_lens`` (int32 [S]) and
``block_tables`` (int32 [S, W]). Block tables come last, so a step of ``s``
sequences copies one prefix of the buffer. Invariants after ``stage``:

* tokens past the step's own (up to the graph's padded count) are token 0 at
  position 0 writing the scratch block's first slot; no sequence owns them, so
  attention gives them zero rows (``StepMetadata.padded``), and what they write
  to the scratch block stays finite;
* sequence slots past the step's own are empty (``cu_seqlens`` repeats the
  total), so their table rows, stale or not, are never read;
* sampling rows past the step's own point at row 0; their results are dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.step_metadata import SEGMENT_ALIGN, StepMetadata, last_token, padded_width
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
    """

    def __init__(self, max_tokens: int, max_seqs: int, max_rows: int, table_width: int, block_size: int,
                 scratch_block: int, device: torch.device) -> None:
        if min(max_tokens, max_seqs, max_rows) < 1 or max_rows > max_seqs:
            raise ValueError(f"MixedInputs needs max_tokens, max_seqs >= 1 and 1 <= max_rows <= max_seqs, got "
                             f"{max_tokens}, {max_seqs}, {max_rows}")
        self.max_tokens, self.max_seqs, self.max_rows = max_tokens, max_seqs, max_rows
        self.width = padded_width(table_width)
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.device = device
        fields = (("input_ids", np.int64, (max_tokens,)), ("positions", np.int64, (max_tokens,)),
                  ("slot_mapping", np.int64, (max_tokens,)), ("logits_indices", np.int64, (max_rows,)),
                  ("cu_seqlens", np.int32, (max_seqs + 1,)), ("seq_lens", np.int32, (max_seqs,)),
                  ("block_tables", np.int32, (max_seqs, self.width)))
        layout, total = [], 0
        for name, dtype, shape in fields:
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            layout.append((name, total, np.dtype(dtype), shape, nbytes))
            total += -(-nbytes // SEGMENT_ALIGN) * SEGMENT_ALIGN
        self._table_offset = layout[-1][1]
        pin = device.type == "cuda"
        self._host = torch.zeros(total, dtype=torch.uint8, pin_memory=pin)
        self._dev = torch.zeros(total, dtype=torch.uint8, device=device)
        host_np = self._host.numpy()
        self.host: dict[str, np.ndarray] = {}
        self.dev: dict[str, torch.Tensor] = {}
        for name, off, dtype, shape, nbytes in layout:
            self.host[name] = host_np[off : off + nbytes].view(dtype).reshape(shape)
            tdtype = torch.int64 if dtype == np.int64 else torch.int32
            self.dev[name] = self._dev[off : off + nbytes].view(tdtype).view(shape)
        self.host["block_tables"][:] = scratch_block
        self.host["slot_mapping"][:] = scratch_block * block_size
        self._dev.copy_(self._host)
        # Recorded after each copy out of the pinned mirror (CUDA only); waited on before rewriting it.
        self._copied = torch.cuda.Event() if pin else None

    def fits(self, plan: StepPlan) -> bool:
        """Whether ``plan`` has room here: tokens, sequences and sampling rows."""
        seqs = len(plan.prefills) + len(plan.decodes)
        rows = sum(c.samples for c in plan.prefills) + len(plan.decodes)
        return plan.num_prefill_tokens + len(plan.decodes) <= self.max_tokens and seqs <= self.max_seqs \
            and rows <= self.max_rows

    def stage(self, plan: StepPlan, tokens: int) -> list[Sequence]:
        """Write ``plan`` (prefill chunks, then decodes as one-token chunks) padded to ``tokens`` and copy it.

        Args:
            plan: the step (it must ``fit``).
            tokens: the captured token count the step runs at (>= its own tokens).

        Returns:
            The sampling sequences in row order (row ``i`` of the graph's logits is sequence ``i``).

        Raises:
            ValueError: the plan does not fit, or ``tokens`` is below its tokens or above ``max_tokens``.
        """
        own = plan.num_prefill_tokens + len(plan.decodes)
        if not self.fits(plan) or not own <= tokens <= self.max_tokens:
            raise ValueError(f"cannot stage a step of {own} tokens, {len(plan.prefills) + len(plan.decodes)} "
                             f"sequences in {tokens} tokens (at most {self.max_tokens} tokens, "
                             f"{self.max_seqs} sequences, {self.max_rows} sampling rows)")
        if self._copied is not None:  # the previous copy must have left the pinned buffer
            self._copied.synchronize()  # (returns at once when never recorded)
        h, bs = self.host, self.block_size
        ids, pos, table = h["input_ids"], h["positions"], h["block_tables"]
        cu, lens, rows = h["cu_seqlens"], h["seq_lens"], h["logits_indices"]
        sampling: list[Sequence] = []
        slot_rows: list[np.ndarray] = []
        offset = 0
        for i, chunk in enumerate(plan.prefills):
            seq, start, n = chunk.seq, chunk.start, chunk.num_tokens
            ids[offset : offset + n] = seq.token_ids[start : start + n]
            pos[offset : offset + n] = np.arange(start, start + n)
            bt = seq.block_table
            table[i, : len(bt)] = bt
            slot_rows.append(np.full(n, i, dtype=np.int64))
            lens[i] = start + n
            offset += n
            cu[i + 1] = offset
            if chunk.samples:
                rows[len(sampling)] = offset - 1
                sampling.append(seq)
        first = len(plan.prefills)
        for j, seq in enumerate(plan.decodes):
            i = first + j
            ids[offset], pos[offset] = last_token(seq), seq.num_computed
            bt = seq.block_table
            table[i, : len(bt)] = bt
            lens[i] = seq.num_computed + 1
            rows[len(sampling)] = offset
            sampling.append(seq)
            offset += 1
            cu[i + 1] = offset
        nseq = first + len(plan.decodes)
        # Slots of the step's tokens from their sequences' table rows (one vectorised gather).
        seq_of = np.concatenate([*slot_rows, np.arange(first, nseq, dtype=np.int64)])
        p = pos[:offset]
        h["slot_mapping"][:offset] = table[seq_of, p // bs].astype(np.int64) * bs + p % bs
        cu[nseq + 1 :] = offset
        ids[offset:tokens], pos[offset:tokens] = 0, 0  # rows past ``tokens`` are not read by this graph
        h["slot_mapping"][offset:tokens] = self.scratch_block * bs
        rows[len(sampling) :] = 0
        nbytes = self._table_offset + nseq * self.width * 4
        if self._copied is not None:
            self._dev[:nbytes].copy_(self._host[:nbytes], non_blocking=True)
            self._copied.record()
        else:
            self._dev[:nbytes].copy_(self._host[:nbytes])
        return sampling

    def meta(self, tokens: int, rows: int) -> StepMetadata:
        """Views of a step of ``tokens`` tokens with ``rows`` sampling rows, every sequence slot a chunk."""
        d = self.dev
        i32 = {"dtype": torch.int32, "device": self.device}
        return StepMetadata(
            input_ids=d["input_ids"][:tokens], positions=d["positions"][:tokens],
            slot_mapping=d["slot_mapping"][:tokens], logits_indices=d["logits_indices"][:rows],
            prefill_cu_seqlens=d["cu_seqlens"], prefill_seq_lens=d["seq_lens"],
            prefill_block_tables=d["block_tables"], decode_seq_lens=torch.zeros(0, **i32),
            decode_block_tables=torch.zeros((0, self.width), **i32), num_prefill_tokens=tokens, num_decodes=0,
            prefill_q_lens=[], prefill_ctx_lens=[], sampling_seqs=[], padded=True)
