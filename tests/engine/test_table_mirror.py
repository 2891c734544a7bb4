"""TableMirror: block-table rows written by value, only where they changed."""

from __future__ import annotations

import numpy as np

from engine.table_mirror import TableMirror


def test_writes_only_what_changed_and_catches_every_change() -> None:
    arr = np.full((3, 8), -1, dtype=np.int32)
    m = TableMirror(arr)
    m.write(0, [5, 6, 7])
    assert arr[0, :3].tolist() == [5, 6, 7] and arr[0, 3] == -1
    arr[0, :3] = 99  # entries the mirror believes written: an unchanged table rewrites nothing
    m.write(0, [5, 6, 7])
    assert arr[0, :3].tolist() == [99, 99, 99]
    m.write(0, [5, 6, 7, 8])  # grown by one block: only the new entry is written
    assert arr[0, :4].tolist() == [99, 99, 99, 8]
    m.write(0, [5, 1, 7, 8])  # same length, another block inside (swap-in, recompute): written in full
    assert arr[0, :4].tolist() == [5, 1, 7, 8]
    m.write(0, [5])  # shorter (another sequence in the row)
    assert arr[0, 0] == 5
    m.write(0, [5, 1, 7, 8])  # the known prefix is [5] now: entries after it are rewritten
    assert arr[0, :4].tolist() == [5, 1, 7, 8]


def test_forgotten_rows_are_written_in_full() -> None:
    arr = np.zeros((2, 4), dtype=np.int32)
    m = TableMirror(arr)
    m.write(1, [3, 4])
    arr[1, :] = 0  # other code wrote the row
    m.forget(1, 2)
    m.write(1, [3, 4])
    assert arr[1, :2].tolist() == [3, 4] and m.known == [None, [3, 4]]
