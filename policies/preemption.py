"""Victim choice: which running sequence is preempted when KV blocks run out.

A victim policy is a function of the candidates (running sequences not yet
scheduled in the current step, in admission order); a new one is one function
plus one line in ``VICTIM_POLICIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq

from policies.sequence import Sequence

VictimPolicy = Callable[[Seq[Sequence]], Sequence]


def lifo(candidates: Seq[Sequence]) -> Sequence:
    """The most recently admitted sequence (vLLM's default)."""
    return candidates[-1]


def fewest_computed(candidates: Seq[Sequence]) -> Sequence:
    """The sequence with the least KV computed: the cheapest to recompute."""
    return min(reversed(candidates), key=lambda s: s.num_computed)


def most_blocks(candidates: Seq[Sequence]) -> Sequence:
    """The sequence holding the most blocks: frees the most memory at once."""
    return max(reversed(candidates), key=lambda s: len(s.block_table))


def lowest_priority(candidates: Seq[Sequence]) -> Sequence:
    """The lowest ``Request.priority``; the latest admitted among equals."""
    return min(reversed(candidates), key=lambda s: s.request.priority)


VICTIM_POLICIES: dict[str, VictimPolicy] = {
    "lifo": lifo,
    "fewest-computed": fewest_computed,
    "most-blocks": most_blocks,
    "lowest-priority": lowest_priority,
}
