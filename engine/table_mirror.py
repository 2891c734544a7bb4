"""Block-table rows of a host mirror, written by value: a row is rewritten only where it changed.

Steady decode steps find a sequence's table already in its row and write nothing; a table that grew
by a block writes one entry. What a row holds is remembered per row and compared by value, so any
change (a swap-in, a recompute, another sequence in the row) is written in full.
"""

from __future__ import annotations

import numpy as np


class TableMirror:
    """Writes block tables into the rows of a host int32 array, skipping entries already there.

    Args:
        array: the host table rows (int32 [R, W]), written in place.

    Invariant: for every row whose ``known`` entry is a list, the row starts with that list; rows
    written by anything else must be ``forget``-ed.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.known: list[list[int] | None] = [None] * len(array)

    def write(self, row: int, table: list[int]) -> None:
        """Make row ``row`` start with ``table``, writing only the entries it is not known to hold."""
        done = self.known[row]
        if done == table:
            return
        have = len(done) if done is not None and len(done) <= len(table) and table[: len(done)] == done else 0
        self.array[row, have : len(table)] = table[have:]
        self.known[row] = list(table)

    def forget(self, start: int, stop: int) -> None:
        """Rows ``start..stop-1`` were written by other code: their contents are unknown."""
        self.known[start:stop] = [None] * (stop - start)
