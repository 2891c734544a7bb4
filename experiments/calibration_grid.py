"""What ``servegym calibrate`` times: the grid of step shapes, and the shapes of it that fit an engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from engine.model_runner import ModelRunner


@dataclass(frozen=True)
class CalibrationGrid:
    """The step shapes to time.

    Args:
        batch_sizes: decode batch sizes (>= 2 of them).
        decode_contexts: contexts per decoding sequence, in tokens (>= 2, increasing): every batch size
            is timed at each (shrunk to fit the pool and ``max_model_len``).
        prefill_tokens: chunk sizes of the prefill-only steps (>= 2 of them).
        prefill_context: cached context under the second prefill series.
        warmup: steps of each shape run before the timed ones.
        repeats: timed steps of each shape (their trimmed mean is kept).
        passes: times the decode grid is timed (alternating order; per shape the steps of all passes pooled).
        mixed_tokens: chunk sizes of the steps of one chunk beside decodes (empty: no such steps, no
            ``mixed_decode`` table).
        mixed_batches: decodes beside that chunk.
        mixed_context: context per decoding sequence in those steps.
        verify_batches: decodes of the verification steps (timed only on an engine with a
            ``speculative_method``; empty: none).
        verify_drafts: draft tokens per decode in those steps (4, the ``fixed`` policy's default, is also
            the first count whose rows re-read their context in groups of 4 rows: 1B's).
    """

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
    decode_contexts: tuple[int, ...] = (32, 512, 2048, 6144)
    prefill_tokens: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
    prefill_context: int = 4096
    warmup: int = 3
    repeats: int = 7
    passes: int = 2
    mixed_tokens: tuple[int, ...] = (128, 1024)
    mixed_batches: tuple[int, ...] = (16, 64, 128, 224)
    mixed_context: int = 1024
    verify_batches: tuple[int, ...] = (1, 4, 16, 32)
    verify_drafts: tuple[int, ...] = (1, 3, 4, 6)

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "prefill_tokens"):
            values = getattr(self, name)
            if len(values) < 2 or any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"CalibrationGrid.{name}: need >= 2 strictly increasing sizes >= 1, got {values}")
        ctxs = self.decode_contexts
        if len(ctxs) < 2 or ctxs[0] < 2 or list(ctxs) != sorted(set(ctxs)):
            raise ValueError(f"CalibrationGrid.decode_contexts: need >= 2 strictly increasing contexts >= 2, "
                             f"got {ctxs}")
        for name in ("mixed_tokens", "mixed_batches", "verify_batches", "verify_drafts"):
            values = getattr(self, name)
            if any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"CalibrationGrid.{name}: need strictly increasing sizes >= 1, got {values}")
        if self.mixed_context < 2:
            raise ValueError(f"CalibrationGrid.mixed_context: need >= 2, got {self.mixed_context}")
        if self.prefill_context < 1 or self.warmup < 0 or self.repeats < 1 or self.passes < 1:
            raise ValueError(f"CalibrationGrid: need prefill_context >= 1, warmup >= 0, repeats >= 1 and passes "
                             f">= 1, got {self.prefill_context}, {self.warmup}, {self.repeats}, {self.passes}")


QUICK_GRID = CalibrationGrid(batch_sizes=(1, 4, 16, 64, 256), decode_contexts=(32, 1024),
                             prefill_tokens=(16, 128, 1024, 8192), prefill_context=2048, warmup=2, repeats=3,
                             passes=1, mixed_tokens=(128,), mixed_batches=(16, 128), verify_batches=(1, 16),
                             verify_drafts=(2, 4))


def plan_verify_shapes(grid: CalibrationGrid, runner: ModelRunner) -> list[tuple[int, int, int]]:
    """The (batch, drafts, context) verification shapes that fit this engine: none without a
    ``speculative_method``; each (batch, drafts) at the smallest and largest decode context, shrunk to fit the pool
    (every step may allocate ``drafts + 1`` more slots per sequence) and ``max_model_len``.

    With decode graphs, shapes of more rows (``batch * (drafts + 1)``) than the largest graph are
    dropped: such steps replay the largest graph on chunks of their rows, with staging and launches
    of their own, and one of them would set the linear overhead fit of all the others (when they
    still ran eagerly, one 336-row shape at 11 ms pulled every step's price up). The simulator
    prices them as chunked replays with the same terms (10-13% low on an H200).
    """
    if runner.speculative is None:
        return []
    most = max(runner.graphs.sizes) if runner.graphs is not None else None
    shapes: list[tuple[int, int, int]] = []
    for b in grid.verify_batches:
        for k in grid.verify_drafts:
            ctxs = _decode_contexts(grid, runner, b, k + 1)
            ctxs = ctxs[:1] + ctxs[-1:] if len(ctxs) >= 2 else []  # the smallest and largest: fit_verify's slope
            rows = b * (k + 1)
            if ctxs and rows <= runner.config.max_num_batched_tokens and (most is None or rows <= most):
                shapes += [(b, k, c) for c in ctxs]
    return shapes


def _decode_contexts(grid: CalibrationGrid, runner: ModelRunner, batch: int, tokens_per_step: int) -> list[int]:
    """The grid's decode contexts shrunk so that ``batch`` sequences, each growing by up to
    ``tokens_per_step`` tokens a step over the shape's steps, fit the pool and ``max_model_len``;
    duplicates and contexts below 2 dropped."""
    bs, steps = runner.block_size, grid.warmup + grid.repeats + 8
    fit = min(runner.max_model_len, (runner.num_gpu_blocks // batch) * bs) - steps * tokens_per_step - 2 * bs
    return [c for c in dict.fromkeys(min(c, fit) for c in grid.decode_contexts) if c >= 2]


def plan_shapes(grid: CalibrationGrid, runner: ModelRunner
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """The shapes of the grid that fit this engine: (batch, context) decode shapes, (tokens, context, seqs)
    prefill shapes and (tokens, batch, context) mixed shapes.

    Contexts are shrunk to fit ``max_model_len`` and the KV pool; prefill steps of more tokens than
    ``max_num_batched_tokens`` are dropped, and those longer than one sequence may hold are split into
    ``seqs`` near-equal chunks. Mixed shapes that do not fit (``batch + 1`` sequences, the pool, the
    token budget, a graph's largest token count when the engine has mixed graphs) are dropped.
    """
    bs, blocks, mml = runner.block_size, runner.num_gpu_blocks, runner.max_model_len
    steps = grid.warmup + grid.repeats + 8
    decodes: list[tuple[int, int]] = []
    for b in grid.batch_sizes:
        shapes = _decode_contexts(grid, runner, b, 1)
        if len(shapes) >= 2:
            decodes += [(b, c) for c in shapes]
    prefills: list[tuple[int, int, int]] = []
    cfg = runner.config
    ctx = min(grid.prefill_context, mml // 2) // bs * bs
    for t in grid.prefill_tokens:
        if t > cfg.max_num_batched_tokens:
            continue
        seqs = -(-t // (mml - ctx - 1))
        if seqs > cfg.max_num_seqs or ctx < bs or (ctx + t) // bs + 2 * seqs > blocks // 2:
            continue
        prefills += [(t, 0, seqs), (t, ctx, seqs)]
    mixed: list[tuple[int, int, int]] = []
    largest = max(runner.mixed_graphs.sizes) if runner.mixed_graphs is not None else cfg.max_num_batched_tokens
    for t in grid.mixed_tokens:
        for b in grid.mixed_batches:
            c = min(grid.mixed_context, mml - steps - 2 * bs)
            need = b * (-(-(c + steps) // bs) + 1) + -(-t // bs) + 2
            if b + 1 <= cfg.max_num_seqs and t + b <= min(largest, cfg.max_num_batched_tokens) and need <= blocks \
                    and t < mml and c >= 2:
                mixed.append((t, b, c))
    return decodes, prefills, mixed
