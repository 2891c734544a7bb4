"""Batched sampling: greedy, temperature, top-k and top-p, with per-request seeds.

All rows are processed together with tensor ops. Randomness uses the
exponential-race form of categorical sampling (``argmax(p / E)`` with
``E ~ Exp(1)`` picks index i with probability ``p_i``), so a row's draw only
needs its own noise vector. Seeded requests get their noise from a generator
re-seeded per (seed, token index): a request's tokens then depend only on its
seed and its logits, never on which other requests share the batch.
"""

from __future__ import annotations

import torch

from policies.types import SamplingParams

_SEED_STRIDE = 1_000_003  # mixes the token index into the seed
_CHUNKED_ARGMAX_MIN_VOCAB = 8192  # below this one reduction kernel is already short
_MAX_ARGMAX_CHUNKS = 256


def _argmax_chunks(vocab: int) -> int:
    """Largest divisor of ``vocab`` <= 256 whose chunks are no shorter than the chunk count (1: none)."""
    if vocab < _CHUNKED_ARGMAX_MIN_VOCAB:
        return 1
    for c in range(_MAX_ARGMAX_CHUNKS, 1, -1):
        if vocab % c == 0 and vocab // c >= c:
            return c
    return 1


def greedy_ids(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)`` for [N, V] logits, in two short reductions instead of one long one.

    A single row of a 128k vocabulary is one ~30 µs reduction on an H100 (few blocks work on it);
    here each row is cut into ``c`` equal chunks (``c`` a divisor of V): the max and its first index
    per chunk, then the first chunk holding the row's max. Ties resolve to the first index, as argmax.

    Args:
        logits: [N, V] float logits (rows contiguous).

    Returns:
        int64 [N] ids of each row's (first) largest logit.
    """
    n, vocab = logits.shape
    chunks = _argmax_chunks(vocab)
    if chunks == 1 or not logits.is_contiguous():
        return logits.argmax(dim=-1)
    width = vocab // chunks
    best, where = logits.view(n, chunks, width).max(dim=-1)
    chunk = best.argmax(dim=-1, keepdim=True)  # first chunk reaching the row max
    return (chunk * width + where.gather(1, chunk))[:, 0]


class Sampler:
    """Chooses the next token of each row of a logits matrix.

    Args:
        device: device of the logits.
        seed: seed of the shared generator used by unseeded random rows.
    """

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._row_generator = torch.Generator(device=device)

    def sample(self, logits: torch.Tensor, params: list[SamplingParams],
               token_index: list[int]) -> torch.Tensor:
        """Sample one token per row.

        Args:
            logits: fp32 [N, V].
            params: sampling parameters per row.
            token_index: per row, how many tokens its request generated before
                this one (the counter mixed into a seeded request's noise).

        Returns:
            int64 [N] token ids on the logits' device.
        """
        greedy = [p.temperature == 0.0 for p in params]
        if all(greedy):
            return greedy_ids(logits)
        probs = self.probabilities(logits, params, one_hot_greedy=False)
        sampled = (probs / self.noise(probs.shape, params, token_index)).argmax(dim=-1)
        if any(greedy):
            is_greedy = torch.tensor(greedy, device=logits.device)
            sampled = torch.where(is_greedy, greedy_ids(logits), sampled)
        return sampled

    def probabilities(self, logits: torch.Tensor, params: list[SamplingParams],
                      one_hot_greedy: bool = True) -> torch.Tensor:
        """The distribution each row samples from: softmax of the logits over the row's temperature,
        outside its top-k and top-p nucleus set to 0.

        Args:
            logits: fp32 [N, V].
            params: per row.
            one_hot_greedy: greedy rows (temperature 0) get a one-hot row at their argmax
                (otherwise their row is the softmax at temperature 1, for callers that override them).

        Returns:
            fp32 [N, V] probabilities.
        """
        vocab = logits.shape[1]
        dev = logits.device
        temp = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=dev)
        scaled = logits / temp[:, None]
        top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        top_p = [p.top_p for p in params]
        if min(top_k) < vocab or min(top_p) < 1.0:
            scaled = self._mask(scaled, top_k, top_p)
        probs = torch.softmax(scaled, dim=-1)
        greedy = [p.temperature == 0.0 for p in params]
        if one_hot_greedy and any(greedy):
            hot = torch.zeros_like(probs).scatter_(1, greedy_ids(logits)[:, None], 1.0)
            probs = torch.where(torch.tensor(greedy, device=dev)[:, None], hot, probs)
        return probs

    def noise(self, shape: torch.Size, params: list[SamplingParams], token_index: list[int],
              uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """Exp(1) noise per row for the exponential race (``argmax(p / E)``); seeded rows draw theirs from
        a generator seeded by (seed, token index), the others from the shared generator.

        Args:
            shape: [N, V].
            params, token_index: per row.
            uniforms: optional fp32 [N], filled with one U[0, 1) draw per row from the same streams, drawn
                before the row's noise (speculative verification's acceptance tests).

        Returns:
            fp32 [N, V] noise.
        """
        noise = torch.empty(shape, device=self.device).exponential_(generator=self.generator)
        if uniforms is not None:
            uniforms.uniform_(generator=self.generator)
        for i, p in enumerate(params):
            if p.seed is not None and p.temperature > 0.0:
                self._row_generator.manual_seed(p.seed * _SEED_STRIDE + token_index[i])
                if uniforms is not None:
                    uniforms[i : i + 1].uniform_(generator=self._row_generator)
                noise[i].exponential_(generator=self._row_generator)
        return noise

    @staticmethod
    def _mask(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
        """Set to -inf every logit outside its row's top-k and top-p nucleus.

        The nucleus is the smallest set of most likely tokens whose mass reaches
        ``top_p`` (the most likely token is always kept).
        """
        dev = logits.device
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        rank = torch.arange(logits.shape[1], device=dev)[None, :]
        drop = rank >= torch.tensor(top_k, device=dev)[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop |= mass_before >= torch.tensor(top_p, device=dev)[:, None]
        drop[:, 0] = False
        masked = torch.full_like(logits, float("-inf"))
        return masked.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
