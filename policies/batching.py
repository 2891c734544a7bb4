"""Batching policies: which waiting requests join the batch, in what order.

The ``Scheduler`` owns the mechanics (KV blocks, preemption, bookkeeping); a
policy is a strategy object answering three questions each step:

* ``may_admit(now, view)``: may new requests join now? (static: only when idle)
* ``order(waiting, now, view)``: in which order are waiting requests tried?
* ``next_wake(now, view)``: when should an idle loop wake up to re-ask?

plus its limits: ``max_num_seqs``, ``token_budget`` (tokens computed per step)
and ``chunked_prefill``. Policies are frozen dataclasses (their parameters are
their config); a new policy is one class plus one line in ``POLICIES``.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

from policies.registry import build
from policies.sequence import Sequence


class SchedulerView(Protocol):
    """The read-only scheduler state a policy may consult."""

    @property
    def num_running(self) -> int: ...
    @property
    def num_swapped(self) -> int: ...
    def cached_prefix_tokens(self, seq: Sequence) -> int: ...


@dataclass(frozen=True)
class BatchingPolicy:
    """Base policy: continuous admission in arrival order (FCFS).

    Args:
        max_num_seqs: most sequences running at once.
        token_budget: most tokens computed in one step (prefill chunks + decodes).
        chunked_prefill: split long prompts across steps to fit the budget.
    """

    max_num_seqs: int = 256
    token_budget: int = 8192
    chunked_prefill: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.max_num_seqs < 1:
            raise ValueError(f"{name}: max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.token_budget < 1:
            raise ValueError(f"{name}: token_budget must be >= 1, got {self.token_budget}")

    def may_admit(self, now: float, waiting: Seq[Sequence], view: SchedulerView) -> bool:
        """Whether waiting requests may join the running batch this step."""
        return True

    def order(self, waiting: Seq[Sequence], now: float, view: SchedulerView) -> Iterable[Sequence]:
        """Waiting sequences in the order admission tries them (default: as queued)."""
        return waiting

    def next_wake(self, now: float, waiting: Seq[Sequence], view: SchedulerView) -> float | None:
        """When an idle engine with waiting requests should ask again (None: on the next arrival)."""
        return None


@dataclass(frozen=True)
class ContinuousBatching(BatchingPolicy):
    """Iteration-level batching (Orca/vLLM): a finished sequence's slot is refilled
    at the very next step; long prompts are prefilled in chunks within the token
    budget, decodes first so running sequences never stall.

    Args:
        max_num_seqs: most sequences running at once.
        token_budget: most tokens per step.
        chunked_prefill: split prompts to fill the budget.
    """

    token_budget: int = 2048


@dataclass(frozen=True)
class StaticBatching(BatchingPolicy):
    """Request-level batching: when the engine is idle, take up to ``batch_size``
    waiting requests and run them to completion; nobody joins mid-batch.

    Args:
        batch_size: most requests per batch.
        token_budget: most prompt tokens prefilled together (the batch is those
            that fit in the first step).
    """

    max_num_seqs: int = 32
    token_budget: int = 65536
    chunked_prefill: bool = False

    def may_admit(self, now: float, waiting: Seq[Sequence], view: SchedulerView) -> bool:
        return view.num_running == 0 and view.num_swapped == 0


@dataclass(frozen=True)
class DynamicBatching(StaticBatching):
    """Static batching that waits for a full batch, or until the oldest waiting
    request has waited ``max_wait_s``, before forming one.

    Args:
        max_num_seqs: the batch size that triggers a batch.
        max_wait_s: longest a request waits for its batch to fill.
    """

    max_wait_s: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.max_wait_s >= 0:
            raise ValueError(f"DynamicBatching: max_wait_s must be >= 0, got {self.max_wait_s}")

    def may_admit(self, now: float, waiting: Seq[Sequence], view: SchedulerView) -> bool:
        if not super().may_admit(now, waiting, view) or not waiting:
            return False
        # Same expression as next_wake, so waking at that time always admits (no float drift).
        return len(waiting) >= self.max_num_seqs or now >= waiting[0].request.arrival_s + self.max_wait_s

    def next_wake(self, now: float, waiting: Seq[Sequence], view: SchedulerView) -> float | None:
        return waiting[0].request.arrival_s + self.max_wait_s if waiting else None


@dataclass(frozen=True)
class PrefixAwareBatching(ContinuousBatching):
    """Continuous batching that admits first the waiting requests with the most
    prompt tokens already in the prefix cache (less work, and their cached blocks
    are pinned before eviction can take them). Starvation guard: requests that
    waited ``max_wait_s`` or more go first, oldest first.

    Args:
        max_wait_s: waiting time after which a request is admitted in arrival order.
        window: only the first ``window`` waiting requests are reordered (bounds the cost).
    """

    max_wait_s: float = 2.0
    window: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.max_wait_s >= 0:
            raise ValueError(f"PrefixAwareBatching: max_wait_s must be >= 0, got {self.max_wait_s}")
        if self.window < 1:
            raise ValueError(f"PrefixAwareBatching: window must be >= 1, got {self.window}")

    def order(self, waiting: Seq[Sequence], now: float, view: SchedulerView) -> Iterable[Sequence]:
        head = list(islice(waiting, self.window))
        starved = [s for s in head if now - s.request.arrival_s >= self.max_wait_s]
        rest = [s for s in head if now - s.request.arrival_s < self.max_wait_s]
        # Stable sort: equal matches keep arrival order.
        rest.sort(key=lambda s: -view.cached_prefix_tokens(s))
        return [*starved, *rest, *islice(waiting, self.window, None)]


POLICIES: dict[str, type[BatchingPolicy]] = {
    "static": StaticBatching,
    "dynamic": DynamicBatching,
    "continuous": ContinuousBatching,
    "prefix-aware": PrefixAwareBatching,
}


def make_policy(name: str, **params: object) -> BatchingPolicy:
    """Build a batching policy by registered name.

    Args:
        name: a key of ``POLICIES``.
        **params: the policy's dataclass fields (e.g. ``max_num_seqs=64``).

    Returns:
        The policy instance.

    Raises:
        ValueError: unknown name or parameter, or an invalid value.
    """
    return build("policy", POLICIES, name, params)
