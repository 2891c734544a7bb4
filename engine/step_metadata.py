"""Turn a ``StepPlan`` into the tensors of one packed varlen forward pass.

Token order: the prefill chunks' tokens (in plan order), then one token per
decode. Every integer array is built on the host with numpy, laid out in one
byte buffer and moved to the device with a single copy (from a pinned staging
buffer on CUDA); the device tensors are views into that one buffer.

Triton specialises a kernel on whether each pointer is 16-byte aligned and each
integer argument is a multiple of 16 (or 1). So that a step's shapes never pick
a new specialisation (a JIT compile of seconds in the middle of a run), every
view starts on a ``SEGMENT_ALIGN``-byte boundary and block tables are padded to
a width that is a multiple of ``TABLE_WIDTH_MULTIPLE``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policies.sequence import Sequence
from policies.types import StepPlan

SEGMENT_ALIGN = 64  # bytes; the device buffer itself comes from the caching allocator (512-byte aligned)
TABLE_WIDTH_MULTIPLE = 16


@dataclass
class StepMetadata:
    """Everything the model and attention need for one step.

    Device tensors: ``input_ids``, ``positions``, ``slot_mapping`` (int64 [T]);
    ``logits_indices`` (int64 [N], the token rows that sample; None: every row,
    as in a captured decode step); prefill
    ``prefill_cu_seqlens`` (int32 [Sp+1]), ``prefill_seq_lens`` (int32 [Sp],
    context after the step), ``prefill_block_tables`` (int32 [Sp, Wp]); decode
    ``decode_seq_lens`` (int32 [Sd]) and ``decode_block_tables`` (int32 [Sd, Wd]).
    Host lists describe the prefill chunks for the per-sequence torch path.
    ``padded`` marks a captured mixed step (``engine.mixed_inputs``): its first
    ``num_decodes`` rows are decode slots (context 0 where unused), the prefill
    chunks' rows follow (``prefill_cu_seqlens`` starts at the decodes' end), the rest
    is padding that attention must still give finite (zero) rows;
    ``num_prefill_tokens`` then counts every row of the batch.
    ``decode_group_lens`` (int32 [Sd], or None): the decode rows' groups
    (``DecodeRows.group_lens``), for attention that reads a group's context once.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    logits_indices: torch.Tensor | None
    prefill_cu_seqlens: torch.Tensor
    prefill_seq_lens: torch.Tensor
    prefill_block_tables: torch.Tensor
    decode_seq_lens: torch.Tensor
    decode_block_tables: torch.Tensor
    num_prefill_tokens: int
    num_decodes: int
    prefill_q_lens: list[int]
    prefill_ctx_lens: list[int]
    sampling_seqs: list[Sequence]
    padded: bool = False
    decode_group_lens: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decodes


def last_token(seq: Sequence) -> int:
    """The token a sequence feeds next: its last output, else its last prompt token."""
    if seq.output_ids:
        return seq.output_ids[-1]
    ids = seq.request.prompt_token_ids
    if ids is None:
        raise ValueError(f"request {seq.seq_id!r} has no prompt token ids; the engine needs them")
    return ids[-1]


@dataclass
class DecodeRows:
    """The single-query rows of a step: per row, the token it feeds, its position and the block table
    of its sequence. A plain decode is one row; a decode verifying ``k`` draft tokens is ``k + 1``
    consecutive rows (its last token, then each draft one position further) over the same table; a
    draft model's steps feed its own proposals the same way.

    Attributes:
        ids, positions, tables: per row.
        seqs: per row, the sequence it belongs to (a sequence's rows are consecutive).
    """

    ids: list[int]
    positions: list[int]
    tables: list[list[int]]
    seqs: list[Sequence]

    @classmethod
    def of(cls, decodes: list[Sequence], drafts: list[list[int]] | None = None) -> DecodeRows:
        """Rows of ``decodes`` (each one row at ``num_computed``), plus ``drafts[i]`` after decode ``i``."""
        if drafts is None:
            return cls([last_token(s) for s in decodes], [s.num_computed for s in decodes],
                       [s.block_table for s in decodes], list(decodes))
        ids: list[int] = []
        pos: list[int] = []
        tables: list[list[int]] = []
        seqs: list[Sequence] = []
        for seq, extra in zip(decodes, drafts, strict=True):
            n, p = 1 + len(extra), seq.num_computed
            ids.append(last_token(seq))
            ids.extend(extra)
            pos.extend(range(p, p + n))
            tables.extend([seq.block_table] * n)
            seqs.extend([seq] * n)
        return cls(ids, pos, tables, seqs)

    def group_lens(self, max_group: int) -> list[int]:
        """Row groups of the decode attention kernel: consecutive rows of one sequence (same table, positions
        one apart), cut into pieces of at most ``max_group`` rows; per row, the rows of the piece it starts,
        0 inside a piece (``group_lens`` of ``kernels.attention_decode``)."""
        if max_group == 1:  # every row its own group (plain decode steps, engines without groups)
            return [1] * len(self.seqs)
        out = [0] * len(self.seqs)
        lead, prev = 0, None
        for i, seq in enumerate(self.seqs):
            if seq is not prev or out[lead] == max_group:
                lead, prev = i, seq
            out[lead] += 1
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> DecodeRows:
        """The rows ``rows`` (a slice), in order."""
        return DecodeRows(self.ids[rows], self.positions[rows], self.tables[rows], self.seqs[rows])


def padded_width(width: int) -> int:
    """``width`` rounded up to a positive multiple of ``TABLE_WIDTH_MULTIPLE``."""
    return max(1, -(-width // TABLE_WIDTH_MULTIPLE)) * TABLE_WIDTH_MULTIPLE


def _table(rows: list[list[int]], width: int, fill: int) -> np.ndarray:
    out = np.full((len(rows), padded_width(width)), fill, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class MetadataBuilder:
    """Builds ``StepMetadata`` for a device, reusing a pinned staging buffer on CUDA.

    Args:
        block_size: tokens per KV block.
        scratch_block: a KV block no sequence owns: padding tokens write there and
            padded block-table entries point there.
        device: target device.
        max_group: most decode rows of one sequence attended together (``DecodeRows.group_lens``);
            only steps with a group of more than one row carry groups (1: none does).
    """

    def __init__(self, block_size: int, scratch_block: int, device: torch.device, max_group: int = 1) -> None:
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.device = device
        self.max_group = max_group
        self._staging: torch.Tensor | None = None
        # Recorded after each copy out of the pinned staging buffer; waited on before rewriting it.
        self._copied = torch.cuda.Event() if device.type == "cuda" else None

    def build(self, plan: StepPlan, pad_decodes_to: int = 0, decode_table_width: int = 0,
              rows: DecodeRows | None = None) -> StepMetadata:
        """Lay out ``plan``'s tokens; optionally pad a decode-only batch (CUDA graphs).

        Args:
            plan: the step.
            pad_decodes_to: pad the decode batch to this many rows (padding rows
                attend to one token of the scratch block and write there).
            decode_table_width: minimum width of the decode block table.
            rows: the decode rows (default: one per decode of ``plan``; speculative steps pass
                their verification rows). Every row samples.
        """
        bs = self.block_size
        ids: list[np.ndarray] = []
        pos: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        q_lens: list[int] = []
        ctx_lens: list[int] = []
        tables: list[list[int]] = []
        sample_rows: list[int] = []
        sampling_seqs: list[Sequence] = []
        offset = 0
        for chunk in plan.prefills:
            seq, start, n = chunk.seq, chunk.start, chunk.num_tokens
            toks = seq.token_ids[start : start + n]
            p = np.arange(start, start + n, dtype=np.int64)
            table = np.asarray(seq.block_table, dtype=np.int64)
            ids.append(np.asarray(toks, dtype=np.int64))
            pos.append(p)
            slots.append(table[p // bs] * bs + p % bs)
            q_lens.append(n)
            ctx_lens.append(start + n)
            tables.append(seq.block_table)
            offset += n
            if chunk.samples:
                sample_rows.append(offset - 1)
                sampling_seqs.append(seq)
        num_prefill = offset
        if rows is None:
            rows = DecodeRows.of(plan.decodes)
        nd = len(rows)
        padded = max(nd, pad_decodes_to)
        d_pos = np.zeros(padded, dtype=np.int64)
        d_ids = np.zeros(padded, dtype=np.int64)
        d_pos[:nd] = rows.positions
        d_ids[:nd] = rows.ids
        width = max([decode_table_width, *map(len, rows.tables)])
        d_bt = _table(rows.tables, width, self.scratch_block)
        if padded > nd:
            d_bt = np.concatenate([d_bt, np.full((padded - nd, d_bt.shape[1]), self.scratch_block, np.int32)])
        d_slots = d_bt[np.arange(padded), d_pos // bs].astype(np.int64) * bs + d_pos % bs
        d_lens = (d_pos + 1).astype(np.int32)
        sample_rows.extend(range(num_prefill, num_prefill + nd))
        sampling_seqs.extend(rows.seqs)
        cu = np.zeros(len(q_lens) + 1, dtype=np.int32)
        np.cumsum(q_lens, out=cu[1:])
        p_width = max(map(len, tables), default=1)
        arrays = {
            "input_ids": np.concatenate([*ids, d_ids]),
            "positions": np.concatenate([*pos, d_pos]),
            "slot_mapping": np.concatenate([*slots, d_slots]),
            "logits_indices": np.asarray(sample_rows, dtype=np.int64),
            "prefill_cu_seqlens": cu,
            "prefill_seq_lens": np.asarray(ctx_lens, dtype=np.int32),
            "prefill_block_tables": _table(tables, p_width, self.scratch_block),
            "decode_seq_lens": d_lens,
            "decode_block_tables": d_bt,
        }
        groups = rows.group_lens(self.max_group) if self.max_group > 1 else []
        if 0 in groups:  # rows in groups (verification); groups of one run faster ungrouped; padding: groups of one
            arrays["decode_group_lens"] = np.asarray(groups + [1] * (padded - nd), dtype=np.int32)
        tensors = self._to_device(arrays)
        return StepMetadata(**tensors, num_prefill_tokens=num_prefill, num_decodes=padded,
                            prefill_q_lens=q_lens, prefill_ctx_lens=ctx_lens, sampling_seqs=sampling_seqs)

    def _to_device(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One host buffer (``SEGMENT_ALIGN``-byte aligned segments), one copy, then typed views."""
        layout: list[tuple[str, int, np.ndarray]] = []
        total = 0
        for name, arr in arrays.items():
            layout.append((name, total, arr))
            total += -(-arr.nbytes // SEGMENT_ALIGN) * SEGMENT_ALIGN
        total = max(total, SEGMENT_ALIGN)
        if self.device.type == "cuda":
            if self._copied is not None:  # never overwrite pinned bytes a pending copy still reads
                self._copied.synchronize()  # (returns at once when never recorded)
            if self._staging is None or self._staging.numel() < total:
                self._staging = torch.empty(max(total, 2 * (self._staging.numel() if self._staging is not None
                                                             else 0)), dtype=torch.uint8, pin_memory=True)
            host = self._staging[:total]
        else:
            host = torch.empty(total, dtype=torch.uint8)
        host_np = host.numpy()
        for _, off, arr in layout:
            host_np[off : off + arr.nbytes] = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        dev = host
        if self._copied is not None:
            dev = host.to(self.device, non_blocking=True)
            self._copied.record()
        out: dict[str, torch.Tensor] = {}
        for name, off, arr in layout:
            dtype = torch.int64 if arr.dtype == np.int64 else torch.int32
            seg = dev[off : off + arr.nbytes]
            out[name] = seg.view(dtype).view(arr.shape) if arr.size else torch.empty(arr.shape, dtype=dtype,
                                                                                      device=self.device)
        return out
