"""Shared types of the step contract, used by traces/, policies/, sim/ and engine/.

Pure Python, no torch and no clock: the simulator and the engine both import
this module, and neither imports the other.

The contract (DESIGN.md)::

    plan = scheduler.schedule(now)          # StepPlan
    result = executor.execute(plan)         # StepResult
    scheduler.postprocess(plan, result)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from policies.sequence import Sequence


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How the next token is chosen, and when generation stops.

    Args:
        temperature: 0 means greedy.
        top_p: nucleus sampling mass, in (0, 1].
        top_k: keep the k most likely tokens; 0 disables.
        seed: per-request seed, for reproducible sampling.
        ignore_eos: generate exactly the request's output length (trace replay).
        stop_token_ids: tokens that end generation unless ``ignore_eos``.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = True
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")


GREEDY_REPLAY = SamplingParams()


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace: what arrives, when, and how much it asks for.

    The prompt is given either as token ids, or as a length plus per-block
    content hashes (``block_hashes[i]`` names the content of prompt tokens
    ``[i * hash_block_size, (i + 1) * hash_block_size)``; equal hashes mean
    identical, reusable prefix blocks), or as a length alone (unique content).

    Args:
        id: unique request id.
        arrival_s: arrival time in seconds from the start of the trace.
        prompt_len: number of prompt tokens (>= 1).
        output_len: number of tokens to generate (>= 1; replay ignores EOS).
        prompt_token_ids: the prompt's token ids, if known.
        block_hashes: content ids of the prompt's blocks, if known.
        hash_block_size: tokens per entry of ``block_hashes``.
        sampling: sampling parameters.
        priority: larger means more important (used by priority-aware policies).
    """

    id: str
    arrival_s: float
    prompt_len: int
    output_len: int
    prompt_token_ids: tuple[int, ...] | None = None
    block_hashes: tuple[int, ...] | None = None
    hash_block_size: int = 0
    sampling: SamplingParams = GREEDY_REPLAY
    priority: int = 0

    def __post_init__(self) -> None:
        where = f"request {self.id!r}"
        if not (math.isfinite(self.arrival_s) and self.arrival_s >= 0):
            raise ValueError(f"{where}: arrival_s must be a finite number >= 0, got {self.arrival_s}")
        if self.prompt_len < 1:
            raise ValueError(f"{where}: prompt_len must be >= 1, got {self.prompt_len}")
        if self.output_len < 1:
            raise ValueError(f"{where}: output_len must be >= 1, got {self.output_len}")
        if self.prompt_token_ids is not None and len(self.prompt_token_ids) != self.prompt_len:
            raise ValueError(
                f"{where}: prompt_token_ids has {len(self.prompt_token_ids)} tokens "
                f"but prompt_len is {self.prompt_len}"
            )
        if self.block_hashes is not None:
            if self.hash_block_size < 1:
                raise ValueError(f"{where}: block_hashes needs hash_block_size >= 1")
            if len(self.block_hashes) * self.hash_block_size < self.prompt_len:
                raise ValueError(
                    f"{where}: {len(self.block_hashes)} block hashes of {self.hash_block_size} "
                    f"tokens do not cover the prompt of {self.prompt_len} tokens"
                )

    def block_contents(self, block_size: int) -> list[tuple[int, ...]]:
        """Content keys of the prompt's full KV blocks of ``block_size`` tokens.

        Two requests get equal keys for block ``i`` exactly when their prompt
        tokens ``[i * block_size, (i + 1) * block_size)`` are identical (token
        ids), or come from the same trace hashes at the same offsets. A
        length-only request has no reusable content and gets no keys.

        Returns:
            One tuple per full prompt block (the partial tail block is never cached).
        """
        num_full = self.prompt_len // block_size
        if self.prompt_token_ids is not None:
            ids = self.prompt_token_ids
            return [ids[i * block_size : (i + 1) * block_size] for i in range(num_full)]
        if self.block_hashes is None:
            return []
        hashes, hsize = self.block_hashes, self.hash_block_size
        keys: list[tuple[int, ...]] = []
        for i in range(num_full):
            # -1 tags hash-derived content so it never equals token-id content (ids >= 0).
            parts: list[int] = [-1]
            pos, end = i * block_size, (i + 1) * block_size
            while pos < end:
                b = pos // hsize
                stop = min(end, (b + 1) * hsize)
                parts += (hashes[b], pos - b * hsize, stop - b * hsize)
                pos = stop
            keys.append(tuple(parts))
        return keys


@dataclass(slots=True)
class PrefillChunk:
    """A slice of a sequence's uncomputed tokens scheduled in one step.

    Tokens ``[start, start + num_tokens)`` of the sequence (prompt, then any
    tokens generated before a recompute preemption) are computed, attending to
    the ``start`` tokens already in its KV blocks.
    """

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the sequence and so emits a token."""
        return self.start + self.num_tokens == self.seq.total_len


@dataclass(slots=True)
class StepPlan:
    """What one iteration runs: the scheduler's output, the executor's input.

    ``decodes`` each compute one token at position ``seq.num_computed`` (read
    it before ``postprocess``) and sample the next. With speculative decoding,
    ``draft_lens`` (empty otherwise) runs parallel to ``decodes``: decode ``i``
    also verifies ``draft_lens[i]`` draft tokens that the executor proposes, at
    the positions after it (their KV blocks are allocated), and may emit up to
    ``draft_lens[i] + 1`` tokens. Block tables are
    ``seq.block_table``. Swaps are ``(src, dst)`` block-id pairs; the executor
    performs ``swap_out`` (device to host) before ``swap_in`` (host to device)
    and both before the forward pass. The aggregate fields summarise the step
    for cost models, computed once by the scheduler.
    """

    step_id: int
    now: float
    prefills: list[PrefillChunk] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)
    num_prefill_tokens: int = 0
    prefill_ctx_tokens: int = 0  # sum over chunks of cached context read (chunk.start)
    prefill_attn_pairs: int = 0  # sum over chunks of causal (query, key) pairs
    # Sum over decode rows (each decode and each of its draft tokens) of the context the row reads,
    # its own token included.
    decode_ctx_tokens: int = 0
    draft_lens: list[int] = field(default_factory=list)
    num_draft_tokens: int = 0  # sum of draft_lens
    draft_ctx_tokens: int = 0  # the draft rows' part of decode_ctx_tokens (speculation.group_reads)

    @property
    def num_decodes(self) -> int:
        return len(self.decodes)

    @property
    def num_decode_rows(self) -> int:
        """Single-query attention rows: one per decode plus one per draft token it verifies."""
        return len(self.decodes) + self.num_draft_tokens

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step (prefill chunk tokens plus the decode rows)."""
        return self.num_prefill_tokens + len(self.decodes) + self.num_draft_tokens

    @property
    def is_empty(self) -> bool:
        return not (self.prefills or self.decodes or self.swap_out or self.swap_in)


@dataclass(slots=True)
class StepResult:
    """What executing a plan produced.

    Args:
        duration_s: the step's duration (predicted in the simulator, measured
            on the engine).
        token_ids: new token ids per sampling sequence id (a list: speculative
            decoding may accept several). ``None`` means one token of unknown
            id for every sequence that samples, which is all a simulator knows.
        accepted: with ``token_ids`` None and a plan holding draft tokens, the
            number of draft tokens accepted per decode (parallel to
            ``plan.decodes``): decode ``i`` emits ``accepted[i] + 1`` tokens.
    """

    duration_s: float
    token_ids: dict[str, list[int]] | None = None
    accepted: list[int] | None = None
