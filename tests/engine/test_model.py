"""Engine logits against transformers' LlamaForCausalLM on a tiny random checkpoint."""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from policies.sequence import Sequence
from policies.types import PrefillChunk, Request, StepPlan

BS = 4


def make_seq(name: str, ids: list[int], first_block: int) -> Sequence:
    seq = Sequence(Request(name, 0.0, len(ids), 8, prompt_token_ids=tuple(ids)))
    seq.block_table = list(range(first_block, first_block + -(-(len(ids) + 8) // BS)))
    return seq


def runner(path, **kw) -> ModelRunner:
    kw.setdefault("dtype", "float32")
    kw.setdefault("device", "cpu")
    return ModelRunner(EngineConfig(str(path), num_gpu_blocks=64, block_size=BS, **kw))


def hf_logits(hf_model, ids: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return hf_model.to(dtype)(torch.tensor([ids])).logits[0].float()


def chunked_logits(r: ModelRunner, seq: Sequence, chunks: list[int]) -> torch.Tensor:
    """Prefill ``seq`` in chunks of the given sizes; logits of every position."""
    out, start = [], 0
    for n in chunks:
        plan = StepPlan(1, 0.0, prefills=[PrefillChunk(seq, start, n)], num_prefill_tokens=n)
        out.append(r.logits(plan, all_rows=True)[0])
        start += n
        seq.num_computed = start
    return torch.cat(out)


@pytest.mark.parametrize("chunks", [[23], [10, 13], [1, 7, 15]])
def test_prefill_logits_match_transformers_fp32(tiny_llama, hf_model, chunks):
    ids = torch.randint(0, 300, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    got = chunked_logits(runner(tiny_llama), make_seq("a", ids, 0), chunks)
    torch.testing.assert_close(got, hf_logits(hf_model, ids), atol=2e-5, rtol=1e-5)


def test_old_rope_keys_load_the_same_model(tiny_llama_old_keys, hf_model):
    ids = list(range(5, 40))
    got = chunked_logits(runner(tiny_llama_old_keys), make_seq("a", ids, 0), [len(ids)])
    torch.testing.assert_close(got, hf_logits(hf_model, ids), atol=2e-5, rtol=1e-5)


def test_mixed_prefill_and_decodes_in_one_step(tiny_llama, hf_model):
    """One packed step: a chunk with a cached prefix, a fresh prompt, and two decodes."""
    gen = torch.Generator().manual_seed(2)
    a, b, c, d = (torch.randint(0, 300, (n,), generator=gen).tolist() for n in (17, 9, 6, 30))
    r = runner(tiny_llama)
    seqs = [make_seq("a", a, 0), make_seq("b", b, 16), make_seq("c", c, 24), make_seq("d", d, 32)]
    # Warm the caches: a's first 8 tokens, c and d's prompts but their last token.
    for seq, n in ((seqs[0], 8), (seqs[2], 5), (seqs[3], 29)):
        chunked_logits(r, seq, [n])
    plan = StepPlan(2, 0.0, prefills=[PrefillChunk(seqs[0], 8, 9), PrefillChunk(seqs[1], 0, 9)],
                    decodes=[seqs[2], seqs[3]], num_prefill_tokens=18)
    seqs[2].num_computed, seqs[3].num_computed = 5, 29
    got, order = r.logits(plan, all_rows=True)
    assert got.shape == (20, 300) and order == seqs
    torch.testing.assert_close(got[:9], hf_logits(hf_model, a)[8:], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[9:18], hf_logits(hf_model, b), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[18], hf_logits(hf_model, c)[-1], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[19], hf_logits(hf_model, d)[-1], atol=2e-5, rtol=1e-5)


def test_bf16_logits_match_transformers_within_bf16_tolerance(tiny_llama, hf_model):
    ids = list(range(3, 60, 2))
    got = chunked_logits(runner(tiny_llama, dtype="bfloat16"), make_seq("a", ids, 0), [11, len(ids) - 11])
    ref = hf_logits(hf_model, ids, torch.bfloat16)
    hf_model.float()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=5e-2, rtol=5e-2)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("kv", ["int8", "fp8"])
def test_quantized_kv_cache_stays_close(tiny_llama, hf_model, kv):
    ids = list(range(7, 47))
    got = chunked_logits(runner(tiny_llama, kv_cache_dtype=kv), make_seq("a", ids, 0), [20, 20])
    tol = 5e-2 if kv == "int8" else 2.5e-1
    torch.testing.assert_close(got, hf_logits(hf_model, ids), atol=tol, rtol=0)


def test_runner_errors(tiny_llama):
    with pytest.raises(ValueError, match="attention_backend 'triton' needs a bf16/fp16 model dtype"):
        runner(tiny_llama, attention_backend="triton")  # float32
    with pytest.raises(ValueError, match="num_gpu_blocks must be given on the CPU"):
        ModelRunner(EngineConfig(str(tiny_llama), device="cpu"))
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings 512"):
        ModelRunner(EngineConfig(str(tiny_llama), device="cpu", num_gpu_blocks=8, max_model_len=1024))


def test_padded_decode_batch_gives_the_same_rows(tiny_llama):
    """The CUDA-graph layout (decodes padded with scratch-block rows, full-width tables) is exact."""
    r = runner(tiny_llama)
    gen = torch.Generator().manual_seed(4)
    seqs = [make_seq(n, torch.randint(0, 300, (k,), generator=gen).tolist(), 10 * i)
            for i, (n, k) in enumerate((("a", 7), ("b", 13), ("c", 3)))]
    for s in seqs:
        chunked_logits(r, s, [s.prompt_len - 1])
        s.num_computed = s.prompt_len - 1
    plan = StepPlan(5, 0.0, decodes=seqs)
    eager = r.logits(plan)[0]
    meta = r.builder.build(plan, pad_decodes_to=8, decode_table_width=r.max_blocks_per_seq)
    assert meta.num_decodes == 8 and meta.decode_block_tables.shape == (8, r.max_blocks_per_seq)
    assert (meta.slot_mapping[3:] // BS == r.kv.scratch_block).all()
    padded = r.model.forward(meta, r.attention)
    torch.testing.assert_close(padded[:3], eager, atol=1e-5, rtol=1e-5)
