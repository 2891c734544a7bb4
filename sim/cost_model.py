"""Cost models: predicted duration of one engine step from a ``StepPlan``'s aggregates.

A cost model reads only the plan's aggregate fields (``num_prefill_tokens``,
``prefill_ctx_tokens``, ``prefill_attn_pairs``, ``decode_ctx_tokens``, the number
of decodes, draft tokens, prefill chunks and swapped blocks), never its sequences,
and costs about a microsecond per call (the simulator calls it ~100k times per run).

Speculative decoding: the engine verifies a decode's ``k`` draft tokens as ``k``
more single-query decode rows (each reading its own context, through the same
decode graphs and kernels), so a step's decode count ``D`` below counts rows,
``len(decodes) + num_draft_tokens``, and ``decode_ctx_tokens`` already sums every
row's context. A profile calibrated with verification steps prices them apart
(``CalibratedCostModel``, below); without that, and in the roofline, a draft row
costs what a decode row of its context costs.

With ``T`` tokens computed (prefill tokens + decodes) and ``S`` sampling positions
(decodes + prefill chunks: every chunk is counted as sampling, an upper bound):

- ``RooflineCostModel``: the roofline of ``sim/roofline.py``, exactly. Operators
  that depend only on T (all but attention and lm_head) sum to a convex
  piecewise-linear function of T, precomputed with its breakpoints; lm_head
  likewise in S; attention is ``max(FLOPs / compute, bytes / bandwidth)`` over
  the layers. Swapped blocks cost ``block bytes / host bandwidth`` each.
- ``CalibratedCostModel``: from a profile file (format in ``sim/profile.py``)::

      step_time = step_overhead_s + dense'(T) + lm_head(S) + prefill_attention(pairs)
                  + decode_attention(decode_ctx) + swapped_blocks * block_bytes / swap_bytes_per_s

  where ``dense'`` follows the engine's kinds of steps when the profile says
  how they run: a decode-only step of ``B <= max(graph_batch_sizes)`` sequences
  replays the graph captured for the smallest size ``>= B``, so it costs
  ``dense(that size)``; a step holding prefill chunks costs ``mixed_dense`` of its
  ``T`` tokens, or of the smallest ``graph_token_sizes`` entry ``>= T`` when the
  engine captured mixed steps by token count (a padded graph), else (larger steps) as they
  run eagerly; a decode-only step of more rows than the largest graph ``G`` replays it on
  chunks of ``G`` rows and the rest at its padded size, so it costs ``floor(B / G) dense(G) +
  dense(padded rest)``.
  With the profile's ``prefill_context`` table (seconds per cached prefix token of a chunk, by the
  chunk's tokens), ``prefill_attention`` prices a step's causal pairs within its chunks only and the
  ``C`` cached tokens its ``n`` chunks of ``T`` tokens read add ``prefill_context(T / n) * C``: a short
  chunk over a long prefix runs few query tiles, so its context costs more per pair than a long one's
  (on an H200, 16 tokens over 4,096 took 40% longer than 16 fresh ones, which a pairs-only table
  priced 23% low). Chunks are taken as equal in size (exact for one chunk). The ``D`` decodes of a
  step holding a prefill add ``mixed_decode(D)`` when the profile has that table (measured on
  steps of one chunk plus ``D`` decodes, beyond the terms above).
  A step verifying ``N`` draft tokens of ``D - N`` decodes, with a profile holding
  ``draft_attention`` and ``speculative_overhead_s``, prices its decode attention as
  ``decode_attention(decode ctx - draft ctx) + draft_attention(draft ctx)`` (a decode's
  draft rows read the blocks its own row reads, at the same time, mostly from cache)
  and adds ``step + per_decode * (D - N) + per_draft * N`` (proposals, row staging and
  verification on the host; a draft model's forward passes).
  With the profile's ``decode_steps`` (measured whole decode-only steps by batch size and context per
  sequence), a decode-only step of at most its largest batch size, without drafts priced apart, costs
  ``DecodeSurface(B, decode_ctx)`` instead (``sim/decode_surface.py``: the padded graph's time at a short
  context plus what the per-sequence context adds, interpolated between the calibrated sizes).
  With the engine's decode lookahead the profile's ``decode_steps`` holds the steps a looked-ahead step
  serves and ``decode_steps_cold`` the others; ``cold_step_time`` prices those from it, and the
  simulator tells the two apart by the engine's own rules (``sim/lookahead.py``).
  With the profile's ``host_tail_s``, ``host_tail(plan) = step + per_prefill_token *
  prefill tokens + per_decode * D`` is the part of that time after the step's tokens are out (the
  scheduler's bookkeeping); the simulator emits the tokens that much before the step ends.
  Without ``graph_batch_sizes`` decode-only steps cost ``dense(B)``; without
  ``mixed_dense`` the other steps cost ``dense(T)``. Each table interpolated
  piecewise-linearly (flat below its first point, linearly extrapolated beyond
  its last); a term is 0 when its work is 0 (no prefill chunk, no decode) and an
  empty step costs 0.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from policies.types import StepPlan
from sim.decode_surface import DecodeSurface
from sim.profile import decode_steps_rows, read_profile, validate_profile, write_profile
from sim.roofline_cost import RooflineCostModel

__all__ = ["CostModel", "RooflineCostModel", "CalibratedCostModel", "write_profile"]


class CostModel(Protocol):
    """What the simulator needs from a step-time predictor.

    A cost model may also carry ``verify_group_rows`` (int): how many verification rows of one decode
    the priced engine attends together, which sets the draft context the scheduler counts
    (``SchedulerConfig.verify_group_rows``). ``simulate`` reads it when the scheduler config leaves
    it None, and takes 1 (every draft row reads its own context) when a cost model has none.
    It may also have ``host_tail``, a callable ``plan -> float`` or None: the seconds at the end of
    ``step_time(plan)`` that the host spends after the step's tokens are out; the simulator emits the
    tokens that much before the step ends (without one: at its end).
    A cost model whose prices read only a plan's aggregate fields and list lengths (not ``now`` or
    ``step_id``), and that keeps no reference to a plan, may say so with ``prices_by_aggregates = True``:
    the simulator then books stretches of repeated decode steps at once (``sim.decode_run``), pricing one
    plan object whose context it updates step by step (or calling the model's ``decode_pricer`` where it
    has one); without it every step is planned.
    """

    def step_time(self, plan: StepPlan) -> float:
        """Predicted duration of ``plan`` in seconds."""
        ...


class CalibratedCostModel:
    """Cost model interpolating a profile's timing tables (see the module docstring).

    Args:
        profile: a parsed profile (validated here).
        block_size: tokens per KV block (to price swaps).
        source: where the profile came from, for error messages.
    """

    prices_by_aggregates = True  # a function of the plan's aggregates (CostModel)

    def __init__(self, profile: dict[str, Any], block_size: int = 16, source: str = "<profile>") -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        tables = validate_profile(profile, source)
        self.meta: dict[str, Any] = dict(profile["meta"])
        self.step_overhead_s = float(profile["step_overhead_s"])
        self.swap_block_s = profile["kv_bytes_per_token"] * block_size / profile["swap_bytes_per_s"]
        self._dense, self._lm = tables["dense"], tables.get("lm_head")
        self._mixed = tables.get("mixed_dense", self._dense)
        self._pf, self._dec = tables["prefill_attention"], tables["decode_attention"]
        self._mixed_dec = tables.get("mixed_decode")
        self._pf_ctx = tables.get("prefill_context")  # seconds per cached token, by tokens per chunk
        self._draft_att = tables.get("draft_attention")
        #: verification rows the profiled engine attends together (``SchedulerConfig.verify_group_rows``)
        self.verify_group_rows = int(profile.get("verify_group_rows", 1))
        spec = profile.get("speculative_overhead_s")
        # (step, per_decode, per_draft) seconds of a step verifying drafts, or None: drafts priced as decodes
        self._spec: tuple[float, float, float] | None = (
            None if spec is None else (float(spec["step"]), float(spec["per_decode"]), float(spec["per_draft"])))
        tail = profile.get("host_tail_s")
        # (step, per_prefill_token, per_decode) seconds after a step's tokens are out, or None: no tail
        self._tail: tuple[float, float, float] | None = None if tail is None else (
            float(tail["step"]), float(tail["per_prefill_token"]), float(tail["per_decode"]))
        #: ``plan -> seconds`` after the step's tokens are out, or None (no tail: the simulator skips the call)
        self.host_tail: Callable[[StepPlan], float] | None = self._plan_tail if self._tail is not None else None
        self.graph_batch_sizes: list[int] = list(profile.get("graph_batch_sizes") or [])
        # Dense time of a graphed decode step of B sequences, by B (the graph's padded size).
        self._graph_dense = [0.0]
        for b in range(1, (self.graph_batch_sizes or [0])[-1] + 1):
            padded = self.graph_batch_sizes[bisect_left(self.graph_batch_sizes, b)]
            self._graph_dense.append(self._dense(padded))
        # A graphed decode-only step of B sequences without its attention: shape_time's first terms, in order.
        self._graph_base = [self.step_overhead_s + d for d in self._graph_dense]
        if self._lm is not None:
            self._graph_base = [base + self._lm(b) for b, base in enumerate(self._graph_base)]
        # Token counts of captured mixed steps (a step holding a prefill is padded to the next one).
        self.graph_token_sizes: list[int] = list(profile.get("graph_token_sizes") or [])
        measured = decode_steps_rows(profile.get("decode_steps"), source)
        # Decode-only steps up to its largest batch size, measured whole (None: priced by the tables).
        self._surface = None if measured is None else DecodeSurface(*measured, self.graph_batch_sizes)
        cold = decode_steps_rows(profile.get("decode_steps_cold"), source, "decode_steps_cold")
        # The same steps when no looked-ahead step serves them (a calibration with the decode lookahead).
        self._cold = None if cold is None else DecodeSurface(*cold, self.graph_batch_sizes)
        #: the largest decode step the profiled engine looks ahead (its largest graph), or None: the profile
        #: prices every step alike (no lookahead, or no ``decode_steps_cold``)
        self.lookahead_rows: int | None = (
            (self.graph_batch_sizes or [self._cold.max_batch])[-1] if self._cold is not None else None)
        # Per decode-row count B, ``ctx -> seconds`` of a plain decode-only step (None: ``shape_time``
        # prices it): the one place step_time, cold_step_time and decode_pricer choose a decode price.
        self._warm_prices = self._decode_prices(None)
        self._cold_prices = self._decode_prices(self._cold) if self._cold is not None else self._warm_prices

    @classmethod
    def from_file(cls, path: str | Path, block_size: int = 16) -> CalibratedCostModel:
        """Load a profile file; ``ProfileError`` names the file and field if it is malformed."""
        return cls(read_profile(path), block_size, str(path))

    def step_time(self, plan: StepPlan) -> float:
        """Predicted duration of ``plan`` in seconds."""
        nd = len(plan.decodes) + plan.num_draft_tokens  # decode rows: a verified draft is one more row
        if nd < len(self._warm_prices) and not (plan.prefills or plan.swap_in or plan.swap_out) \
                and (not plan.num_draft_tokens or self._spec is None):  # the hot case, a plain decode-only step
            price = self._warm_prices[nd]
            if price is not None:
                return price(plan.decode_ctx_tokens)
        return self.shape_time(plan.num_prefill_tokens, len(plan.prefills), nd,
                               plan.decode_ctx_tokens, plan.prefill_attn_pairs,
                               len(plan.swap_in) + len(plan.swap_out), plan.num_draft_tokens,
                               plan.draft_ctx_tokens, plan.prefill_ctx_tokens)

    def decode_pricer(self, num_decodes: int, cold: bool = False) -> Callable[[int], float] | None:
        """``ctx -> seconds`` of a plain decode-only step of ``num_decodes`` sequences reading ``ctx`` tokens.

        The same float as ``step_time`` (``cold``: ``cold_step_time``) of such a plan, for the simulator's
        runs of repeated decode steps (``sim.decode_run``), which price one step per call.

        Returns:
            The pricer, or None where such steps take ``shape_time``'s general path (price the plan).
        """
        prices = self._cold_prices if cold else self._warm_prices
        return prices[num_decodes] if 0 <= num_decodes < len(prices) else None

    def _decode_prices(self, cold: DecodeSurface | None) -> list[Callable[[int], float] | None]:
        """Per decode-row count B (index; 0: None), the price of a plain decode-only step: ``cold``'s where
        it covers B, else the measured decode steps' (``decode_steps``), else a graphed step's tables
        (``shape_time``'s terms in its order), else None."""
        surface = self._surface
        top = max(len(self._graph_dense) - 1, surface.max_batch if surface is not None else 0,
                  cold.max_batch if cold is not None else 0)
        prices: list[Callable[[int], float] | None] = [None]
        for b in range(1, top + 1):
            if cold is not None and cold.covers(b):
                prices.append(partial(cold, b))
            elif surface is not None and surface.covers(b):
                prices.append(partial(surface, b))
            elif b < len(self._graph_dense):
                prices.append(partial(_graphed_time, self._graph_base[b], self._dec))
            else:
                prices.append(None)
        return prices

    def cold_step_time(self, plan: StepPlan) -> float:
        """Predicted duration of ``plan`` when no looked-ahead step serves it (``sim/lookahead.py``).

        A plain decode-only step the profile's ``decode_steps_cold`` covers is priced from it; every
        other step (and every step of a profile without it) as ``step_time``.
        """
        nd = len(plan.decodes)
        if self._cold is not None and nd < len(self._cold_prices) and not (
                plan.prefills or plan.swap_in or plan.swap_out or plan.num_draft_tokens):
            price = self._cold_prices[nd]  # the served price where the cold table does not cover nd
            if price is not None:
                return price(plan.decode_ctx_tokens)
        return self.step_time(plan)

    def dropped_time(self, after: StepPlan) -> float:
        """What a dropped looked-ahead step adds to the plan that dropped it (``sim/lookahead.py``).

        The engine replayed the step after ``after`` (its sequences one token further) right behind it on
        the GPU, and the next plan's work queues behind that replay while the host books ``after`` and
        plans and stages the next step. The replay takes about a served step of ``after``'s shape (GPU
        time); ``step_overhead_s``, the profile's per-step host share, is the part taken as hidden.

        Returns:
            ``max(0, step_time(after) - step_overhead_s)``.
        """
        return max(0.0, self.step_time(after) - self.step_overhead_s)

    def _plan_tail(self, plan: StepPlan) -> float:  # tail_time of the plan, inline (called once per step)
        step, per_token, per_decode = self._tail  # type: ignore[misc]
        return step + per_token * plan.num_prefill_tokens + per_decode * (len(plan.decodes) + plan.num_draft_tokens)

    def tail_time(self, prefill_tokens: float, decodes: float) -> float:
        """``host_tail`` from a step's aggregates (0 without ``host_tail_s`` in the profile)."""
        if self._tail is None:
            return 0.0
        step, per_token, per_decode = self._tail
        return step + per_token * prefill_tokens + per_decode * decodes

    def shape_time(self, prefill_tokens: float, prefills: float, decodes: float, decode_ctx_tokens: float,
                   prefill_attn_pairs: float, swapped_blocks: float = 0, draft_tokens: float = 0,
                   draft_ctx_tokens: float = 0, prefill_ctx_tokens: float | None = None) -> float:
        """Predicted duration of a step from its aggregates (the columns of a step log).

        Args:
            prefill_tokens: tokens of all prefill chunks.
            prefills: number of prefill chunks.
            decodes: number of decode rows (decoding sequences plus the draft tokens they verify).
            decode_ctx_tokens: context tokens the decodes read, in all.
            prefill_attn_pairs: causal (query, key) pairs of the chunks.
            swapped_blocks: KV blocks swapped in or out.
            draft_tokens: draft tokens verified (counted in ``decodes`` too).
            draft_ctx_tokens: the draft rows' part of ``decode_ctx_tokens``.
            prefill_ctx_tokens: cached prefix tokens the chunks read, in all (None, as in step logs
                without that column: derived from the pairs for one chunk, else taken as 0).

        Returns:
            Seconds.
        """
        nd, tp = int(decodes), prefill_tokens
        if not (tp or swapped_blocks) and (not draft_tokens or self._spec is None) and self._surface is not None \
                and self._surface.covers(nd):
            return self._surface(nd, decode_ctx_tokens)
        swap = swapped_blocks * self.swap_block_s
        if nd + tp == 0:
            return self.step_overhead_s + swap if swapped_blocks else 0.0
        if tp == 0 and nd < len(self._graph_dense):
            total = self.step_overhead_s + self._graph_dense[nd]
        elif tp == 0 and self.graph_batch_sizes:  # past the largest graph: it replays on chunks of the rows
            full, rest = divmod(nd, self.graph_batch_sizes[-1])
            total = self.step_overhead_s + full * self._graph_dense[-1] + (self._graph_dense[rest] if rest else 0.0)
        elif tp == 0:  # an engine without graphs: decodes as calibrated
            total = self.step_overhead_s + self._dense(nd)
        else:
            tokens = tp + nd
            if tp and self.graph_token_sizes and tokens <= self.graph_token_sizes[-1]:
                tokens = self.graph_token_sizes[bisect_left(self.graph_token_sizes, tokens)]
            total = self.step_overhead_s + self._mixed(tokens)
        if self._lm is not None:
            total += self._lm(nd + prefills)
        if tp and self._pf_ctx is not None and prefills:
            per_chunk = tp / prefills
            if prefill_ctx_tokens is None:  # one chunk: pairs = T * C + T (T + 1) / 2
                prefill_ctx_tokens = max(0.0, prefill_attn_pairs / tp - (tp + 1) / 2) if prefills == 1 else 0.0
            total += (self._pf(max(0.0, prefill_attn_pairs - per_chunk * prefill_ctx_tokens))
                      + self._pf_ctx(per_chunk) * prefill_ctx_tokens)
        elif tp:
            total += self._pf(prefill_attn_pairs)
        if nd:
            if draft_tokens and self._spec is not None:
                assert self._draft_att is not None  # validate_profile: given together with _spec
                step, per_decode, per_draft = self._spec
                total += (self._dec(decode_ctx_tokens - draft_ctx_tokens) + self._draft_att(draft_ctx_tokens)
                          + step + per_decode * (nd - draft_tokens) + per_draft * draft_tokens)
            else:
                total += self._dec(decode_ctx_tokens)
            if tp and self._mixed_dec is not None:
                total += self._mixed_dec(nd)
        return total + swap


def _graphed_time(base: float, decode_attention: Callable[[float], float], ctx: int) -> float:
    """A graphed decode-only step: its base (overhead, dense, LM head) plus its attention, in that order."""
    return base + decode_attention(ctx)
