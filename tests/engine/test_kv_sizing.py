"""Sizing the KV pool: the profiling plan (the CPU refusal is in test_model; the GPU sizing runs in every
GPU benchmark)."""

from __future__ import annotations

import torch

from engine.kv_sizing import profile_plan
from tests.engine.test_model import runner


def test_profile_plan_covers_the_token_budget(tiny_llama):
    r = runner(tiny_llama, max_model_len=50)
    plan, nblocks = profile_plan(120, r.max_model_len, r.block_size)
    assert r.profile_plan(120)[1] == nblocks
    assert [c.num_tokens for c in plan.prefills] == [50, 50, 20]
    assert nblocks == 13 + 13 + 5 and plan.prefills[2].seq.block_table == list(range(26, 31))
    logits, seqs = r.logits(plan)
    assert logits.shape == (3, 300) and torch.isfinite(logits).all()

