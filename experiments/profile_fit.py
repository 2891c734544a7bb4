"""Fit the tables of a profile (``sim/profile.py``) from timed engine steps, by differences.

Inputs are typical (trimmed-mean) whole-step wall times of two kinds of steps:

* decode-only steps of ``B`` sequences whose decodes read ``x`` context tokens in all,
  at (at least) a small and a large context per ``B``: CUDA-graphed on a GPU, the
  steady state of every decoding batch;
* prefill-only steps of one ``T``-token chunk, from scratch (``C = 0``) and on top of
  ``C`` cached prefix tokens: ``P = T * C + T * (T + 1) / 2`` causal (query, key) pairs;
  run like every step that holds a prefill chunk (eagerly, or as a graph captured for
  the step's token count).

The cost model (``sim/cost_model.py``) adds ``step_overhead + dense'(tokens) +
prefill_attention(pairs) + decode_attention(decode ctx)``, where ``dense'`` is ``dense`` at the
padded graph size for graphed decode steps and ``mixed_dense`` for steps with a prefill (no ``lm_head``
table: the dense tables include it). The fit:

1. decode attention: per ``B``, the slope ``k_B = dt / dx`` between its small and
   large context; each measured point contributes ``(x, k_B * x)``, i.e. decode
   attention is taken to be proportional to the context read at a given batch size;
2. decode base ``d(B) = t(B, small) - k_B * x_small``; ``step_overhead_s`` is the
   intercept at ``B = 0`` of the line through the two smallest batches (clipped to
   ``[0, min d]``, and to 0 when noise makes some ``d`` negative) and ``dense(B) = d(B) - overhead``;
3. prefill attention: per ``T``, the slope ``k_T = dt / dP`` between ``C = 0`` and the largest
   ``C``; points ``(P, k_T * P)`` of the chunk sizes ``T >= 256`` only (below that the
   attention of even a long context is lost in the step's noise), plus ``(1, 0)``;
4. ``mixed_dense(T) = t(T, 0) - overhead - prefill_attention(P(T, 0))`` for every ``T``.
   Steps of more tokens than one sequence may hold are timed as several equal chunks.
   ``prefill_context``: per ``T`` (of ``n`` chunks), ``(t(T, C) - t(T, 0)) / (n C)`` at ``x = T / n``, the
   seconds each cached token a chunk reads adds, for every size (short chunks included); the cost model
   then prices the pairs within chunks by ``prefill_attention`` and the cached tokens by this table, so
   a fresh step costs what it did and a step on a cached prefix costs what was measured there.
5. (``fit_mixed_decode``, optional) steps of one fresh ``T``-token chunk beside ``D`` decodes:
   ``mixed_decode(D)`` is what such a step takes beyond the cost model with tables 1-4 (its decodes'
   host-side staging and bookkeeping and LM-head rows, which prefill-only steps do not have); the
   residuals of all ``T`` at each ``D``, with ``(0, 0)``.
6. (``fit_verify``, optional) decode-only steps of ``B`` decodes each verifying ``k`` draft tokens, at a
   small and a large context: the residual ``r`` beyond the cost model pricing ``B (k + 1)`` rows with the
   attention of the ``B`` decodes' own context only. Per ``(B, k)``, the slope of ``r`` against the draft
   rows' context ``y`` gives ``draft_attention`` points ``(y, slope * y)`` (with ``(0, 0)``); the
   intercepts ``e(B, k) = r - slope * y`` are fitted as ``step + per_decode * B + per_draft * B k``
   by least squares with non-negative coefficients (``speculative_overhead_s``).

7. (``decode_steps_table``) the decode samples themselves, by batch size: step time against context per
   sequence, for the profile's ``decode_steps`` (``sim/decode_surface.py`` prices decode-only steps from
   it; the tables of steps 1-2 stay for the other kinds of step).

Every table is then made non-decreasing by isotonic regression (pool adjacent
violators), duplicates in ``x`` averaged, negative times clipped to 0. Nothing here
looks at a trace: only the synthetic calibration steps.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sim.profile import PiecewiseLinear


def typical(times: Sequence[float], trim: float = 0.1) -> float:
    """Mean of ``times`` without the lowest and highest ``trim`` fraction of them.

    A simulation sums step times, so a shape's time must be its mean, not its median: on a real
    host a step is sometimes slowed for a stretch of steps (the median of a few consecutive ones
    then misses it, or catches only it). Trimming drops single extreme stalls.
    """
    if not times:
        raise ValueError("typical() needs at least one time")
    ordered = sorted(times)
    cut = int(len(ordered) * trim)
    kept = ordered[cut:len(ordered) - cut] or ordered
    return statistics.fmean(kept)


@dataclass(frozen=True)
class DecodeSample:
    """Typical time (``typical``) of a decode-only step: ``batch`` decodes reading ``ctx_tokens`` in all;
    ``times`` are the timed steps it came from; ``tail_s`` the typical part of a step after its tokens
    were out (the scheduler's bookkeeping)."""

    batch: int
    ctx_tokens: float
    time_s: float
    times: tuple[float, ...] = ()
    tail_s: float = 0.0


@dataclass(frozen=True)
class PrefillSample:
    """Typical time of a prefill-only step of ``tokens`` in ``seqs`` near-equal chunks, each after
    ``context`` cached tokens; ``tail_s`` as for ``DecodeSample``."""

    tokens: int
    context: int
    time_s: float
    seqs: int = 1
    tail_s: float = 0.0

    @property
    def pairs(self) -> float:
        return sum(t * self.context + t * (t + 1) / 2 for t in chunk_sizes(self.tokens, self.seqs))


@dataclass(frozen=True)
class MixedSample:
    """Typical time of a step of one fresh ``tokens``-token chunk beside ``batch`` decodes reading
    ``ctx_tokens`` in all."""

    tokens: int
    batch: int
    ctx_tokens: float
    time_s: float

    @property
    def pairs(self) -> float:
        return self.tokens * (self.tokens + 1) / 2


@dataclass(frozen=True)
class VerifySample:
    """Typical time of a decode-only step of ``batch`` decodes each verifying ``drafts`` draft tokens; the
    decodes' own rows read ``ctx_tokens`` in all, the draft rows ``draft_ctx_tokens``."""

    batch: int
    drafts: int
    ctx_tokens: float
    draft_ctx_tokens: float
    time_s: float

    @property
    def rows(self) -> int:
        return self.batch * (self.drafts + 1)


def chunk_sizes(tokens: int, seqs: int) -> list[int]:
    """``tokens`` split into ``seqs`` chunks whose sizes differ by at most one (larger first)."""
    q, r = divmod(tokens, seqs)
    return [q + 1] * r + [q] * (seqs - r)


@dataclass(frozen=True)
class FittedProfile:
    """The fitted parts of a profile: overhead and ``{table: (x, time_s)}``."""

    step_overhead_s: float
    tables: dict[str, tuple[list[float], list[float]]]
    mixed_extra_s: float  # diagnostic: median mixed_dense(T) - dense(T) over the decode range


def isotonic(ys: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit of ``ys`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for y in ys:
        blocks.append([float(y), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    out: list[float] = []
    for s, n in blocks:
        out += [s / n] * int(n)
    return out


def monotone_table(points: Iterable[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Sort, average equal ``x``, clip at 0 and make non-decreasing: a valid profile table."""
    by_x: dict[float, list[float]] = defaultdict(list)
    for x, y in points:
        by_x[float(x)].append(float(y))
    xs = sorted(by_x)
    if len(xs) < 2:
        raise ValueError(f"a table needs points at >= 2 distinct x, got {xs}")
    ys = isotonic([max(0.0, statistics.fmean(by_x[x])) for x in xs])
    return xs, ys


def _slope(lo: tuple[float, float], hi: tuple[float, float]) -> float:
    dx = hi[0] - lo[0]
    return max(0.0, (hi[1] - lo[1]) / dx) if dx > 0 else 0.0


def fit_profile(decodes: Sequence[DecodeSample], prefills: Sequence[PrefillSample]) -> FittedProfile:
    """Fit overhead and the dense, decode-attention and prefill-attention tables (module docstring).

    Raises:
        ValueError: too few measurements (each needs two batch sizes / chunk sizes, each at two contexts).
    """
    by_batch: dict[int, list[DecodeSample]] = defaultdict(list)
    for s in decodes:
        by_batch[s.batch].append(s)
    batches = sorted(b for b, ss in by_batch.items() if len({s.ctx_tokens for s in ss}) >= 2)
    if len(batches) < 2:
        raise ValueError("calibration needs decode steps at >= 2 batch sizes, each at 2 contexts")
    dec_points: list[tuple[float, float]] = []
    base: dict[int, float] = {}
    for b in batches:
        ss = sorted(by_batch[b], key=lambda s: s.ctx_tokens)
        k = _slope((ss[0].ctx_tokens, ss[0].time_s), (ss[-1].ctx_tokens, ss[-1].time_s))
        dec_points += [(s.ctx_tokens, k * s.ctx_tokens) for s in ss]
        base[b] = ss[0].time_s - k * ss[0].ctx_tokens
    b1, b2 = batches[:2]
    intercept = base[b1] - b1 * (base[b2] - base[b1]) / (b2 - b1)
    # >= 0 even when noise makes a batch's base negative (a steep small-to-large slope on a noisy machine)
    overhead = max(0.0, min(intercept, min(base.values())))
    dense_dec = [(float(b), base[b] - overhead) for b in batches]
    dense_table = monotone_table(dense_dec)
    dense_dec_fn = PiecewiseLinear(*dense_table)

    by_tokens: dict[int, list[PrefillSample]] = defaultdict(list)
    for p in prefills:
        by_tokens[p.tokens].append(p)
    sizes = sorted(t for t, ps in by_tokens.items() if any(p.context == 0 for p in ps) and len(ps) >= 2)
    if len(sizes) < 2:
        raise ValueError("calibration needs prefill steps at >= 2 chunk sizes, each with and without context")
    big = [t for t in sizes if t >= 256] or sizes[-1:]
    pf_points = [(1.0, 0.0)]
    for t in big:
        ps = sorted(by_tokens[t], key=lambda p: p.context)
        k = _slope((ps[0].pairs, ps[0].time_s), (ps[-1].pairs, ps[-1].time_s))
        pf_points += [(p.pairs, k * p.pairs) for p in ps]
    pf_table = monotone_table(pf_points)
    pf_fn = PiecewiseLinear(*pf_table)
    scratch = {t: min(by_tokens[t], key=lambda p: p.context) for t in sizes}
    mixed_points = [(float(t), p.time_s - overhead - pf_fn(p.pairs)) for t, p in scratch.items()]
    mixed_table = monotone_table(mixed_points)
    mixed_fn = PiecewiseLinear(*mixed_table)
    max_batch = batches[-1]
    overlap = [t for t in sizes if t <= max_batch] or sizes[:1]
    extra = statistics.median(mixed_fn(t) - dense_dec_fn(t) for t in overlap)
    ctx_points = []  # (tokens per chunk, seconds per cached token read)
    for t in sizes:
        lo, hi = min(by_tokens[t], key=lambda p: p.context), max(by_tokens[t], key=lambda p: p.context)
        if hi.context > 0:
            ctx_points.append((t / hi.seqs, max(0.0, hi.time_s - lo.time_s) / (hi.seqs * hi.context)))
    xs, ys = monotone_table(dec_points)
    if xs[0] > 1:  # below the first point attention shrinks with the context
        xs, ys = [1.0, *xs], [ys[0] / xs[0], *ys]
    tables = {"dense": dense_table, "decode_attention": (xs, ys), "prefill_attention": pf_table,
              "mixed_dense": mixed_table}
    if len({x for x, _ in ctx_points}) >= 2:
        tables["prefill_context"] = monotone_table(ctx_points)
    return FittedProfile(step_overhead_s=overhead, tables=tables, mixed_extra_s=extra)


def decode_steps_table(decodes: Sequence[DecodeSample]) -> dict[str, list]:
    """The profile's ``decode_steps`` (module docstring, step 7): per batch size timed at >= 2 contexts, the
    per-sequence contexts and the step times there (non-decreasing).

    Raises:
        ValueError: no batch size timed at two contexts.
    """
    by_batch: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for s in decodes:
        by_batch[s.batch].append((s.ctx_tokens / s.batch, s.time_s))
    table: dict[str, list] = {"batch": [], "ctx": [], "time_s": []}
    for b in sorted(by_batch):
        if len({c for c, _ in by_batch[b]}) < 2:
            continue
        xs, ys = monotone_table(by_batch[b])
        table["batch"].append(b)
        table["ctx"].append(xs)
        table["time_s"].append(ys)
    if not table["batch"]:
        raise ValueError("decode_steps_table needs a batch size timed at >= 2 contexts")
    return table


def fit_mixed_decode(samples: Sequence[MixedSample], predict: Callable[[MixedSample], float]
                     ) -> tuple[list[float], list[float]]:
    """The ``mixed_decode`` table (module docstring, step 5).

    Args:
        samples: timed steps of one chunk beside decodes (>= 1 decode count).
        predict: the cost model without ``mixed_decode``, pricing a sample's step shape.

    Returns:
        ``(x, time_s)``: decodes, and their extra seconds (non-decreasing, from ``(0, 0)``).
    """
    if not samples:
        raise ValueError("fit_mixed_decode needs at least one mixed sample")
    return monotone_table([(0.0, 0.0), *((float(m.batch), m.time_s - predict(m)) for m in samples)])


def nonnegative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin |a x - b|`` over ``x >= 0``, by trying every subset of free columns (a few columns only)."""
    n = a.shape[1]
    best, best_err = np.zeros(n), float(np.sum(b * b))
    for mask in range(1, 2 ** n):
        cols = [j for j in range(n) if mask >> j & 1]
        x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if (x < 0).any():
            continue
        err = float(np.sum((a[:, cols] @ x - b) ** 2))
        if err < best_err - 1e-30:
            best, best_err = np.zeros(n), err
            best[cols] = x
    return best


def fit_verify(samples: Sequence[VerifySample], predict: Callable[[VerifySample], float]
               ) -> tuple[tuple[list[float], list[float]], dict[str, float]]:
    """The ``draft_attention`` table and ``speculative_overhead_s`` (module docstring, step 6).

    Args:
        samples: timed verification steps, each ``(batch, drafts)`` at >= 2 draft contexts.
        predict: the cost model pricing a sample as ``rows`` decode rows reading ``ctx_tokens``.

    Returns:
        ``((x, time_s), {"step", "per_decode", "per_draft"})``.

    Raises:
        ValueError: no ``(batch, drafts)`` shape timed at two contexts.
    """
    shapes: dict[tuple[int, int], list[VerifySample]] = defaultdict(list)
    for v in samples:
        shapes[(v.batch, v.drafts)].append(v)
    points: list[tuple[float, float]] = [(0.0, 0.0)]
    rows: list[tuple[float, float, float]] = []  # (batch, draft tokens, intercept)
    for (batch, drafts), vs in sorted(shapes.items()):
        vs = sorted(vs, key=lambda v: v.draft_ctx_tokens)
        if vs[-1].draft_ctx_tokens <= vs[0].draft_ctx_tokens:
            continue
        resid = [(v.draft_ctx_tokens, v.time_s - predict(v)) for v in vs]
        k = _slope(resid[0], resid[-1])
        points += [(y, k * y) for y, _ in resid]
        rows += [(float(batch), float(batch * drafts), r - k * y) for y, r in resid]
    if not rows:
        raise ValueError("fit_verify needs verification steps of one (batch, drafts) shape at >= 2 contexts")
    a = np.array([[1.0, b, n] for b, n, _ in rows])
    coef = nonnegative_lstsq(a, np.array([e for _, _, e in rows]))
    return monotone_table(points), dict(zip(("step", "per_decode", "per_draft"), map(float, coef), strict=True))
