"""Draft-model proposals for speculative decoding.

A smaller model with the target's vocabulary proposes ``k`` tokens greedily. Its KV
cache mirrors the target's paging: the same number of blocks of the same size, read
through the very block tables the scheduler gave the target, so the scheduler's one
``BlockManager`` covers both models and nothing else needs allocating.

Per step, for the decodes that verify drafts: one forward pass of the draft over each
sequence's tokens it has not seen yet (its whole prompt the first time; after that
the one or two tokens since its last proposal), whose last row gives the first
draft, then ``k - 1`` single-row steps feeding each draft back. Both kinds of pass
run through the draft runner's own CUDA graphs where they fit.

What the draft's cache holds for a sequence is tracked, not assumed: the positions
it computed with the sequence's true tokens, up to the first of its own drafts that
the target rejected. A preemption (recompute or swap) moves or drops the target's
blocks, so the draft starts that sequence over.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from engine.step_metadata import DecodeRows
from policies.sequence import Sequence
from policies.types import PrefillChunk, StepPlan

if TYPE_CHECKING:  # pragma: no cover
    from engine.model_runner import ModelRunner

_SWEEP_EVERY = 64  # proposals between sweeps of finished sequences' state


@dataclasses.dataclass
class _DraftState:
    """What the draft's cache holds for one sequence."""

    seq: Sequence
    preemptions: int  # the sequence's preemption count when this was recorded
    base: int  # positions [0, base) were computed from true tokens
    drafts: list[int]  # the draft's own tokens fed at positions base, base + 1, ... (may be wrong)

    def valid(self) -> int:
        """Positions whose draft KV came from the sequence's true tokens."""
        seq = self.seq
        if seq.num_preemptions != self.preemptions:
            return 0
        prompt, out = seq.prompt_len, seq.output_ids
        n = self.base
        for tok in self.drafts:
            if n >= seq.total_len or out[n - prompt] != tok:  # positions >= base hold generated tokens
                break
            n += 1
        return min(n, seq.num_computed)


class DraftModelProposer:
    """Greedy drafts from a smaller model sharing the target's block tables.

    Args:
        target: the target model's runner (its config names ``draft_model``; its pool sets the draft's).

    Raises:
        ValueError: the draft's vocabulary differs from the target's, or its context is shorter.
    """

    def __init__(self, target: ModelRunner) -> None:
        from engine.model_runner import ModelRunner

        cfg = target.config
        assert cfg.draft_model is not None
        draft_cfg = dataclasses.replace(cfg, model=cfg.draft_model, num_gpu_blocks=target.num_gpu_blocks,
                                        num_cpu_blocks=0, max_model_len=target.max_model_len,
                                        speculative_method=None, draft_model=None, decode_lookahead=False,
                                        quantization=None)
        self.runner = ModelRunner(draft_cfg)
        if self.runner.spec.vocab_size != target.spec.vocab_size:
            raise ValueError(f"draft model {cfg.draft_model} has a vocabulary of {self.runner.spec.vocab_size} "
                             f"tokens; the target's has {target.spec.vocab_size}")
        self._states: dict[int, _DraftState] = {}  # by object identity, each holding its sequence
        self._calls = 0

    def propose(self, plan: StepPlan) -> list[list[int]]:
        """Per decode of ``plan``, ``plan.draft_lens[i]`` greedy draft tokens."""
        spec = [(s, k) for s, k in zip(plan.decodes, plan.draft_lens, strict=True) if k > 0]
        drafts: dict[int, list[int]] = {}
        if spec:
            chunks, bases = [], []
            for seq, _ in spec:
                st = self._states.get(id(seq))
                start = st.valid() if st is not None and st.seq is seq else 0
                # The tokens the draft has not computed, up to the sequence's last (its first draft's input).
                chunks.append(PrefillChunk(seq, start, seq.total_len - start))
                bases.append(seq.total_len)
            catch_up = StepPlan(0, plan.now, prefills=chunks, num_prefill_tokens=sum(c.num_tokens for c in chunks))
            first = self._greedy(catch_up, DecodeRows([], [], [], []))
            out = {id(seq): [t] for (seq, _), t in zip(spec, first, strict=True)}
            for j in range(1, max(k for _, k in spec)):
                live = [(seq, base) for (seq, k), base in zip(spec, bases, strict=True) if k > j]
                seqs = [seq for seq, _ in live]
                rows = DecodeRows([out[id(s)][-1] for s in seqs], [base + j - 1 for _, base in live],
                                  [s.block_table for s in seqs], seqs)
                for seq, t in zip(seqs, self._greedy(StepPlan(0, plan.now, decodes=seqs), rows), strict=True):
                    out[id(seq)].append(t)
            for (seq, k), base in zip(spec, bases, strict=True):
                d = drafts[id(seq)] = out[id(seq)]
                # Fed so far: true tokens below ``base``, then drafts 1..k-1 at base .. base + k - 2.
                self._states[id(seq)] = _DraftState(seq, seq.num_preemptions, base, d[: k - 1])
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self._states = {key: st for key, st in self._states.items() if not st.seq.is_finished}
        return [drafts.get(id(s), []) if k else [] for s, k in zip(plan.decodes, plan.draft_lens, strict=True)]

    def _greedy(self, plan: StepPlan, rows: DecodeRows) -> list[int]:
        """The draft's greedy token for every sampling row of ``plan`` (prefill chunks or ``rows``)."""
        _, ids, _, _ = self.runner.run_rows(plan, rows)
        return ids.tolist()
