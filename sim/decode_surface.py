"""Whole-step time of decode-only steps by batch size and per-sequence context, from measured steps.

The 1-D tables of a profile price a decode step's attention by the total context its decodes read.
That is the right abscissa when the attention kernel is bandwidth bound (many sequences), but not at
small batches, where one sequence's context is split over a few programs and the time follows the
context *per sequence*: measured on an H200, 1B, a step of 4 decodes at 1.4k tokens each costs what
the total-context table gives 16 decodes of 350 tokens, 6-9% less than it takes.

``DecodeSurface`` reads the profile's ``decode_steps`` (``sim/profile.py``): for each calibrated batch
size ``b`` a piecewise-linear ``f_b(c)`` of the measured step time against the per-sequence context
``c``. A step of ``B`` decodes reading ``x`` tokens in all (``c = x / B``) costs::

    T(B, c) = base(P) + w * delta_hi(c) + (1 - w) * delta_lo(c)

* ``P`` is the size the step runs at: the smallest captured graph ``>= B`` (padded rows cost what real
  rows of the graph cost), or ``B`` without graphs; ``base(P)`` is ``f_b`` at its smallest context,
  interpolated linearly in ``b`` between the calibrated sizes around ``P``;
* ``delta_b(c) = f_b(c) - f_b(c_0(b))`` is what context adds at batch ``b`` (0 below its smallest
  context); ``lo <= B <= hi`` are the calibrated sizes around ``B`` and ``w = (B - lo) / (hi - lo)``:
  attention work follows the real sequences, not the padding.

Below the first calibrated size the first row stands in; a step past the last size (or whose padded
size is past it) is not priced here (``covers`` is False). Each call costs two table lookups.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from sim.profile import PiecewiseLinear


class DecodeSurface:
    """Step time of decode-only steps from per-batch tables of time against per-sequence context.

    Args:
        batches: calibrated batch sizes, strictly increasing.
        rows: per batch size, ``f_b`` (a ``PiecewiseLinear`` of seconds against per-sequence context).
        graph_sizes: decode graph sizes of the engine (a step runs padded to the next one), or empty.
    """

    __slots__ = ("max_batch", "_rows", "_plan")

    def __init__(self, batches: Sequence[int], rows: Sequence[PiecewiseLinear], graph_sizes: Sequence[int]) -> None:
        if len(batches) != len(rows) or not batches:
            raise ValueError(f"need one row per batch size, got {len(batches)} sizes and {len(rows)} rows")
        sizes = list(graph_sizes)
        self._rows = list(rows)
        bases = [row.ys[0] for row in rows]
        last = batches[-1]
        # Per B: (base, index of lo row, index of hi row, w), for every B whose padded size is calibrated-covered.
        self._plan: list[tuple[float, int, int, float]] = [(0.0, 0, 0, 0.0)]
        for b in range(1, last + 1):
            padded = sizes[bisect_left(sizes, b)] if sizes and b <= sizes[-1] else b
            if padded > last:
                break
            self._plan.append((_between(batches, bases, padded), *_bracket(batches, b)))
        self.max_batch = len(self._plan) - 1

    def covers(self, batch: int) -> bool:
        """Whether a decode-only step of ``batch`` rows is priced here."""
        return 1 <= batch <= self.max_batch

    def __call__(self, batch: int, ctx_tokens: float) -> float:
        """Seconds of a decode-only step of ``batch`` rows (``covers(batch)``) reading ``ctx_tokens`` in all."""
        base, lo, hi, w = self._plan[batch]
        c = ctx_tokens / batch
        high = self._rows[hi]
        if lo == hi:  # a calibrated size (w == 1): the other term is exactly 0
            return base + (high(c) - high.ys[0])
        low = self._rows[lo]
        return base + w * (high(c) - high.ys[0]) + (1.0 - w) * (low(c) - low.ys[0])


def _bracket(batches: Sequence[int], b: int) -> tuple[int, int, float]:
    """Indices of the calibrated sizes around ``b`` and ``b``'s weight on the upper one."""
    i = bisect_left(batches, b)
    if i == 0:
        return 0, 0, 1.0
    if batches[i] == b:
        return i, i, 1.0
    lo, hi = batches[i - 1], batches[i]
    return i - 1, i, (b - lo) / (hi - lo)


def _between(batches: Sequence[int], values: Sequence[float], b: int) -> float:
    """``values`` (one per calibrated size) linearly interpolated at ``b`` (the first below the first size)."""
    lo, hi, w = _bracket(batches, b)
    return w * values[hi] + (1.0 - w) * values[lo]
