"""Decode lookahead: the next decode step is on the GPU before the host has booked this one.

At batch 1 the host's share of a decode step (reading the sampled ids back, the scheduler's
``postprocess`` and ``schedule``, staging the next inputs, launching the next graph) leaves the GPU
idle for a tenth of the step. With lookahead, right after a greedy decode-only graph step whose
sequences will all decode again (none reaches its output length with this token, and the next
position of each already has its KV block), the runner replays the same graph once more: the
graph ends with ``DecodeInputs.advance``, which has already turned its inputs into the next step of
the same sequences (this step's ids as inputs, one position further). When the scheduler's next plan
is exactly that step (the same sequences in the same order, one token further, the same block-table
entries, no swaps), ``execute`` takes that replay's ids instead of launching anything, and launches
the step after it. Any other plan (a stop token, an arrival, a preemption, a reordering) drops the
looked-ahead step: it still runs on the GPU (one wasted step) before the plan's own work.

The scheduler is untouched: it sees the same plans and results in the same order (outputs are
bit-identical); only the GPU runs ahead. A dropped step is harmless: it wrote only the KV of each
sequence's next position, in a block the sequence holds and that no prefix cache shares (only full
blocks are cached, and that block is not full); whoever computes that slot next writes it again
before any kernel reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.cuda_graphs import DecodeGraphs
from policies.sequence import Sequence
from policies.types import StepPlan

Ticket = tuple[int, int]  # host slot, rows


class IdsReadback:
    """Asynchronous copies of greedy ids into host memory, read back when their copy is done.

    Two slots used in turn: at most two copies are pending (a step's and its looked-ahead
    successor's), and a slot is reused only after its ids were read or dropped.

    Args:
        rows: most ids per copy.
        device: where the ids are (CUDA: pinned slots and an event per slot).
    """

    def __init__(self, rows: int, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self._host = [torch.empty(rows, dtype=torch.int64, pin_memory=cuda) for _ in range(2)]
        self._events = [torch.cuda.Event() if cuda else None for _ in range(2)]
        self._next = 0

    def start(self, ids: torch.Tensor) -> Ticket:
        """Queue the copy of ``ids`` (int64 [n]) behind the work already queued; returns its ticket."""
        k, n = self._next, ids.shape[0]
        self._next ^= 1
        event = self._events[k]
        self._host[k][:n].copy_(ids, non_blocking=event is not None)
        if event is not None:
            event.record()
        return k, n

    def wait(self, ticket: Ticket) -> list[int]:
        """Block until the ticket's copy is done; its ids."""
        k, n = ticket
        event = self._events[k]
        if event is not None:
            event.synchronize()
        return self._host[k][:n].tolist()


@dataclass
class _Pending:
    """A looked-ahead step: whom it decodes, at which positions, over which table entries."""

    seqs: list[Sequence]
    positions: list[int]
    tables: list[list[int]]
    ticket: Ticket


class DecodeLookahead:
    """Launches looked-ahead decode steps and hands out their ids when the plan matches.

    Args:
        graphs: decode graphs built with ``advance=True``.
        readback: where ids are copied back.
        block_size: tokens per KV block.

    Attributes:
        hits: plans served by a looked-ahead step.
        misses: looked-ahead steps dropped (the plan was a different step, or none came).
        launching: whether ``launch_after`` looks ahead at all (False: every decode step runs cold, through
            the same readback; calibration times the steps no looked-ahead step serves this way).
    """

    def __init__(self, graphs: DecodeGraphs, readback: IdsReadback, block_size: int) -> None:
        self.graphs = graphs
        self.readback = readback
        self.block_size = block_size
        self.hits = 0
        self.misses = 0
        self.launching = True
        self._pending: _Pending | None = None

    def _continues(self, seq: Sequence) -> bool:
        """Whether ``seq``, decoding now, decodes again next step with its next block already held."""
        return (seq.output_len - seq.num_generated > 1
                and (seq.num_computed + 1) // self.block_size < len(seq.block_table))

    def launch_after(self, plan: StepPlan, rows: int) -> None:
        """Replay the next step of ``plan`` (a greedy decode-only step just launched at ``rows`` rows whose
        ids copy is already queued) if every one of its sequences decodes again."""
        decodes = plan.decodes
        if not self.launching or plan.prefills or not all(self._continues(s) for s in decodes):
            return
        ids = self.graphs.replay_static(rows)
        ticket = self.readback.start(ids[: len(decodes)])
        bs = self.block_size
        self._pending = _Pending(list(decodes), [s.num_computed + 1 for s in decodes],
                                 [s.block_table[: (s.num_computed + 1) // bs + 1] for s in decodes], ticket)

    def take(self, plan: StepPlan) -> Ticket | None:
        """The ids ticket of the looked-ahead step if ``plan`` is that step, else None (and it is dropped).

        Called once at the start of every step: a looked-ahead step serves the very next plan or none.
        """
        p, self._pending = self._pending, None
        if p is None:
            return None
        same = (not plan.prefills and not plan.swap_in and not plan.swap_out and len(plan.decodes) == len(p.seqs)
                and all(s is q and s.num_computed == pos and s.block_table[: len(t)] == t
                        for s, q, pos, t in zip(plan.decodes, p.seqs, p.positions, p.tables, strict=True)))
        if same:
            self.hits += 1
            return p.ticket
        self.misses += 1
        return None

    @property
    def pending(self) -> bool:
        """Whether a looked-ahead step waits for the next plan."""
        return self._pending is not None

    def drop(self) -> None:
        """Forget a looked-ahead step (another path is about to run the GPU)."""
        if self._pending is not None:
            self._pending = None
            self.misses += 1
