"""Seeded synthetic workloads: arrivals, lengths and shared prompt content.

A :class:`SyntheticConfig` fully determines the trace: :func:`generate` draws arrivals, lengths and
workload structure from three independent streams spawned from ``seed`` (so changing a length
distribution does not move the arrivals).

Workloads:

- ``plain``: unique prompts; length-only requests (no block hashes), ids ``"0"``, ``"1"``, ...
- ``shared_prefix``: ``groups`` system prompts of ``prefix_len`` tokens; each request picks a group
  uniformly at random, its prompt is the group's prefix followed by a unique suffix whose length is
  drawn from ``in_len``. Ids ``"0"``, ``"1"``, ...
- ``multiturn``: conversations of ``turns`` turns. Turn 1's prompt is a user message (length from
  ``in_len``); turn k+1's prompt is turn k's prompt + turn k's output + a new user message. Turn k+1
  arrives ``think`` seconds after turn k, ``think`` exponential of mean ``think_s`` (an approximation
  of "after the previous reply finished, plus reading and typing time": choose ``think_s`` above the
  typical response time). Conversation starts follow the arrival process at ``rate / turns`` per
  second, so the overall request rate is about ``rate``. ``ceil(n / turns)`` conversations are drawn
  and the last is cut to give exactly ``n`` requests. Ids ``"c<conversation>-t<turn>"``.

Shared content is described by ``block_hashes`` with ``hash_block_size = 16``: equal ids for shared
content, fresh ids for unique content, so a 10k-request trace stays small (no token ids). Sharing is
tracked at 16-token granularity: a shared prefix's partial last block (``prefix_len % 16`` tokens) is
mixed with the request's own suffix, so that block gets a fresh id and only the first
``16 * (prefix_len // 16)`` tokens are shared. In a multi-turn conversation the new prompt starts with
exactly the previous prompt's ids (including its partial tail block, whose remaining tokens are the
previous reply) followed by fresh ids. The result is sorted by arrival (stable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from policies.types import Request
from traces.distributions import LengthDist, LogNormalLen, gamma_arrivals, poisson_arrivals

HASH_BLOCK_SIZE = 16
ARRIVALS: tuple[str, ...] = ("poisson", "gamma")
WORKLOADS: tuple[str, ...] = ("plain", "shared_prefix", "multiturn")

# Chat-like defaults: mean and coefficient of variation of the Azure LLM inference 2023
# conversation trace (19,366 requests: prompt mean 1155, cv 0.96; output mean 211, cv 0.77).
DEFAULT_IN_LEN = LogNormalLen(mean=1155, cv=0.96, max=16384)
DEFAULT_OUT_LEN = LogNormalLen(mean=211, cv=0.77, max=2048)


@dataclass(frozen=True)
class SyntheticConfig:
    """A synthetic trace.

    Args:
        arrival: ``"poisson"`` or ``"gamma"``.
        rate: mean request rate (requests/s).
        n: number of requests.
        seed: seed of all random draws.
        cv: coefficient of variation of gamma inter-arrival gaps (1 = Poisson, default 2 = bursty);
            ignored for Poisson arrivals.
        in_len: prompt length distribution (the unique suffix for ``shared_prefix``, the new user
            message per turn for ``multiturn``).
        out_len: output length distribution.
        workload: ``"plain"``, ``"shared_prefix"`` or ``"multiturn"``.
        groups: number of shared prefixes (``shared_prefix``).
        prefix_len: tokens of each shared prefix (``shared_prefix``).
        turns: turns per conversation (``multiturn``).
        think_s: mean gap in seconds between a turn's arrival and the next (``multiturn``).
    """

    arrival: str = "poisson"
    rate: float = 20.0
    n: int = 1000
    seed: int = 0
    cv: float = 2.0
    in_len: LengthDist = field(default=DEFAULT_IN_LEN)
    out_len: LengthDist = field(default=DEFAULT_OUT_LEN)
    workload: str = "plain"
    groups: int = 8
    prefix_len: int = 512
    turns: int = 4
    think_s: float = 20.0

    def __post_init__(self) -> None:
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {ARRIVALS}, got {self.arrival!r}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a finite number > 0 (requests per second), got {self.rate}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise ValueError(f"cv must be a finite number > 0, got {self.cv}")
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {WORKLOADS}, got {self.workload!r}")
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {self.groups}")
        if self.prefix_len < 1:
            raise ValueError(f"prefix_len must be >= 1, got {self.prefix_len}")
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")
        if not (math.isfinite(self.think_s) and self.think_s >= 0):
            raise ValueError(f"think_s must be a finite number >= 0, got {self.think_s}")


def generate(config: SyntheticConfig) -> list[Request]:
    """Generate the requests of a synthetic trace (deterministic for a given config).

    Returns:
        ``config.n`` requests sorted by arrival (stable).
    """
    arrival_seq, length_seq, workload_seq = np.random.SeedSequence(config.seed).spawn(3)
    arrival_rng = np.random.default_rng(arrival_seq)
    length_rng = np.random.default_rng(length_seq)
    workload_rng = np.random.default_rng(workload_seq)
    if config.workload == "multiturn":
        requests = _multiturn(config, arrival_rng, length_rng, workload_rng)
    else:
        arrivals = _arrivals(config, arrival_rng, config.rate, config.n)
        in_lens = config.in_len.sample(length_rng, config.n)
        out_lens = config.out_len.sample(length_rng, config.n)
        if config.workload == "plain":
            requests = [
                Request(str(i), a, p, o)
                for i, (a, p, o) in enumerate(
                    zip(arrivals.tolist(), in_lens.tolist(), out_lens.tolist(), strict=True)
                )
            ]
        else:
            requests = _shared_prefix(config, arrivals, in_lens, out_lens, workload_rng)
    requests.sort(key=lambda r: r.arrival_s)  # list.sort is stable
    return requests


def _arrivals(config: SyntheticConfig, rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
    if config.arrival == "gamma":
        return gamma_arrivals(rng, rate, config.cv, n)
    return poisson_arrivals(rng, rate, n)


def _num_blocks(length: int) -> int:
    return -(-length // HASH_BLOCK_SIZE)


def _shared_prefix(
    config: SyntheticConfig,
    arrivals: np.ndarray,
    suffix_lens: np.ndarray,
    out_lens: np.ndarray,
    rng: np.random.Generator,
) -> list[Request]:
    full = config.prefix_len // HASH_BLOCK_SIZE  # blocks made only of prefix tokens: shared
    # Ids [g * full, (g + 1) * full) name group g's shared blocks; fresh ids follow.
    prefixes = [tuple(range(g * full, (g + 1) * full)) for g in range(config.groups)]
    next_id = config.groups * full
    group_of = rng.integers(config.groups, size=config.n)
    requests = []
    for i, (a, s, o, g) in enumerate(
        zip(arrivals.tolist(), suffix_lens.tolist(), out_lens.tolist(), group_of.tolist(), strict=True)
    ):
        length = config.prefix_len + s
        fresh = _num_blocks(length) - full
        hashes = prefixes[g] + tuple(range(next_id, next_id + fresh))
        next_id += fresh
        requests.append(Request(str(i), a, length, o, block_hashes=hashes, hash_block_size=HASH_BLOCK_SIZE))
    return requests


def _multiturn(
    config: SyntheticConfig,
    arrival_rng: np.random.Generator,
    length_rng: np.random.Generator,
    workload_rng: np.random.Generator,
) -> list[Request]:
    turns = config.turns
    convs = -(-config.n // turns)
    starts = _arrivals(config, arrival_rng, config.rate / turns, convs).tolist()
    msg_lens = config.in_len.sample(length_rng, convs * turns).reshape(convs, turns).tolist()
    out_lens = config.out_len.sample(length_rng, convs * turns).reshape(convs, turns).tolist()
    thinks = workload_rng.exponential(config.think_s, size=(convs, max(turns - 1, 0))).tolist()
    requests: list[Request] = []
    next_id = 0
    for c in range(convs):
        arrival, length, hashes = starts[c], 0, ()
        for k in range(turns):
            if len(requests) == config.n:
                return requests
            if k > 0:
                arrival += thinks[c][k - 1]
                length += out_lens[c][k - 1]  # the previous reply joins the context
            length += msg_lens[c][k]
            # The new prompt extends the previous one: keep its ids (the partial tail block
            # continues with the previous reply), then fresh ids for the blocks beyond.
            fresh = _num_blocks(length) - len(hashes)
            hashes = hashes + tuple(range(next_id, next_id + fresh))
            next_id += fresh
            requests.append(
                Request(
                    f"c{c}-t{k}",
                    arrival,
                    length,
                    out_lens[c][k],
                    block_hashes=hashes,
                    hash_block_size=HASH_BLOCK_SIZE,
                )
            )
    return requests
