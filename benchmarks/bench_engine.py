"""GPU benchmark of the whole engine on random bf16 Llama 3.2 1B and 3B checkpoints (CUDA only).

Per model (shapes from sim/models/llama-3.2-*.json, public shapes if absent), a random checkpoint is
built with transformers on the GPU and saved to a temporary folder, then:

* transformers baselines on the same weights: batch-1 greedy decode with a static cache (prompt 128,
  256 new tokens), and batched generate on a subset of the offline requests;
* the engine (continuous batching, CUDA graphs for decode, Triton kernels):
  - decode at batch 1 (prompt 128, 256 new tokens): tokens/s, against the memory-bandwidth floor
    (weight bytes read per step / measured device-copy bandwidth);
  - offline throughput: 256 requests with prompt and output lengths uniform in [100, 1024] (seeded),
    EOS ignored: output tokens/s (wall clock of the whole run);
  - prefill of 8 x 2048 tokens in one step: tokens/s and TFLOP/s against the bf16 matmul peak.

Every case is wrapped: a failure records NaN rows and prints the error; the run goes on.
"""

from __future__ import annotations

import gc
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import measure_copy_bandwidth, measure_matmul_peak, row, time_wall

BENCH = "engine"
MODELS_DIR = Path(__file__).resolve().parents[1] / "sim" / "models"
PUBLIC_SHAPES = {  # used only if sim/models lacks the config files
    "llama-3.2-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64},
    "llama-3.2-3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128},
}
COMMON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
          "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "tie_word_embeddings": True,
          "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001,
          "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
MAX_MODEL_LEN = 4096
TOKEN_BUDGET = 16384  # one step holds the 8 x 2048 prefill
HF_SUBSET = 16


def _hf_config(name: str) -> dict:
    path = MODELS_DIR / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {**COMMON, **PUBLIC_SHAPES[name]}


def _build_checkpoint(name: str, folder: Path) -> torch.nn.Module:
    """A random bf16 model on the GPU, saved to ``folder``; returned for the transformers baselines."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = _hf_config(name)
    cfg = {k: v for k, v in cfg.items() if k not in ("torch_dtype", "dtype", "transformers_version")}
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16).eval()
    model.save_pretrained(folder)
    return model


def _requests(n: int, vocab: int, lo: int = 100, hi: int = 1024, seed: int = 0) -> list:
    from policies.types import Request

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, o = rng.randint(lo, hi), rng.randint(lo, hi)
        ids = tuple(rng.randrange(vocab) for _ in range(p))
        out.append(Request(f"r{i}", 0.0, p, o, prompt_token_ids=ids))
    return out


def _hf_decode_b1(model: torch.nn.Module, vocab: int) -> float:
    """transformers greedy decode at batch 1 with a static cache: new tokens per second."""
    ids = torch.randint(0, vocab, (1, 128), device="cuda")
    kw = {"max_new_tokens": 256, "min_new_tokens": 256, "do_sample": False, "cache_implementation": "static",
          "pad_token_id": 0}
    with torch.no_grad():
        model.generate(ids, **{**kw, "max_new_tokens": 8, "min_new_tokens": 8})
        t = time_wall(lambda: model.generate(ids, **kw), iters=1, warmup=0)
    return 256 / t


def _hf_offline(model: torch.nn.Module, requests: list) -> float:
    """transformers batched generate (left padded, one batch) on a subset: useful output tokens/s."""
    prompts = [list(r.prompt_token_ids) for r in requests]
    longest = max(map(len, prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device="cuda")
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device="cuda")
    new = max(r.output_len for r in requests)
    with torch.no_grad():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0)
        torch.cuda.synchronize()
    return sum(r.output_len for r in requests) / (time.perf_counter() - t0)


def _prefill_flops(spec, lens: list[int]) -> float:
    """Matmul FLOPs of a prefill: linear layers per token, plus causal q.k and p.v per sequence."""
    h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
    linear = h * (q + 2 * kv) + q * h + 3 * h * inter
    tokens = sum(lens)
    attn = sum(n * (n + 1) // 2 for n in lens) * 4 * q
    return spec.num_layers * (2 * tokens * linear + attn)


def _case(rows: list[dict], cases: list[tuple[str, str]], fn: Callable[[], list[dict]]) -> None:
    """Run ``fn``; on failure, NaN rows for ``cases`` (case, unit) and the error printed."""
    try:
        rows.extend(fn())
    except Exception as e:  # one failing case must not abort the others
        note = f"error: {type(e).__name__}: {str(e)[:300]}"
        print(f"[bench_engine] FAILED {cases[0][0]}: {note}", flush=True)
        rows.extend(row(BENCH, c, float("nan"), u, reference=note) for c, u in cases)
    torch.cuda.empty_cache()


def _model_cases(rows: list[dict], name: str, bw: float, peak: float, quick: bool) -> None:
    from engine import LLM
    from policies.sequence import Sequence
    from policies.types import PrefillChunk, Request, StepPlan

    tag = name.replace("llama-3.2-", "").upper()
    n_requests = 64 if quick else 256
    hf: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        model = _build_checkpoint(name, folder)
        vocab = model.config.vocab_size
        print(f"[bench_engine] {tag}: checkpoint built in {time.perf_counter() - t0:.1f}s", flush=True)
        requests = _requests(n_requests, vocab)
        try:
            hf["decode"] = _hf_decode_b1(model, vocab)
        except Exception as e:
            print(f"[bench_engine] {tag}: transformers decode baseline failed: {e!r}", flush=True)
        try:
            hf["offline"] = _hf_offline(model, requests[:HF_SUBSET])
        except Exception as e:
            print(f"[bench_engine] {tag}: transformers offline baseline failed: {e!r}", flush=True)
        del model
        torch.cuda.empty_cache()
        print(f"[bench_engine] {tag}: transformers baselines {hf}", flush=True)
        t0 = time.perf_counter()
        llm = LLM(str(folder), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, token_budget=TOKEN_BUDGET,
                  gpu_memory_utilization=0.85)
        runner = llm.runner
        print(f"[bench_engine] {tag}: engine loaded in {time.perf_counter() - t0:.1f}s, "
              f"{runner.num_gpu_blocks} KV blocks, graphs={runner.graphs is not None}", flush=True)
        nan = float("nan")

        def decode() -> list[dict]:
            prompt = list(range(1000, 1128))
            llm.generate([prompt], max_tokens=8)  # warm-up
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = llm.generate([prompt], max_tokens=256)
            wall = time.perf_counter() - t
            assert len(out[0]["token_ids"]) == 256
            tps = 256 / wall
            floor_tps = bw / runner.model.weight_bytes()
            print(f"[bench_engine] {tag}: decode b1 {tps:.0f} tok/s, floor {floor_tps:.0f} tok/s, "
                  f"transformers {hf.get('decode', nan):.0f} tok/s", flush=True)
            return [row(BENCH, f"{tag} decode b1 (prompt 128, 256 new)", tps, "tok/s",
                        "transformers generate, static cache", hf.get("decode", nan),
                        "weight bytes / copy bandwidth", floor_tps),
                    row(BENCH, f"{tag} decode b1 fraction of bandwidth floor", tps / floor_tps, "ratio")]

        def offline() -> list[dict]:
            t = time.perf_counter()
            seqs = llm.run(requests)
            wall = time.perf_counter() - t
            out_tokens = sum(s.num_generated for s in seqs)
            assert out_tokens == sum(r.output_len for r in requests)
            sched = llm.last_scheduler
            tps = out_tokens / wall
            print(f"[bench_engine] {tag}: offline {n_requests} requests {tps:.0f} out tok/s in {wall:.1f}s, "
                  f"preemptions {sched.num_preemptions if sched else 'n/a'}", flush=True)
            return [row(BENCH, f"{tag} offline {n_requests} req, in/out U[100,1024]", tps, "out tok/s",
                        f"transformers generate, {HF_SUBSET}-request subset, one left-padded batch",
                        hf.get("offline", nan))]

        def prefill() -> list[dict]:
            lens = [2048] * 8
            bs = runner.block_size
            per = -(-2049 // bs)
            chunks = []
            for i, n in enumerate(lens):
                seq = Sequence(Request(f"p{i}", 0.0, n, 1, prompt_token_ids=tuple(range(5, 5 + n))))
                seq.block_table = list(range(i * per, (i + 1) * per))
                chunks.append(PrefillChunk(seq, 0, n))
            plan = StepPlan(0, 0.0, prefills=chunks, num_prefill_tokens=sum(lens))
            t = time_wall(lambda: runner.execute(plan), iters=5, warmup=2)
            flops = _prefill_flops(runner.spec, lens) / t
            print(f"[bench_engine] {tag}: prefill 8x2048 {sum(lens) / t:.0f} tok/s, "
                  f"{flops / 1e12:.0f} TFLOP/s (peak {peak / 1e12:.0f})", flush=True)
            return [row(BENCH, f"{tag} prefill 8x2048 tokens/s", sum(lens) / t, "tok/s"),
                    row(BENCH, f"{tag} prefill 8x2048 TFLOP/s", flops / 1e12, "TFLOPS",
                        ceiling="bf16 matmul peak", ceiling_value=peak / 1e12)]

        _case(rows, [(f"{tag} decode b1 (prompt 128, 256 new)", "tok/s"),
                     (f"{tag} decode b1 fraction of bandwidth floor", "ratio")], decode)
        _case(rows, [(f"{tag} offline {n_requests} req, in/out U[100,1024]", "out tok/s")], offline)
        _case(rows, [(f"{tag} prefill 8x2048 tokens/s", "tok/s"), (f"{tag} prefill 8x2048 TFLOP/s", "TFLOPS")],
              prefill)


def run(quick: bool = False) -> list[dict]:
    """Benchmark the engine; a failing case records NaN rows and prints its error.

    Args:
        quick: the 1B model only, 64 offline requests.

    Returns:
        Rows of ``benchmarks.common.row``.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("bench_engine needs a CUDA device")
    rows: list[dict] = []
    bw = measure_copy_bandwidth()
    peak = measure_matmul_peak()
    print(f"[bench_engine] copy bandwidth {bw / 1e9:.0f} GB/s, bf16 matmul peak {peak / 1e12:.0f} TFLOPS",
          flush=True)
    torch.cuda.empty_cache()
    for name in ("llama-3.2-1b",) if quick else ("llama-3.2-1b", "llama-3.2-3b"):
        try:
            _model_cases(rows, name, bw, peak, quick)
        except Exception as e:  # checkpoint build or engine load failed
            tag = name.replace("llama-3.2-", "").upper()
            note = f"error: {type(e).__name__}: {str(e)[:300]}"
            print(f"[bench_engine] {tag} FAILED: {note}", flush=True)
            rows.append(row(BENCH, f"{tag} model setup", float("nan"), "", reference=note))
        gc.collect()  # the runner and its graphs form a reference cycle
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    for r in run(quick=False):
        print(r)
