"""Keep the garbage collector's full collections out of the step loop.

A full (generation 2) collection walks every container object the process holds: with torch, the
model, the engine and a trace loaded, one took 30-120 ms on a CPU and stalled one step of every
H200 replay by 150-215 ms (``results/sim_vs_real_spec``), a pause the simulator cannot know about.
Freezing the heap at the start of a run moves every object alive then (the bulk) out of the
collector's reach, so later collections walk only what the run itself allocates.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect once, then freeze every live object (``gc.freeze``) until the block ends (``gc.unfreeze``).

    Objects that die while frozen are freed by reference counting as usual; only reference cycles among
    them wait for the unfreeze.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
