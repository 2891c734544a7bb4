"""Sampler: greedy, top-k, top-p masking, temperature, per-request seeds."""

from __future__ import annotations

import pytest
import torch

from engine.sampler import Sampler, greedy_ids
from policies.types import SamplingParams

CPU = torch.device("cpu")


def logits(n: int = 6, v: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_top_k_one_equals_greedy():
    x = logits()
    s = Sampler(CPU)
    greedy = s.sample(x, [SamplingParams()] * 6, [0] * 6)
    assert torch.equal(greedy, x.argmax(-1))
    topk1 = s.sample(x, [SamplingParams(temperature=1.5, top_k=1)] * 6, [0] * 6)
    assert torch.equal(topk1, greedy)


def test_mixed_greedy_and_random_rows():
    x = logits()
    params = [SamplingParams(), SamplingParams(temperature=1.0)] * 3
    out = Sampler(CPU).sample(x, params, [0] * 6)
    assert torch.equal(out[0::2], x[0::2].argmax(-1))


def test_seeded_sampling_is_reproducible_and_batch_independent():
    x = logits(4)
    p = SamplingParams(temperature=1.0, seed=1234)
    a = Sampler(CPU, seed=1).sample(x, [p] * 4, [0, 1, 2, 3])
    b = Sampler(CPU, seed=99).sample(x, [p] * 4, [0, 1, 2, 3])
    assert torch.equal(a, b)
    # Row 2 alone, with other unseeded rows around it, draws the same token.
    others = SamplingParams(temperature=1.0)
    c = Sampler(CPU, seed=5).sample(x[[0, 2]], [others, p], [0, 2])
    assert c[1] == a[2]
    # Different token indices give different draws somewhere over many rows.
    y = torch.zeros(64, 37)
    d = Sampler(CPU).sample(y, [p] * 64, list(range(64)))
    assert len(set(d.tolist())) > 5


def test_top_p_keeps_only_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    x = probs.log()
    masked = Sampler._mask(x, [4], [0.7])
    assert torch.isfinite(masked[0, :2]).all() and torch.isinf(masked[0, 2:]).all()
    masked = Sampler._mask(x, [4], [0.85])
    assert torch.isfinite(masked[0, :3]).all() and torch.isinf(masked[0, 3])
    masked = Sampler._mask(x, [4], [0.1])  # the top token always survives
    assert torch.isfinite(masked[0, 0]) and torch.isinf(masked[0, 1:]).all()
    draws = Sampler(CPU).sample(x.repeat(400, 1), [SamplingParams(temperature=1.0, top_p=0.7)] * 400, [0] * 400)
    assert set(draws.tolist()) == {0, 1}


def test_top_k_with_shuffled_vocab_and_sampling_frequencies():
    x = torch.tensor([[0.1, 2.0, -1.0, 1.5, 0.0]]).repeat(2000, 1)
    masked = Sampler._mask(x[:1], [2], [1.0])
    assert torch.isfinite(masked[0, [1, 3]]).all() and torch.isinf(masked[0, [0, 2, 4]]).all()
    draws = Sampler(CPU).sample(x, [SamplingParams(temperature=1.0, top_k=2)] * 2000, [0] * 2000)
    freq = (draws == 1).float().mean().item()
    expected = torch.softmax(torch.tensor([2.0, 1.5]), 0)[0].item()
    assert set(draws.tolist()) == {1, 3} and abs(freq - expected) < 0.05


def test_temperature_sharpens():
    x = torch.tensor([[1.0, 0.0]]).repeat(3000, 1)
    s = Sampler(CPU)
    hot = (s.sample(x, [SamplingParams(temperature=2.0)] * 3000, [0] * 3000) == 0).float().mean()
    cold = (s.sample(x, [SamplingParams(temperature=0.25)] * 3000, [0] * 3000) == 0).float().mean()
    assert abs(hot - torch.sigmoid(torch.tensor(0.5))) < 0.04
    assert abs(cold - torch.sigmoid(torch.tensor(4.0))) < 0.02


@pytest.mark.parametrize("vocab", [128256, 32000, 8209, 300])  # 8209 is prime: one plain argmax
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_ids_equals_argmax_with_ties(vocab: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(vocab)
    # few distinct values: most rows hold their max many times, so first-index tie-breaking is tested
    logits = torch.randint(-20, 6, (3, vocab), generator=gen).to(dtype)
    logits[1, -1] = 100.0  # a max in the last chunk
    logits[2, 0] = 100.0  # a max at index 0
    assert torch.equal(greedy_ids(logits), logits.argmax(dim=-1))
    assert torch.equal(greedy_ids(logits[:1]), logits[:1].argmax(dim=-1))
