"""Turn a decode step's static inputs into the next step's, on the device (decode lookahead).

A captured decode step reads ``input_ids``, ``positions``, ``slot_mapping`` (int64 [R]),
``seq_lens`` (int32 [R]) and ``block_tables`` (int32 [R, W]). After its greedy choice ``ids``
(int64 [R]) this kernel rewrites them in place so that replaying the same graph runs the step one
token further: for every live row (position > 0; padding rows sit at position 0 and stay there)

    input_ids = ids,  positions += 1,  seq_lens += 1,
    slot_mapping = block_tables[row, p // block_size] * block_size + p % block_size  (p: the new position).

The table entry is read as the row holds it; whether that entry is really the sequence's next block
is the host's business (``engine.lookahead`` only replays when it is). An index past the table's
width is clamped, so the kernel never reads outside it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._util import check_same_device, check_tensor, next_pow2


@triton.jit
def _advance_kernel(ids_ptr, ids_in_ptr, pos_ptr, slot_ptr, lens_ptr, table_ptr, rows, width, block_size,
                    BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    inside = r < rows
    p = tl.load(pos_ptr + r, mask=inside, other=0)
    live = inside & (p > 0)
    p = p + 1
    col = tl.minimum(p // block_size, width - 1)
    block = tl.load(table_ptr + r * width + col, mask=live, other=0).to(tl.int64)
    tl.store(ids_in_ptr + r, tl.load(ids_ptr + r, mask=live, other=0), mask=live)
    tl.store(pos_ptr + r, p, mask=live)
    tl.store(lens_ptr + r, (p + 1).to(tl.int32), mask=live)
    tl.store(slot_ptr + r, block * block_size + p % block_size, mask=live)


def _check(ids: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
           seq_lens: torch.Tensor, block_tables: torch.Tensor, block_size: int) -> None:
    named = {"ids": ids, "input_ids": input_ids, "positions": positions, "slot_mapping": slot_mapping}
    for name, t in named.items():
        check_tensor(name, t, 1, (torch.int64,))
    check_tensor("seq_lens", seq_lens, 1, (torch.int32,))
    check_tensor("block_tables", block_tables, 2, (torch.int32,))
    rows = ids.shape[0]
    if rows < 1:
        raise ValueError("advance_decode_inputs: ids is empty")
    for name, t in (*named.items(), ("seq_lens", seq_lens), ("block_tables", block_tables)):
        if t.shape[0] != rows:
            raise ValueError(f"advance_decode_inputs: {name} has {t.shape[0]} rows, ids has {rows}")
    if not block_tables.is_contiguous():
        raise ValueError("advance_decode_inputs: block_tables must be contiguous")
    if block_size < 1:
        raise ValueError(f"advance_decode_inputs: block_size must be >= 1, got {block_size}")
    check_same_device(**named, seq_lens=seq_lens, block_tables=block_tables)


def advance_decode_inputs(ids: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor,
                          slot_mapping: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                          block_size: int) -> None:
    """Advance the live rows of a decode step's inputs by one token, in place (one launch, capturable).

    Args:
        ids: the step's sampled ids, int64 [R].
        input_ids, positions, slot_mapping: int64 [R], rewritten.
        seq_lens: int32 [R], rewritten.
        block_tables: int32 [R, W], contiguous, read.
        block_size: tokens per KV block.

    Raises:
        ValueError: a wrong dtype, shape or device.
    """
    _check(ids, input_ids, positions, slot_mapping, seq_lens, block_tables, block_size)
    rows = ids.shape[0]
    _advance_kernel[(1,)](ids, input_ids, positions, slot_mapping, seq_lens, block_tables, rows,
                          block_tables.shape[1], block_size, BLOCK=next_pow2(rows), num_warps=1)


def advance_decode_inputs_ref(ids: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor,
                              slot_mapping: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                              block_size: int) -> None:
    """Plain PyTorch ``advance_decode_inputs`` (the reference, and the engine's path off CUDA)."""
    _check(ids, input_ids, positions, slot_mapping, seq_lens, block_tables, block_size)
    live = positions > 0
    p = positions + 1
    col = (p // block_size).clamp(max=block_tables.shape[1] - 1)
    block = block_tables.gather(1, col[:, None]).squeeze(1).to(torch.int64)
    input_ids.copy_(torch.where(live, ids, input_ids))
    slot_mapping.copy_(torch.where(live, block * block_size + p % block_size, slot_mapping))
    seq_lens.copy_(torch.where(live, (p + 1).to(torch.int32), seq_lens))
    positions.copy_(torch.where(live, p, positions))
