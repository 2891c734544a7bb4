"""advance_decode_inputs against its PyTorch reference and against the expected next step."""

from __future__ import annotations

import pytest
import torch

from kernels.decode_advance import advance_decode_inputs, advance_decode_inputs_ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def step_inputs(rows: int, live: int, width: int, bs: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random decode inputs: ``live`` rows at positions >= 1, the rest padding (position 0)."""
    g = torch.Generator().manual_seed(seed)
    tables = torch.randint(0, 1000, (rows, width), generator=g, dtype=torch.int32)
    positions = torch.zeros(rows, dtype=torch.int64)
    positions[:live] = torch.randint(1, width * bs - 1, (live,), generator=g)
    positions[live - 1] = 2 * bs - 1  # the next token opens a new block
    if live > 1:
        positions[0] = width * bs - 1  # the next position lies past the table: clamped, never out of bounds
    slots = torch.randint(0, 10**6, (rows,), generator=g)
    lens = (positions + 1).to(torch.int32)
    input_ids = torch.randint(0, 50000, (rows,), generator=g)
    ids = torch.randint(0, 50000, (rows,), generator=g)
    return tuple(t.to(DEV) for t in (ids, input_ids, positions, slots, lens, tables))


@pytest.mark.parametrize("rows,live,width,bs", [(1, 1, 16, 16), (7, 5, 48, 16), (24, 24, 32, 1), (33, 2, 16, 7)])
def test_matches_reference_and_the_next_step(rows, live, width, bs):
    args = step_inputs(rows, live, width, bs, seed=rows * 31 + live)
    ref = [t.clone() for t in args]
    before = [t.clone() for t in args]
    advance_decode_inputs(*args, bs)
    advance_decode_inputs_ref(*ref, bs)
    for name, got, want in zip(("ids", "input_ids", "positions", "slot_mapping", "seq_lens", "tables"),
                               args, ref, strict=True):
        assert torch.equal(got, want), name
    ids, input_ids, positions, slots, lens, tables = (t.cpu() for t in args)
    old_pos = before[2].cpu()
    for r in range(rows):
        if r >= live:  # padding rows are left exactly as they were
            assert all(torch.equal(a.cpu()[r], b.cpu()[r]) for a, b in zip(args, before, strict=True))
            continue
        p = int(old_pos[r]) + 1
        col = min(p // bs, width - 1)
        assert int(input_ids[r]) == int(before[0].cpu()[r])
        assert int(positions[r]) == p and int(lens[r]) == p + 1
        assert int(slots[r]) == int(tables[r, col]) * bs + p % bs
    assert torch.equal(args[5], before[5]) and torch.equal(args[0], before[0])  # read-only inputs


def test_twice_is_two_tokens_further():
    args = step_inputs(5, 5, 16, 16, seed=3)
    start = args[2].clone()
    args[2][0] = 5  # keep row 0 inside its table
    start[0] = 5
    advance_decode_inputs(*args, 16)
    advance_decode_inputs(*args, 16)
    assert torch.equal(args[2], start + 2)
    assert torch.equal(args[4], (start + 3).to(torch.int32))


@pytest.mark.parametrize("bad,match", [
    ({"ids": torch.zeros(3, dtype=torch.int32)}, "ids has dtype"),
    ({"seq_lens": torch.zeros(4, dtype=torch.int32)}, "seq_lens has 4 rows"),
    ({"block_tables": torch.zeros(3, 4, 2, dtype=torch.int32)}, "block_tables must have 2 dimensions"),
    ({"block_size": 0}, "block_size must be >= 1"),
    ({"ids": torch.zeros(0, dtype=torch.int64)}, "ids is empty"),
])
def test_bad_arguments_are_named(bad, match):
    args = dict(zip(("ids", "input_ids", "positions", "slot_mapping", "seq_lens", "block_tables"),
                    (t.cpu() for t in step_inputs(3, 2, 8, 16, seed=0)), strict=True), block_size=16)
    args.update(bad)
    for fn in (advance_decode_inputs, advance_decode_inputs_ref):
        with pytest.raises(ValueError, match=match):
            fn(**args)
