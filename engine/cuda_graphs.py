"""CUDA graphs of whole decode-only steps for a ladder of batch sizes.

Each graph runs the full step: embedding, every layer, the final norm, the LM
head (logits in the model dtype) and the greedy choice (``argmax``), reading its
inputs from one set of static buffers (``DecodeInputs``) sized for the largest
batch; a graph of batch ``B`` reads their first ``B`` rows. A decode step of
``n <= max(sizes)`` sequences is padded to the next captured size. Per step the
host writes the small inputs into the pinned mirror, issues one host-to-device
copy and one graph launch.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch

from engine.decode_inputs import DecodeInputs
from engine.step_metadata import StepMetadata
from policies.sequence import Sequence

ForwardFn = Callable[[StepMetadata], torch.Tensor]


class DecodeGraphs:
    """Captured decode steps, replayed after staging fresh inputs.

    Args:
        forward: ``meta -> logits [B, V]`` (the model forward with a capture-safe
            attention; any float dtype, every row of ``meta`` sampling).
        sizes: batch sizes to capture (strictly increasing).
        inputs: the static input buffers (``max_rows >= max(sizes)``).
        device: the CUDA device.
    """

    def __init__(self, forward: ForwardFn, sizes: tuple[int, ...], inputs: DecodeInputs,
                 device: torch.device) -> None:
        if not sizes or sizes[-1] > inputs.max_rows:
            raise ValueError(f"graph sizes {sizes} must be non-empty and fit the {inputs.max_rows} "
                             "input rows")
        self.sizes = sizes
        self.inputs = inputs
        self.device = device
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        pool = None
        for b in reversed(sizes):  # largest first, so smaller graphs fit in its memory pool
            meta = inputs.meta(b)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: Triton JIT, cuBLAS workspaces
                    forward(meta).argmax(dim=-1)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = forward(meta)
                ids = logits.argmax(dim=-1)
            pool = graph.pool()
            self.graphs[b] = (graph, logits, ids)
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
