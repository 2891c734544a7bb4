"""CUDA graphs of whole steps: decode-only steps by batch size, mixed steps by token count.

Each graph runs the full step: embedding, every layer, the final norm, the LM
head (logits in the model dtype) and the greedy choice (``sampler.greedy_ids``), reading its
inputs from one set of static buffers sized for the largest graph. Decode-only
steps (``DecodeGraphs``, inputs ``DecodeInputs``): a graph of batch ``B`` reads
the first ``B`` rows, and a step of ``n <= max(sizes)`` sequences is padded to
the next captured size. Mixed steps (``MixedGraphs``, inputs ``MixedInputs``):
every sequence is a chunk of the paged prefill kernel and a step is padded to
the next captured token count. Per step the host writes the small inputs into
the pinned mirror, issues one host-to-device copy and one graph launch; all
graphs share one memory pool (they replay one at a time).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch

from engine.decode_inputs import DecodeInputs
from engine.mixed_inputs import MixedInputs
from engine.sampler import greedy_ids
from engine.step_metadata import StepMetadata
from policies.sequence import Sequence
from policies.types import StepPlan

ForwardFn = Callable[[StepMetadata], torch.Tensor]
Captured = tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]  # graph, its logits, its greedy ids
PoolHandle = tuple[int, int]


def capture(forward: ForwardFn, meta: StepMetadata, device: torch.device, pool: PoolHandle | None) -> Captured:
    """Warm ``forward`` up on ``meta`` (Triton JIT, cuBLAS workspaces), then capture it with its argmax.

    Args:
        forward: ``meta -> logits [N, V]``.
        meta: static inputs the graph reads on every replay.
        device: the CUDA device.
        pool: memory pool to share (graphs replayed one at a time may share one).

    Returns:
        The graph and its static logits and greedy ids.
    """
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            greedy_ids(forward(meta))
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        logits = forward(meta)
        ids = greedy_ids(logits)
    return graph, logits, ids


class DecodeGraphs:
    """Captured decode steps, replayed after staging fresh inputs.

    Args:
        forward: ``meta -> logits [B, V]`` (the model forward with a capture-safe
            attention; any float dtype, every row of ``meta`` sampling).
        sizes: batch sizes to capture (strictly increasing).
        inputs: the static input buffers (``max_rows >= max(sizes)``).
        device: the CUDA device.
        pool: a memory pool to share with other graphs (None: a new one).
    """

    def __init__(self, forward: ForwardFn, sizes: tuple[int, ...], inputs: DecodeInputs,
                 device: torch.device, pool: PoolHandle | None = None) -> None:
        if not sizes or sizes[-1] > inputs.max_rows:
            raise ValueError(f"graph sizes {sizes} must be non-empty and fit the {inputs.max_rows} "
                             "input rows")
        self.sizes = sizes
        self.inputs = inputs
        self.device = device
        self.graphs: dict[int, Captured] = {}
        for b in reversed(sizes):  # largest first, so smaller graphs fit in its memory pool
            self.graphs[b] = capture(forward, inputs.meta(b), device, pool)
            pool = self.graphs[b][0].pool()
        self.pool = pool
        torch.cuda.synchronize(device)

    def size_for(self, num_decodes: int) -> int | None:
        """The captured batch size a decode step of ``num_decodes`` runs at, or None (eager)."""
        i = bisect.bisect_left(self.sizes, num_decodes)
        return self.sizes[i] if i < len(self.sizes) else None

    def run(self, decodes: Seq[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage the decode step of ``decodes`` and replay the graph of its padded size.

        Args:
            decodes: the step's sequences (at most ``max(sizes)``), in row order.

        Returns:
            ``(logits [n, V] in the model dtype, greedy ids int64 [n])``, views of
            static buffers: read them before the next replay.

        Raises:
            ValueError: more decodes than the largest captured size.
        """
        n = len(decodes)
        b = self.size_for(n)
        if b is None:
            raise ValueError(f"{n} decodes exceed the largest captured batch {self.sizes[-1]}")
        self.inputs.stage(decodes, b)
        graph, logits, ids = self.graphs[b]
        graph.replay()
        return logits[:n], ids[:n]

    def replay_static(self, rows: int) -> torch.Tensor:
        """Replay the graph of ``rows`` on whatever the static inputs hold (benchmarks: GPU time alone).

        Returns:
            The graph's greedy ids [rows].
        """
        graph, _, ids = self.graphs[rows]
        graph.replay()
        return ids


class MixedGraphs:
    """Captured mixed steps (prefill chunks, with or without decodes), one graph per padded token count.

    A step of ``T`` tokens (prefill tokens + decodes) that fits ``MixedInputs`` replays the graph of the
    smallest captured count ``>= T``; its logits have ``min(count, inputs.max_rows)`` rows, the first
    ones the step's sampling sequences.

    Args:
        forward: ``meta -> logits [R, V]`` (the model forward with a capture-safe attention).
        sizes: token counts to capture (strictly increasing, at most ``inputs.max_tokens``).
        inputs: the static input buffers.
        device: the CUDA device.
        pool: a memory pool to share with other graphs (None: a new one).
    """

    def __init__(self, forward: ForwardFn, sizes: tuple[int, ...], inputs: MixedInputs, device: torch.device,
                 pool: PoolHandle | None = None) -> None:
        if not sizes or sizes[-1] > inputs.max_tokens:
            raise ValueError(f"graph token counts {sizes} must be non-empty and fit the {inputs.max_tokens} "
                             "input tokens")
        self.sizes = sizes
        self.inputs = inputs
        self.graphs: dict[int, Captured] = {}
        for t in reversed(sizes):  # largest first, so smaller graphs fit in its memory pool
            self.graphs[t] = capture(forward, inputs.meta(t, min(t, inputs.max_rows)), device, pool)
            pool = self.graphs[t][0].pool()
        self.pool = pool
        torch.cuda.synchronize(device)

    def size_for(self, plan: StepPlan) -> int | None:
        """The captured token count ``plan`` runs at, or None (it runs eagerly)."""
        if not self.inputs.fits(plan):
            return None
        i = bisect.bisect_left(self.sizes, plan.num_prefill_tokens + len(plan.decodes))
        return self.sizes[i] if i < len(self.sizes) else None

    def run(self, plan: StepPlan, size: int) -> tuple[torch.Tensor, torch.Tensor, list[Sequence]]:
        """Stage ``plan`` padded to ``size`` tokens and replay that graph.

        Returns:
            ``(logits [n, V] in the model dtype, greedy ids int64 [n], the n sampling sequences)``;
            the tensors are views of static buffers: read them before the next replay.
        """
        seqs = self.inputs.stage(plan, size)
        graph, logits, ids = self.graphs[size]
        graph.replay()
        return logits[: len(seqs)], ids[: len(seqs)], seqs
