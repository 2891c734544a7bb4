"""Speculation policies: how many draft tokens each decoding sequence verifies this step.

Speculative decoding lets a decode step verify ``k`` proposed tokens at once: the
executor proposes them (an n-gram lookup or a draft model on the engine; nothing in
the simulator, which draws how many would be accepted), the target model scores all
``k + 1`` positions in one forward pass, and the longest accepted prefix plus one
token from the target is emitted. The verification is lossless (the output
distribution is the target's), so ``k`` only trades compute for steps: that trade is
the policy's, and it is the same object in the simulator and on the engine.

A policy answers one question per step, ``draft_lens(decodes, view)``, from what is
known without a clock: the batch, and each sequence's acceptance history
(``Sequence.num_draft_tokens``, ``num_accepted_tokens``, ``num_rejections``). The
scheduler caps each answer (never past the sequence's output length, within the
token budget, only with free KV blocks: speculation never preempts). A new policy
is one class plus one line in ``SPECULATION_POLICIES``.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

from policies.block_manager import BlockManager
from policies.registry import build
from policies.sequence import Sequence
from policies.types import StepPlan, StepResult


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one verification of ``k`` drafts emits on average when each draft is accepted with
    probability ``alpha`` independently, given all before it were: ``1 + alpha + ... + alpha^k``.

    Args:
        alpha: per-token acceptance probability in [0, 1].
        k: draft tokens (>= 0).
    """
    return float(k + 1) if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass(frozen=True)
class SpeculationPolicy:
    """Fixed speculation: every decode verifies ``num_draft_tokens`` drafts.

    Args:
        num_draft_tokens: draft tokens per decode and step (the most any policy proposes).
    """

    num_draft_tokens: int = 4

    def __post_init__(self) -> None:
        if self.num_draft_tokens < 1:
            raise ValueError(f"{type(self).__name__}: num_draft_tokens must be >= 1, got {self.num_draft_tokens}")

    def draft_lens(self, decodes: Seq[Sequence], view: object) -> list[int]:
        """Draft tokens wanted for each decode of this step (0: a plain decode).

        Args:
            decodes: the step's decoding sequences, in plan order.
            view: the scheduler (read-only; ``policies.batching.SchedulerView``).

        Returns:
            One count per decode, each in ``[0, num_draft_tokens]``.
        """
        return [self.num_draft_tokens] * len(decodes)


@dataclass(frozen=True)
class BatchAwareSpeculation(SpeculationPolicy):
    """Speculate only while the decode batch is small: at large batches a step is no longer
    bound by reading the weights, so verifying extra rows costs real compute (the rule
    behind vLLM's speculation switch-off by batch size).

    Args:
        num_draft_tokens: drafts per decode while speculating.
        max_batch: speculate only in steps of at most this many decodes.
    """

    max_batch: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_batch < 1:
            raise ValueError(f"BatchAwareSpeculation: max_batch must be >= 1, got {self.max_batch}")

    def draft_lens(self, decodes: Seq[Sequence], view: object) -> list[int]:
        k = self.num_draft_tokens if len(decodes) <= self.max_batch else 0
        return [k] * len(decodes)


@dataclass(frozen=True)
class AdaptiveSpeculation(SpeculationPolicy):
    """Per-sequence draft length from its own acceptance history.

    Each sequence's per-token acceptance probability is estimated as
    ``(accepted + prior_accepted) / (accepted + rejections + prior_accepted + prior_rejected)``
    (a Beta prior; a verification of ``k`` drafts that accepts ``a < k`` is ``a`` successes
    and one failure, the maximum-likelihood count of the geometric acceptance model). The
    policy picks the ``k`` in ``0..num_draft_tokens`` that maximises emitted tokens per unit
    of step cost, ``expected_tokens(alpha, k) / (1 + row_cost * k)``, where ``row_cost`` is
    the cost of one extra verified row relative to a plain decode step.

    Args:
        num_draft_tokens: most drafts per decode.
        row_cost: relative cost of one draft row (0.05: a memory-bound small batch).
        prior_accepted, prior_rejected: pseudo-counts of the prior (mean 0.5 by default).
    """

    row_cost: float = 0.05
    prior_accepted: float = 1.0
    prior_rejected: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.row_cost >= 0:
            raise ValueError(f"AdaptiveSpeculation: row_cost must be >= 0, got {self.row_cost}")
        if not (self.prior_accepted > 0 and self.prior_rejected > 0):
            raise ValueError("AdaptiveSpeculation: prior_accepted and prior_rejected must be > 0, got "
                             f"{self.prior_accepted}, {self.prior_rejected}")

    def alpha(self, seq: Sequence) -> float:
        """The posterior-mean acceptance probability of ``seq``."""
        ok = seq.num_accepted_tokens + self.prior_accepted
        return ok / (ok + seq.num_rejections + self.prior_rejected)

    def best_k(self, alpha: float) -> int:
        """The draft length maximising tokens per cost at acceptance ``alpha`` (ties: the shorter)."""
        best, best_rate = 0, 1.0
        for k in range(1, self.num_draft_tokens + 1):
            rate = expected_tokens(alpha, k) / (1.0 + self.row_cost * k)
            if rate > best_rate + 1e-12:
                best, best_rate = k, rate
        return best

    def draft_lens(self, decodes: Seq[Sequence], view: object) -> list[int]:
        return [self.best_k(self.alpha(s)) for s in decodes]


def group_reads(ctx: int, drafts: int, group_rows: int) -> int:
    """Context tokens a decode's verification rows read beyond the decode's own ``ctx`` keys.

    Row ``j`` (0: the decode, 1..``drafts``: its drafts) sees ``ctx + j`` keys; the executor attends the
    rows in pieces of ``group_rows`` consecutive rows, each reading its longest row's context once. The
    first piece's read is the decode's own (counted in ``decode_ctx_tokens``); every later piece adds
    one. With ``group_rows == 1`` that is every draft row's own context.
    """
    if group_rows == 1:  # rows 1..drafts read ctx + j keys each
        return drafts * ctx + drafts * (drafts + 1) // 2
    return sum(ctx + min(start + group_rows, drafts + 1) - 1 for start in range(group_rows, drafts + 1, group_rows))


def assign_drafts(plan: StepPlan, wanted: Seq[int], bm: BlockManager, budget: int, group_rows: int = 1) -> int:
    """Give the plan's decodes their draft tokens: ``wanted[i]`` for decode ``i``, capped so that a
    sequence never drafts past its output length, within ``budget``, and only where the KV blocks of
    the drafted positions can be had without preempting anyone (speculation never preempts).

    Sets ``plan.draft_lens``, ``plan.num_draft_tokens`` and ``plan.draft_ctx_tokens`` (the context the
    draft rows read beyond their decodes' own, attended in pieces of ``group_rows`` rows: ``group_reads``),
    which is added to ``plan.decode_ctx_tokens``; a plan whose caps leave no draft keeps empty
    ``draft_lens``.

    Returns:
        The budget left.
    """
    bs = bm.block_size
    lens: list[int] = []
    total = ctx = 0
    for seq, k in zip(plan.decodes, wanted, strict=True):
        k = min(k, seq.output_len - seq.num_generated - 1, budget)
        if k > 0:
            end = seq.num_computed + 1 + k  # positions of the decode and its k drafts
            if -(-end // bs) > len(seq.block_table) and not bm.allocate(seq.block_table, end):
                k = 0
        if k > 0:
            budget -= k
            total += k
            ctx += group_reads(seq.num_computed + 1, k, group_rows)
        lens.append(k)
    if total:
        plan.draft_lens, plan.num_draft_tokens, plan.draft_ctx_tokens = lens, total, ctx
        plan.decode_ctx_tokens += ctx
    return budget


def book_verified(plan: StepPlan, result: StepResult, end: float, done: list[Sequence]) -> None:
    """Book the decodes of a step with draft tokens (for ``Scheduler.postprocess``).

    Decode ``i`` emitted ``a_i + 1`` tokens (its ``a_i`` accepted drafts and one from the target), so
    ``a_i + 1`` more positions hold valid KV.

    Args:
        plan: the step's plan.
        result: its result (token ids, or accepted counts in the simulator).
        end: when the tokens came out.
        done: gets the sequences that finished.

    Raises:
        ValueError: the result gives neither token ids nor accepted counts, or more tokens than verified.
    """
    ids, accepted = result.token_ids, result.accepted
    if ids is None and (accepted is None or len(accepted) != len(plan.decodes)):
        raise ValueError(f"step {plan.step_id} verified {plan.num_draft_tokens} draft tokens but its result "
                         "has neither token ids nor one accepted count per decode")
    for i, (seq, k) in enumerate(zip(plan.decodes, plan.draft_lens, strict=True)):
        n = len(ids[seq.seq_id]) if ids is not None else accepted[i] + 1  # type: ignore[index]
        if not 1 <= n <= k + 1:
            raise ValueError(f"step {plan.step_id}: sequence {seq.seq_id!r} verified {k} draft tokens but "
                             f"the result emits {n} tokens")
        seq.num_computed += n
        if k:
            seq.num_draft_tokens += k
            seq.num_accepted_tokens += n - 1
            seq.num_rejections += n <= k
        if seq.emit(end, ids[seq.seq_id] if ids is not None else None, n):
            done.append(seq)


SPECULATION_POLICIES: dict[str, type[SpeculationPolicy]] = {
    "fixed": SpeculationPolicy,
    "batch-aware": BatchAwareSpeculation,
    "adaptive": AdaptiveSpeculation,
}


def make_speculation(name: str, **params: object) -> SpeculationPolicy:
    """Build a speculation policy by registered name (a key of ``SPECULATION_POLICIES``).

    Raises:
        ValueError: unknown name or parameter, or an invalid value.
    """
    return build("speculation policy", SPECULATION_POLICIES, name, params)
