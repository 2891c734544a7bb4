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
            return logits.argmax(dim=-1)
        n, vocab = logits.shape
        dev = logits.device
        temp = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=dev)
        scaled = logits / temp[:, None]
        top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        top_p = [p.top_p for p in params]
        if min(top_k) < vocab or min(top_p) < 1.0:
            scaled = self._mask(scaled, top_k, top_p)
        probs = torch.softmax(scaled, dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for i, p in enumerate(params):
            if p.seed is not None and not greedy[i]:
                self._row_generator.manual_seed(p.seed * _SEED_STRIDE + token_index[i])
                noise[i].exponential_(generator=self._row_generator)
        sampled = (probs / noise).argmax(dim=-1)
        if any(greedy):
            is_greedy = torch.tensor(greedy, device=dev)
            sampled = torch.where(is_greedy, logits.argmax(dim=-1), sampled)
        return sampled

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
