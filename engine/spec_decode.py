"""Speculative steps on the engine: propose, verify in one forward pass, keep the accepted prefix.

A plan with ``draft_lens`` (``policies.speculation``) has decodes that each verify ``k``
draft tokens. The proposer (n-gram lookup or a draft model) gives the drafts; the
decode and its drafts become ``k + 1`` single-query rows (``DecodeRows``: the last
token at position ``p``, draft ``j`` at ``p + j``) that write their KV and attend like
decodes, so a verification step replays the same decode graphs, fused GEMVs and
kernels as a plain decode step of ``k + 1`` times the rows. Row ``j`` scores the token
after it: draft ``j + 1`` is checked against row ``j``, and the row after the last
accepted draft gives the extra token.

Verification is lossless. Greedy rows accept a draft exactly when it is the target's
argmax, so the output is the non-speculative greedy output. Sampled rows use
rejection sampling for a deterministic proposal: draft ``d`` is accepted with
probability ``p(d)`` (``p`` the row's distribution after temperature, top-k and
top-p); at the first rejection the token is drawn from ``p`` with ``d`` removed and
renormalised; if all are accepted the last row's token is drawn from ``p``. Each
emitted token is then distributed exactly as ``p`` (``p(x) = p(d) [x = d] + (1 - p(d))
p(x) [x != d] / (1 - p(d))``). Seeded requests draw from streams keyed by (seed, token
index), as the sampler does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from engine.ngram_proposer import NgramConfig, NgramProposer
from engine.step_metadata import DecodeRows
from policies.sequence import Sequence
from policies.types import StepPlan, StepResult

if TYPE_CHECKING:  # pragma: no cover
    from engine.model_runner import ModelRunner


class Proposer(Protocol):
    def propose(self, plan: StepPlan) -> list[list[int]]:
        """Per decode of ``plan``, exactly ``plan.draft_lens[i]`` draft tokens."""
        ...


def accept_greedy(targets: np.ndarray, drafts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Accepted drafts per decode: the length of the prefix where each draft equals the target's choice.

    Args:
        targets: int [B, K + 1], row ``j`` the target's token after position ``j`` (padding past a decode's own).
        drafts: int [B, K], draft ``j`` (0-based) checked against ``targets[:, j]``; padding past ``lens``.
        lens: int [B], drafts per decode.

    Returns:
        int [B] accepted counts, ``0 <= a_i <= lens[i]``.
    """
    k = drafts.shape[1]
    ok = (drafts == targets[:, :k]) & (np.arange(k)[None, :] < lens[:, None])
    return np.cumprod(ok, axis=1).sum(axis=1)


def accept_sampled(probs: torch.Tensor, uniforms: torch.Tensor, noise: torch.Tensor, next_draft: torch.Tensor,
                   index: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rejection-sampling verification of deterministic drafts (see the module docstring), on the device.

    Args:
        probs: fp32 [R, V], each row's target distribution (one-hot for greedy rows).
        uniforms: fp32 [R] U[0, 1) draws, the acceptance test of the draft each row checks.
        noise: fp32 [R, V] Exp(1) draws, for the token a row emits when it is the one that emits.
        next_draft: int64 [R], the draft token each row checks (-1: the decode's last row checks none).
        index: int64 [B, K + 1], decode ``i``'s rows (padding past ``lens[i]`` repeats its first row).
        lens: int64 [B], drafts per decode.

    Returns:
        ``(accepted [B], extra [B])``: accepted drafts per decode, and the token its row ``accepted`` emits
        (drawn from that row's distribution with the rejected draft removed, or from the last row's).
    """
    has = next_draft >= 0
    d = next_draft.clamp(min=0)[:, None]
    accept = has & (uniforms < probs.gather(1, d)[:, 0])
    residual = torch.where(has[:, None], probs.scatter(1, d, 0.0), probs)
    choice = (residual / noise).argmax(dim=-1)
    k = index.shape[1] - 1
    ok = accept[index[:, :k]] & (torch.arange(k, device=index.device)[None, :] < lens[:, None])
    accepted = ok.long().cumprod(dim=1).sum(dim=1)
    return accepted, choice[index.gather(1, accepted[:, None])[:, 0]]


class SpeculativeExecutor:
    """Runs the plans that verify draft tokens, for a ``ModelRunner``.

    Args:
        runner: the target model's runner (its graphs, kernels and sampler).
        proposer: where drafts come from.
    """

    def __init__(self, runner: ModelRunner, proposer: Proposer) -> None:
        self.runner = runner
        self.proposer = proposer

    def execute(self, plan: StepPlan) -> StepResult:
        """Propose, verify and return every sampling sequence's new tokens (1 to ``k + 1`` per decode).

        Raises:
            ValueError: the proposer gave a draft of another length than planned.
        """
        start = time.perf_counter()
        drafts = self.proposer.propose(plan)
        for seq, k, d in zip(plan.decodes, plan.draft_lens, drafts, strict=True):
            if len(d) != k:
                raise ValueError(f"proposer gave {len(d)} draft tokens for {seq.seq_id!r}, the plan verifies {k}")
        rows = DecodeRows.of(plan.decodes, drafts)
        logits, ids, seqs, first = self.runner.run_rows(plan, rows)
        nrows = len(rows)
        other = list(range(first)) + list(range(first + nrows, len(seqs)))  # prefill chunks that sample
        params = [s.request.sampling for s in seqs]
        lens = np.asarray(plan.draft_lens, dtype=np.int64)
        starts = first + np.concatenate(([0], np.cumsum(lens + 1)[:-1]))
        kmax = int(lens.max())
        pad = np.full((len(lens), kmax), -1, dtype=np.int64)
        for i, d in enumerate(drafts):
            pad[i, : len(d)] = d
        cols = np.arange(kmax + 1)[None, :]
        index = np.where(cols <= lens[:, None], starts[:, None] + cols, starts[:, None])  # [B, K + 1] rows
        if all(p.temperature == 0.0 for p in params):
            host = np.asarray(ids.tolist())  # the step's one synchronisation
            accepted = accept_greedy(host[index], pad, lens)
            extra = host[index[np.arange(len(lens)), accepted]]
            other_ids = host[other].tolist()
        else:
            accepted, extra, other_ids = self._sampled(plan.decodes, logits.float(), seqs, first, other, index, pad,
                                                       lens)
        new: dict[str, list[int]] = {}
        for i, seq in enumerate(plan.decodes):
            a = int(accepted[i])
            new[seq.seq_id] = [*drafts[i][:a], int(extra[i])]
        for r, t in zip(other, other_ids, strict=True):
            new[seqs[r].seq_id] = [int(t)]
        return StepResult(time.perf_counter() - start, new)

    def _sampled(self, decodes: list[Sequence], logits: torch.Tensor, seqs: list[Sequence], first: int,
                 other: list[int], index: np.ndarray, pad: np.ndarray, lens: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Rejection-sampling verification of the decode rows (any mix of greedy and sampled requests), and
        plain sampling of the other rows; one synchronisation for all of it."""
        sampler, dev = self.runner.sampler, logits.device
        nrows = int(lens.sum()) + len(lens)
        params = [s.request.sampling for s in seqs[first : first + nrows]]
        row_index: list[int] = []  # row j of a decode samples the decode's (num_generated + j)-th token
        for seq, k in zip(decodes, lens.tolist(), strict=True):
            row_index.extend(range(seq.num_generated, seq.num_generated + k + 1))
        probs = sampler.probabilities(logits[first : first + nrows], params)
        uniforms = torch.empty(nrows, device=dev)
        noise = sampler.noise(probs.shape, params, row_index, uniforms)
        # The draft each row checks: the next row's token within the same decode (-1: the decode's last row).
        nxt = np.full(nrows, -1, dtype=np.int64)
        for i in range(len(lens)):
            k = int(lens[i])
            nxt[index[i, :k] - first] = pad[i, :k]
        accepted, extra = accept_sampled(probs, uniforms, noise, torch.from_numpy(nxt).to(dev),
                                         torch.from_numpy(index - first).to(dev), torch.from_numpy(lens).to(dev))
        parts = [accepted, extra]
        if other:
            o_params = [seqs[r].request.sampling for r in other]
            parts.append(sampler.sample(logits[other], o_params, [seqs[r].num_generated for r in other]))
        host = torch.cat(parts).tolist()  # the step's one synchronisation
        b = len(lens)
        return np.asarray(host[:b]), np.asarray(host[b : 2 * b]), host[2 * b :]


def make_speculative(runner: ModelRunner) -> SpeculativeExecutor:
    """The speculative executor of ``runner.config.speculative_method`` ('ngram' or 'draft')."""
    cfg = runner.config
    proposer: Proposer
    if cfg.speculative_method == "ngram":
        proposer = NgramProposer(NgramConfig(cfg.ngram_min, cfg.ngram_max))
    else:
        from engine.draft_proposer import DraftModelProposer

        proposer = DraftModelProposer(runner)
    return SpeculativeExecutor(runner, proposer)
