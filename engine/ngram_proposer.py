"""N-gram (prompt lookup) drafts for speculative decoding.

The draft for a sequence continues the most recent earlier occurrence of its last
``n`` tokens (longest ``n`` first, from ``max_n`` down to ``min_n``): if the text so
far is ``... a b c X Y ... a b c`` the draft is ``X Y ...``. It costs no model and
wins where outputs repeat their input (summaries, code edits, retrieval answers).

Each sequence keeps a dictionary per ``n`` from n-gram to its latest start, extended
only by the tokens added since the last step (a new sequence's whole prompt in one
numpy pass), so a proposal costs ``O(max_n)`` dictionary operations per new token, not a
scan of the history. N-grams are keyed by exact packed ints (tuples past ``max_n = 3``). A draft always has
the length the scheduler planned (its KV slots are allocated and the simulator prices
that many rows): with no match it repeats the last token, and a continuation that runs
into the end of the text wraps around the period it found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.sequence import Sequence
from policies.types import StepPlan

_SWEEP_EVERY = 64  # proposals between sweeps of finished sequences' state


@dataclass(frozen=True)
class NgramConfig:
    """Prompt-lookup proposer settings.

    Args:
        min_n: shortest suffix matched.
        max_n: longest suffix matched (tried first).
    """

    min_n: int = 1
    max_n: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"NgramConfig: need 1 <= min_n <= max_n, got min_n={self.min_n}, max_n={self.max_n}")


_BITS = 21  # bits per token in a packed n-gram key (ids below 2^21: every Llama vocabulary)
_BULK = 64  # new n-gram starts from which one update packs keys with numpy


def _pack(grams: list[int] | np.ndarray, n: int, start: int, count: int) -> list:
    """Keys of the ``count`` n-grams starting at ``start``, ``start + 1``, ... of ``grams``: exact ints
    (token ``i`` in bits ``21 i`` and up) when 21 n <= 63 bits, else tuples."""
    if _BITS * n > 63:
        return list(zip(*(grams[start + i : start + i + count] for i in range(n)), strict=True))
    if count >= _BULK:
        arr = np.asarray(grams[start : start + count + n - 1], dtype=np.int64)
        keys = arr[:count].copy()
        for i in range(1, n):
            keys |= arr[i : i + count] << (_BITS * i)
        return keys.tolist()
    out = []
    for j in range(start, start + count):
        key = 0
        for i in range(n):
            key |= grams[j + i] << (_BITS * i)
        out.append(key)
    return out


class _History:
    """A sequence's tokens and, per n, the latest start of every n-gram that ends before its last token.

    Keys are n-grams packed into one int (``_pack``): no tuple per n-gram, so the indexes of long
    prompts are cheap to build and give the garbage collector nothing to walk.
    """

    def __init__(self, seq: Sequence, ns: range) -> None:
        prompt = seq.request.prompt_token_ids
        if prompt is None:
            raise ValueError(f"request {seq.seq_id!r} has no prompt token ids; n-gram drafts need them")
        if prompt and not 0 <= min(prompt) <= max(prompt) < 1 << _BITS:
            raise ValueError(f"request {seq.seq_id!r} has token ids outside [0, 2^{_BITS}); n-gram drafts need ids "
                             "of a vocabulary below that size")
        self.seq = seq
        self.tokens: list[int] = list(prompt)
        self.num_outputs = 0
        self.ns = ns
        self.index: dict[int, dict] = {n: {} for n in ns}
        self.next_start = dict.fromkeys(ns, 0)

    def update(self) -> None:
        """Take in the tokens the sequence generated since the last call."""
        out = self.seq.output_ids
        if len(out) > self.num_outputs:
            self.tokens.extend(out[self.num_outputs :])
            self.num_outputs = len(out)
        toks = self.tokens
        stop = len(toks) - 1  # invariant: index[n] holds every start j with j + n <= len(toks) - 1
        for n in self.ns:
            j, end = self.next_start[n], stop - n + 1
            if end > j:  # later starts overwrite earlier ones: each key keeps its latest start
                self.index[n].update(zip(_pack(toks, n, j, end - j), range(j, end), strict=True))
                self.next_start[n] = end

    def draft(self, k: int) -> list[int]:
        """``k`` tokens continuing the latest earlier occurrence of the longest matching suffix."""
        toks = self.tokens
        length = len(toks)
        for n in reversed(self.ns):
            if length <= n:
                continue
            j = self.index[n].get(_pack(toks, n, length - n, 1)[0])
            if j is None:
                continue
            out: list[int] = []
            src = j + n
            for i in range(k):  # past the end, the continuation repeats the period it found
                pos = src + i
                out.append(toks[pos] if pos < length else out[pos - length])
            return out
        return [toks[-1]] * k


class NgramProposer:
    """Drafts for the decodes of speculative steps, from each sequence's own tokens.

    Args:
        config: match lengths.
    """

    def __init__(self, config: NgramConfig) -> None:
        self.config = config
        self._ns = range(config.min_n, config.max_n + 1)
        # Keyed by object identity (request ids repeat across schedulers); each entry holds its sequence,
        # so an id is never reused while its entry lives.
        self._histories: dict[int, _History] = {}
        self._calls = 0

    def propose(self, plan: StepPlan) -> list[list[int]]:
        """Draft tokens per decode of ``plan``: exactly ``plan.draft_lens[i]`` for decode ``i``. A decode that
        drafts nothing costs nothing here (its history catches up when it next drafts).

        Raises:
            ValueError: a drafting sequence without prompt token ids.
        """
        out: list[list[int]] = []
        histories = self._histories
        for seq, k in zip(plan.decodes, plan.draft_lens, strict=True):
            if not k:
                out.append([])
                continue
            h = histories.get(id(seq))
            if h is None or h.seq is not seq:
                h = histories[id(seq)] = _History(seq, self._ns)
            h.update()
            out.append(h.draft(k))
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self._histories = {key: h for key, h in histories.items() if not h.seq.is_finished}
        return out

    def __len__(self) -> int:
        """Sequences whose history is held."""
        return len(self._histories)
