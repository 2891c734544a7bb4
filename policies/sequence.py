"""Per-request state owned by the scheduler, and the per-request result record."""

from __future__ import annotations

import enum
from typing import Any

from policies.types import Request


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # not yet admitted, or preempted by recompute
    RUNNING = "running"  # admitted: holds KV blocks on the device
    SWAPPED = "swapped"  # preempted by swap: its KV lives in host blocks
    FINISHED = "finished"


class Sequence:
    """A request in flight: how much is computed, what was generated, and when.

    Token positions count the prompt, then generated tokens. ``num_computed``
    tokens have their KV in ``block_table``; the tokens in
    ``[num_computed, total_len)`` still need a forward pass, and the step that
    computes the last of them samples a new token. After a recompute
    preemption ``num_computed`` drops to 0 and prompt plus generated tokens are
    prefilled again.
    """

    __slots__ = (
        "request", "seq_id", "prompt_len", "output_len", "total_len", "status", "num_computed",
        "num_generated", "output_ids", "block_table", "block_keys",
        "first_scheduled_s", "first_token_s", "finish_s", "token_times",
        "num_preemptions", "num_cached_tokens", "num_prompt_lookups",
        "last_admitted_s", "finish_reason", "num_draft_tokens", "num_accepted_tokens", "num_rejections",
    )

    def __init__(self, request: Request) -> None:
        self.request = request
        self.seq_id = request.id
        self.prompt_len = request.prompt_len
        self.output_len = request.output_len
        self.status = SeqStatus.WAITING
        self.num_computed = 0
        self.num_generated = 0
        self.total_len = self.prompt_len  # prompt plus generated tokens (kept in step by the scheduler)
        self.output_ids: list[int] = []
        self.block_table: list[int] = []
        # Chained content keys of the full prompt blocks, built lazily by the
        # scheduler at the first prefix lookup and dropped when the sequence finishes.
        self.block_keys: list[tuple] | None = None
        self.first_scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.finish_s: float | None = None
        self.token_times: list[float] = []
        self.num_preemptions = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache (all admissions)
        self.num_prompt_lookups = 0  # prompt tokens looked up in the prefix cache (all admissions)
        self.last_admitted_s: float | None = None
        # Why it finished, set by the scheduler: "stop" (a stop token), "length" (its output
        # length) or "abort" (``Scheduler.abort_request``); None while in flight.
        self.finish_reason: str | None = None
        # Speculative decoding: draft tokens verified, accepted, and verifications that rejected one.
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.num_rejections = 0

    @property
    def token_ids(self) -> list[int]:
        """Prompt and generated token ids (engine requests only)."""
        ids = self.request.prompt_token_ids
        if ids is None:
            raise ValueError(f"request {self.seq_id!r} has no prompt token ids")
        return [*ids, *self.output_ids]

    def emit(self, t: float, tokens: list[int] | None, n: int = 1) -> bool:
        """Book new tokens at time ``t``: ``tokens`` (the executor's ids, cut at the output length and
        after a stop token, whose ``finish_reason`` is then "stop"), or ``n`` tokens of unknown id (the
        simulator). The scheduler calls this; it advances ``num_computed`` itself.

        Returns:
            Whether the sequence is now finished.
        """
        if self.first_token_s is None:
            self.first_token_s = t
        if tokens is None:
            self.num_generated += n
            self.total_len += n
            self.token_times.extend([t] * n)
            return self.num_generated >= self.output_len
        tokens = tokens[: self.output_len - self.num_generated]
        sp = self.request.sampling
        stopped = False
        if not sp.ignore_eos and sp.stop_token_ids:
            for j, tok in enumerate(tokens):
                if tok in sp.stop_token_ids:  # tokens after a stop token (accepted drafts) are dropped
                    tokens, stopped = tokens[: j + 1], True
                    break
        self.output_ids.extend(tokens)
        self.num_generated += len(tokens)
        self.total_len += len(tokens)
        self.token_times.extend([t] * len(tokens))
        if stopped:
            self.finish_reason = "stop"
        return stopped or self.num_generated >= self.output_len

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def record(self) -> dict[str, Any]:
        """The per-request result row (same columns in the simulator and the engine)."""
        r = self.request
        first, fin = self.first_token_s, self.finish_s
        ttft = None if first is None else first - r.arrival_s
        e2e = None if fin is None else fin - r.arrival_s
        tpot = None
        if first is not None and fin is not None and self.num_generated > 1:
            tpot = (fin - first) / (self.num_generated - 1)
        return {
            "request_id": r.id,
            "arrival_s": r.arrival_s,
            "prompt_len": r.prompt_len,
            "output_len": self.num_generated,
            "priority": r.priority,
            "first_scheduled_s": self.first_scheduled_s,
            "first_token_s": first,
            "finish_s": fin,
            "ttft_s": ttft,
            "tpot_s": tpot,
            "e2e_s": e2e,
            "num_preemptions": self.num_preemptions,
            "cached_prompt_tokens": self.num_cached_tokens,
            "looked_up_prompt_tokens": self.num_prompt_lookups,
            "draft_tokens": self.num_draft_tokens,
            "accepted_draft_tokens": self.num_accepted_tokens,
            "draft_rejections": self.num_rejections,
            "token_times": list(self.token_times),
        }

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id!r}, {self.status.value}, computed={self.num_computed}, "
            f"generated={self.num_generated}/{self.output_len})"
        )
