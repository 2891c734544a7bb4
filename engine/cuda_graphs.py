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
graphs share one memory pool (they replay one at a time). With row groups (speculative
verification, ``max_group > 1``) every size is captured twice: over the groups, for steps that
verify drafts, and without them, for plain steps, which the ungrouped kernel runs faster.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch

from engine.decode_inputs import DecodeInputs
from engine.mixed_inputs import MixedInputs
from engine.sampler import greedy_ids
from engine.step_metadata import DecodeRows, StepMetadata
from policies.sequence import Sequence
from policies.types import StepPlan

ForwardFn = Callable[[StepMetadata], torch.Tensor]
Epilogue = Callable[[torch.Tensor], None]  # runs on the greedy ids at the end of a step
PoolHandle = tuple[int, int]


class GraphStep:
    """A captured step: ``replay()`` runs it again on its static inputs.

    Attributes:
        graph: the CUDA graph.
        logits: its static logits [N, V] (model dtype), rewritten by every replay.
        ids: its static greedy ids int64 [N], rewritten by every replay.
    """

    def __init__(self, graph: torch.cuda.CUDAGraph, logits: torch.Tensor, ids: torch.Tensor) -> None:
        self.graph, self.logits, self.ids = graph, logits, ids

    def replay(self) -> None:
        self.graph.replay()


class EagerStep:
    """``GraphStep``'s interface without capture: ``replay()`` runs the step eagerly (the CPU, or CUDA
    without graphs); ``logits`` and ``ids`` are the outputs of the last run.

    Args:
        fn: ``() -> (logits, ids)``, the whole step on the static inputs.
    """

    def __init__(self, fn: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.fn = fn
        self.logits, self.ids = fn()

    def replay(self) -> None:
        self.logits, self.ids = self.fn()


def _step(forward: ForwardFn, meta: StepMetadata, epilogue: Epilogue | None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = forward(meta)
    ids = greedy_ids(logits)
    if epilogue is not None:
        epilogue(ids)
    return logits, ids


def _variants(max_group: int) -> tuple[bool, ...]:
    """The graphs each size needs: ungrouped, and grouped too where the inputs carry row groups."""
    return (False, True) if max_group > 1 else (False,)


def capture(forward: ForwardFn, meta: StepMetadata, device: torch.device, pool: PoolHandle | None,
            epilogue: Epilogue | None = None) -> GraphStep:
    """Warm ``forward`` up on ``meta`` (Triton JIT, cuBLAS workspaces), then capture it with its argmax.

    Args:
        forward: ``meta -> logits [N, V]``.
        meta: static inputs the graph reads on every replay.
        device: the CUDA device.
        pool: memory pool to share (graphs replayed one at a time may share one).
        epilogue: captured after the argmax, given the greedy ids (warm-up runs call it too).

    Returns:
        The captured step with its static logits and greedy ids.
    """
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            _step(forward, meta, epilogue)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        logits, ids = _step(forward, meta, epilogue)
    return GraphStep(graph, logits, ids)


class DecodeGraphs:
    """Captured decode steps, replayed after staging fresh inputs.

    Args:
        forward: ``meta -> logits [B, V]`` (the model forward with a capture-safe
            attention; any float dtype, every row of ``meta`` sampling).
        sizes: batch sizes to capture (strictly increasing).
        inputs: the static input buffers (``max_rows >= max(sizes)``).
        device: the device (CUDA to capture).
        pool: a memory pool to share with other graphs (None: a new one).
        advance: end every step with ``inputs.advance`` (the static inputs become the next
            step of the same sequences: decode lookahead, ``engine.lookahead``).
        eager: run the steps eagerly on every replay instead of capturing them (the CPU,
            or CUDA without graphs); the same interface and the same results.
    """

    def __init__(self, forward: ForwardFn, sizes: tuple[int, ...], inputs: DecodeInputs,
                 device: torch.device, pool: PoolHandle | None = None, *, advance: bool = False,
                 eager: bool = False) -> None:
        if not sizes or sizes[-1] > inputs.max_rows:
            raise ValueError(f"graph sizes {sizes} must be non-empty and fit the {inputs.max_rows} "
                             "input rows")
        self.sizes = sizes
        self.inputs = inputs
        self.device = device
        self.graphs: dict[int, GraphStep | EagerStep] = {}
        self.grouped: dict[int, GraphStep | EagerStep] = {}  # over the row groups (inputs.max_group > 1)
        for b in reversed(sizes):  # largest first, so smaller graphs fit in its memory pool
            epilogue = (lambda ids, rows=b: inputs.advance(ids, rows)) if advance else None
            for grouped in _variants(inputs.max_group):
                meta = inputs.meta(b, grouped)
                if eager:
                    step = EagerStep(lambda meta=meta, epilogue=epilogue: _step(forward, meta, epilogue))
                else:
                    step = capture(forward, meta, device, pool, epilogue)
                    pool = step.graph.pool()
                (self.grouped if grouped else self.graphs)[b] = step
        self.pool = pool
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def size_for(self, num_decodes: int) -> int | None:
        """The captured batch size a decode step of ``num_decodes`` runs at, or None (eager)."""
        i = bisect.bisect_left(self.sizes, num_decodes)
        return self.sizes[i] if i < len(self.sizes) else None

    def run(self, decodes: Seq[Sequence] | DecodeRows) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage the decode step of ``decodes`` and replay the graph of its padded size.

        A step of more rows than the largest graph (a speculative step's verification rows, or
        ``max_num_seqs`` above the ladder) replays the largest graph on consecutive chunks of its
        rows, in row order, then the rest at its padded size: a row attends only to positions before
        its own, whose KV is in the cache or was written by its own chunk or an earlier one.

        Args:
            decodes: the step's sequences in row order, or its rows.

        Returns:
            ``(logits [n, V] in the model dtype, greedy ids int64 [n])``: views of static buffers when
            the step fits one graph (read them before the next replay), new tensors when chunked.
        """
        n, most = len(decodes), self.sizes[-1]
        if n <= most:
            return self._replay(decodes)
        largest = self.graphs[most]
        logits = largest.logits.new_empty((n, largest.logits.shape[1]))
        ids = largest.ids.new_empty(n)
        for a in range(0, n, most):  # each copy is queued before the next replay overwrites the graph's outputs
            part_logits, part_ids = self._replay(decodes[a : a + most])
            logits[a : a + len(part_ids)].copy_(part_logits)
            ids[a : a + len(part_ids)].copy_(part_ids)
        return logits, ids

    def _replay(self, decodes: Seq[Sequence] | DecodeRows) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(decodes)
        b = self.size_for(n)
        assert b is not None  # run() chunks steps larger than the largest graph
        step = (self.grouped if self.inputs.stage(decodes, b) else self.graphs)[b]
        step.replay()
        return step.logits[:n], step.ids[:n]

    def replay_static(self, rows: int) -> torch.Tensor:
        """Replay the graph of ``rows`` on whatever the static inputs hold (no staging: benchmarks, and
        the lookahead step, whose inputs the previous replay advanced).

        Returns:
            The graph's greedy ids [rows].
        """
        step = self.graphs[rows]
        step.replay()
        return step.ids


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
        self.graphs: dict[int, GraphStep] = {}
        self.grouped: dict[int, GraphStep] = {}  # over the decode rows' groups (inputs.max_group > 1)
        for t in reversed(sizes):  # largest first, so smaller graphs fit in its memory pool
            for grouped in _variants(inputs.max_group):
                step = capture(forward, inputs.meta(t, min(t, inputs.max_rows), grouped), device, pool)
                (self.grouped if grouped else self.graphs)[t] = step
                pool = step.graph.pool()
        self.pool = pool
        torch.cuda.synchronize(device)

    def size_for(self, plan: StepPlan) -> int | None:
        """The captured token count ``plan`` runs at, or None (it runs eagerly)."""
        if not self.inputs.fits(plan):
            return None
        i = bisect.bisect_left(self.sizes, plan.num_tokens)
        return self.sizes[i] if i < len(self.sizes) else None

    def run(self, plan: StepPlan, size: int, decode_rows: DecodeRows | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, list[Sequence]]:
        """Stage ``plan`` padded to ``size`` tokens (with ``decode_rows``: ``MixedInputs.stage``) and replay
        that graph.

        Returns:
            ``(logits [n, V] in the model dtype, greedy ids int64 [n], the n sampling sequences)``;
            the tensors are views of static buffers: read them before the next replay.
        """
        seqs, grouped = self.inputs.stage(plan, size, decode_rows)
        step = (self.grouped if grouped else self.graphs)[size]
        step.replay()
        return step.logits[: len(seqs)], step.ids[: len(seqs)], seqs
