"""GPU benchmark of the whole engine on random bf16 Llama 3.2 1B and 3B checkpoints (CUDA only).

Per model (shapes from sim/models/llama-3.2-*.json, public shapes if absent), random weights are drawn on
the GPU and written as one safetensors file (no transformers model init), then:

* transformers baselines on the same weights, eager (``disable_compile``; compiling would dominate the
  budget): batch-1 greedy decode with a static cache (steady-state tokens/s between 16 and 64 new
  tokens), and one left-padded batch of 8 of the offline prompts with 128 new tokens each;
* the engine (continuous batching, CUDA graphs for decode, Triton kernels):
  - decode at batch 1 (prompt 128, 256 new tokens): tokens/s against the memory-bandwidth floor (weight
    bytes read per step / measured device-copy bandwidth), with a breakdown of the step: graph replay
    alone (CUDA events), execute() per step, host time until the graph launch, loop overhead (scheduler,
    postprocess), an eager step, the start-up GEMV choice, and (1B) a kernel table of eager decode steps;
  - offline throughput: 256 requests with prompt and output lengths uniform in [100, 1024] (seeded), EOS
    ignored: output tokens/s (wall clock of the whole run), with graph / eager step totals;
  - prefill of 8 x 2048 tokens in one step: tokens/s and TFLOP/s against the bf16 matmul peak.

Every case is wrapped: a failure records NaN rows and prints the error; the run goes on.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import measure_copy_bandwidth, measure_matmul_peak, row, time_cuda, time_wall

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
HF_OFFLINE = (8, 128)  # transformers offline baseline: requests, new tokens each


def _log(msg: str) -> None:
    print(f"[bench_engine] {msg}", flush=True)


def _hf_config(name: str) -> dict:
    path = MODELS_DIR / f"{name}.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {**COMMON, **PUBLIC_SHAPES[name]}
    return {**cfg, "torch_dtype": "bfloat16"}


def _write_checkpoint(name: str, folder: Path) -> dict:
    """Random bf16 weights (N(0, 0.02), unit norms) drawn on the GPU, saved as HF Llama tensors."""
    from safetensors.torch import save_file

    cfg = _hf_config(name)
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter)})
    gen = torch.Generator(device="cuda").manual_seed(0)
    tensors = {}
    for key, shape in shapes.items():
        if len(shape) == 1:
            tensors[key] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32).mul_(0.02)
            tensors[key] = t.to(torch.bfloat16).cpu()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg))
    return cfg


def _requests(n: int, vocab: int, lo: int = 100, hi: int = 1024, seed: int = 0) -> list:
    from policies.types import Request

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, o = rng.randint(lo, hi), rng.randint(lo, hi)
        ids = tuple(rng.randrange(vocab) for _ in range(p))
        out.append(Request(f"r{i}", 0.0, p, o, prompt_token_ids=ids))
    return out


def _hf_baselines(folder: Path, requests: list, vocab: int) -> dict[str, float]:
    """transformers (eager) decode tok/s at batch 1 with a static cache, and offline useful tok/s."""
    from transformers import LlamaForCausalLM

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).to("cuda").eval()
    _log(f"  transformers model loaded in {time.perf_counter() - t0:.1f}s")
    kw = {"do_sample": False, "pad_token_id": 0, "disable_compile": True}
    try:
        ids = torch.randint(0, vocab, (1, 128), device="cuda")

        def gen(n: int) -> float:
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, cache_implementation="static", **kw)
            torch.cuda.synchronize()
            return time.perf_counter() - t

        gen(16)  # warm-up
        out["decode"] = 48 / (gen(64) - gen(16))
    except Exception as e:  # the engine's figures do not depend on the baseline
        _log(f"  transformers decode baseline failed: {type(e).__name__}: {e}")
    try:
        n, new = HF_OFFLINE
        prompts = [list(r.prompt_token_ids) for r in requests[:n]]
        longest = max(map(len, prompts))
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device="cuda")
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, **kw)
        torch.cuda.synchronize()
        out["offline"] = n * new / (time.perf_counter() - t)
    except Exception as e:
        _log(f"  transformers offline baseline failed: {type(e).__name__}: {e}")
    return out  # the caller frees the model's memory (gc + empty_cache) once this frame is gone


class StepLog:
    """Records ``(graph, prefills, decodes, duration_s, launch_s)`` of each ``runner.execute``."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.steps: list[tuple[bool, int, int, float, float]] = []

    def __enter__(self) -> StepLog:
        runner, original = self.runner, self.runner.execute

        def execute(plan):
            graph = runner.uses_graph(plan)
            res = original(plan)
            self.steps.append((graph, len(plan.prefills), len(plan.decodes), res.duration_s,
                               runner.last_launch_s if graph else float("nan")))
            return res

        runner.execute = execute  # instance attribute shadows the method
        return self

    def __exit__(self, *exc: object) -> None:
        del self.runner.execute


def _prefill_flops(spec, lens: list[int]) -> float:
    """Matmul FLOPs of a prefill: linear layers per token, plus causal q.k and p.v per sequence."""
    h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
    linear = h * (q + 2 * kv) + q * h + 3 * h * inter
    attn = sum(n * (n + 1) // 2 for n in lens) * 4 * q
    return spec.num_layers * (2 * sum(lens) * linear + attn)


def _kernel_table(llm, prompt: list[int], steps: int = 8) -> None:
    """Print the GPU kernels of eager decode steps at batch 1 (per step), largest total first."""
    from torch.profiler import ProfilerActivity, profile

    runner = llm.runner
    graphs, runner.graphs = runner.graphs, None
    try:
        llm.generate([prompt], max_tokens=2)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            llm.generate([prompt], max_tokens=steps + 1)
        torch.cuda.synchronize()
    finally:
        runner.graphs = graphs
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        if us > 0:
            rows.append((us / steps, e.count / steps, e.key))
    rows.sort(reverse=True)
    _log(f"  GPU kernels per eager decode step (1 prefill step included, /{steps}): "
         f"total {sum(r[0] for r in rows):.0f} us")
    for us, count, key in rows[:16]:
        _log(f"    {us:8.1f} us  x{count:5.1f}  {key[:90]}")


def _eager_prefill_profile(llm, vocab: int, tokens: int, reps: int = 5) -> None:
    """Print where an eager prefill step's time goes: wall, GPU busy time, top host-side ops."""
    from torch.profiler import ProfilerActivity, profile

    prompt = [(7 * i + 11) % vocab for i in range(tokens)]
    llm.generate([prompt], max_tokens=1)
    t0 = time.perf_counter()
    for _ in range(reps):
        llm.generate([prompt], max_tokens=1)
    wall = (time.perf_counter() - t0) / reps
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            llm.generate([prompt], max_tokens=1)
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / reps
    _log(f"  eager prefill of {tokens} tokens: {wall * 1e3:.2f} ms a request (generate, 1 token), "
         f"GPU kernels {gpu / 1e3:.2f} ms")
    rows = sorted(((e.self_cpu_time_total / reps, e.count / reps, e.key) for e in events), reverse=True)
    for us, count, key in rows[:14]:
        _log(f"    host {us:8.1f} us  x{count:6.1f}  {key[:80]}")


def _decode_case(llm, tag: str, bw: float, hf: dict[str, float], profile_kernels: bool) -> list[dict]:
    runner = llm.runner
    prompt = list(range(1000, 1128))
    llm.generate([prompt], max_tokens=8)  # warm-up
    torch.cuda.synchronize()
    with StepLog(runner) as log:
        t = time.perf_counter()
        out = llm.generate([prompt], max_tokens=256)
        wall = time.perf_counter() - t
    assert len(out[0]["token_ids"]) == 256
    tps = 256 / wall
    floor_tps = bw / runner.model.weight_bytes()
    graph_steps = [s for s in log.steps if s[0]]
    exec_ms = statistics.median(s[3] for s in graph_steps) * 1e3 if graph_steps else float("nan")
    launch_ms = statistics.median(s[4] for s in graph_steps) * 1e3 if graph_steps else float("nan")
    loop_ms = (wall - sum(s[3] for s in log.steps)) / len(log.steps) * 1e3
    replay_ms = readback_ms = float("nan")
    if runner.graphs is not None:
        replay_ms = time_cuda(lambda: runner.graphs.replay_static(1), iters=50) * 1e3
        readback_ms = time_wall(lambda: runner.graphs.replay_static(1).tolist(), iters=50) * 1e3
    graphs, runner.graphs = runner.graphs, None
    try:
        with StepLog(runner) as eager_log:
            llm.generate([prompt], max_tokens=17)
    finally:
        runner.graphs = graphs
    eager_ms = statistics.median(s[3] for s in eager_log.steps if s[1] == 0) * 1e3
    nan = float("nan")
    _log(f"{tag}: decode b1 {tps:.0f} tok/s ({1e3 / tps:.3f} ms/token), floor {floor_tps:.0f} tok/s "
         f"({1e3 / floor_tps:.3f} ms), transformers eager static cache {hf.get('decode', nan):.0f} tok/s")
    _log(f"  per step: execute() {exec_ms:.3f} ms (host until graph launch {launch_ms:.3f} ms), "
         f"loop outside execute {loop_ms:.3f} ms; graph replay alone {replay_ms:.3f} ms GPU, "
         f"replay + id readback {readback_ms:.3f} ms wall; eager step {eager_ms:.3f} ms; "
         f"{len(graph_steps)}/{len(log.steps)} steps on graphs")
    for g in runner.gemv_timings:
        _log(f"  gemv choice {g.kind:8s} {g.shape}: F.linear {g.linear_us:.1f} us, "
             f"gemv_bf16 {g.gemv_us:.1f} us -> {'gemv' if g.chosen else 'F.linear'} {g.note}")
    if profile_kernels:
        try:
            _kernel_table(llm, prompt)
        except Exception as e:
            _log(f"  kernel table failed: {type(e).__name__}: {e}")
    name = f"{tag} decode b1"
    return [row(BENCH, f"{name} (prompt 128, 256 new)", tps, "tok/s",
                "transformers generate, static cache, eager", hf.get("decode", nan),
                "weight bytes / copy bandwidth", floor_tps),
            row(BENCH, f"{name} fraction of bandwidth floor", tps / floor_tps, "ratio"),
            row(BENCH, f"{name} graph replay alone (GPU)", replay_ms, "ms", ceiling="floor ms",
                ceiling_value=1e3 / floor_tps),
            row(BENCH, f"{name} execute() per step", exec_ms, "ms"),
            row(BENCH, f"{name} host until graph launch", launch_ms, "ms"),
            row(BENCH, f"{name} loop outside execute() per step", loop_ms, "ms"),
            row(BENCH, f"{name} eager step", eager_ms, "ms")]


def _offline_case(llm, tag: str, requests: list, hf: dict[str, float]) -> list[dict]:
    with StepLog(llm.runner) as log:
        t = time.perf_counter()
        seqs = llm.run(requests)
        wall = time.perf_counter() - t
    out_tokens = sum(s.num_generated for s in seqs)
    assert out_tokens == sum(r.output_len for r in requests)
    tps = out_tokens / wall
    graph = [s[3] for s in log.steps if s[0]]
    eager = [s[3] for s in log.steps if not s[0]]
    slow = sorted(log.steps, key=lambda s: -s[3])[:3]
    sched = llm.last_scheduler
    _log(f"{tag}: offline {len(requests)} requests {tps:.0f} out tok/s in {wall:.1f}s, preemptions "
         f"{sched.num_preemptions if sched else 'n/a'}; {len(graph)} graph steps {sum(graph):.2f}s, "
         f"{len(eager)} eager steps {sum(eager):.2f}s, outside {wall - sum(graph) - sum(eager):.2f}s; "
         "slowest " + ", ".join(f"{d * 1e3:.0f} ms ({p} prefills, {n} decodes)" for _, p, n, d, _ in slow))
    n, new = HF_OFFLINE
    return [row(BENCH, f"{tag} offline {len(requests)} req, in/out U[100,1024]", tps, "out tok/s",
                f"transformers generate eager, {n} requests x {new} new tokens, one left-padded batch",
                hf.get("offline", float("nan")))]


def _prefill_case(runner, tag: str, peak: float) -> list[dict]:
    from policies.sequence import Sequence
    from policies.types import PrefillChunk, Request, StepPlan

    lens = [2048] * 8
    per = -(-2049 // runner.block_size)
    chunks = []
    for i, n in enumerate(lens):
        seq = Sequence(Request(f"p{i}", 0.0, n, 1, prompt_token_ids=tuple(range(5, 5 + n))))
        seq.block_table = list(range(i * per, (i + 1) * per))
        chunks.append(PrefillChunk(seq, 0, n))
    plan = StepPlan(0, 0.0, prefills=chunks, num_prefill_tokens=sum(lens))
    t = time_wall(lambda: runner.execute(plan), iters=5, warmup=2)
    flops = _prefill_flops(runner.spec, lens) / t
    _log(f"{tag}: prefill 8x2048 {sum(lens) / t:.0f} tok/s, {flops / 1e12:.0f} TFLOP/s "
         f"(peak {peak / 1e12:.0f})")
    return [row(BENCH, f"{tag} prefill 8x2048 tokens/s", sum(lens) / t, "tok/s"),
            row(BENCH, f"{tag} prefill 8x2048 TFLOP/s", flops / 1e12, "TFLOPS", ceiling="bf16 matmul peak",
                ceiling_value=peak / 1e12)]


def _int4_case(folder: Path, tag: str, bw: float, rows: list[dict]) -> list[dict]:
    """Batch-1 decode with INT4 weights, beside the bf16 engine's figure from this run."""
    from engine import LLM

    bf16 = next((r["value"] for r in rows if r["case"] == f"{tag} decode b1 (prompt 128, 256 new)"), float("nan"))
    llm = LLM(str(folder), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, token_budget=TOKEN_BUDGET,
              gpu_memory_utilization=0.85, quantization="int4")
    try:
        out = _decode_case(llm, f"{tag} int4", bw, {"decode": bf16}, profile_kernels=False)
    finally:
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    for r in out:
        if r["unit"] == "tok/s":
            r["reference"] = "bf16 engine, same run"
    return out


def _kv_capacity_case(folder: Path, tag: str, bf16_blocks: int) -> list[dict]:
    """Concurrent 2k-token sequences that fit with FP8 / INT8 KV against bf16 KV (same memory budget)."""
    from engine import EngineConfig, ModelRunner

    out = []
    per_seq = -(-2048 // 16)
    for kv in ("fp8", "int8"):
        runner = ModelRunner(EngineConfig(model=str(folder), dtype="bfloat16", max_model_len=MAX_MODEL_LEN,
                                          gpu_memory_utilization=0.85, kv_cache_dtype=kv, enforce_eager=True))
        blocks = runner.num_gpu_blocks
        del runner
        gc.collect()
        torch.cuda.empty_cache()
        _log(f"{tag}: {kv} KV {blocks} blocks vs bf16 {bf16_blocks}: {blocks // per_seq} vs "
             f"{bf16_blocks // per_seq} concurrent 2k-token sequences")
        out.append(row(BENCH, f"{tag} {kv} KV: concurrent 2k-token sequences", blocks // per_seq, "seqs",
                       "bf16 KV, same run", bf16_blocks // per_seq))
    return out


def _case(rows: list[dict], case: str, fn: Callable[[], list[dict]]) -> None:
    """Run ``fn``; on failure one NaN row named ``case`` with the error; prints the case's time."""
    t = time.perf_counter()
    try:
        rows.extend(fn())
    except Exception as e:  # one failing case must not abort the others
        note = f"error: {type(e).__name__}: {str(e)[:300]}"
        _log(f"FAILED {case}: {note}")
        rows.append(row(BENCH, case, float("nan"), "", reference=note))
    torch.cuda.empty_cache()
    _log(f"  ({case}: {time.perf_counter() - t:.1f}s)")


def _model_cases(rows: list[dict], name: str, bw: float, peak: float, quick: bool) -> None:
    from engine import LLM

    tag = name.replace("llama-3.2-", "").upper()
    n_requests = 64 if quick else 256
    with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        cfg = _write_checkpoint(name, folder)
        _log(f"{tag}: checkpoint written in {time.perf_counter() - t0:.1f}s")
        requests = _requests(n_requests, cfg["vocab_size"])
        t0 = time.perf_counter()
        try:
            hf = _hf_baselines(folder, requests, cfg["vocab_size"])
        except Exception as e:
            _log(f"{tag}: transformers baselines failed: {type(e).__name__}: {e}")
            hf = {}
        gc.collect()
        torch.cuda.empty_cache()
        _log(f"{tag}: transformers baselines {hf} in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        llm = LLM(str(folder), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, token_budget=TOKEN_BUDGET,
                  gpu_memory_utilization=0.85)
        runner = llm.runner
        _log(f"{tag}: engine loaded in {time.perf_counter() - t0:.1f}s, {runner.num_gpu_blocks} KV blocks, "
             f"graphs={runner.graphs is not None}")
        _case(rows, f"{tag} decode b1", lambda: _decode_case(llm, tag, bw, hf, profile_kernels=tag == "1B"))
        _case(rows, f"{tag} offline", lambda: _offline_case(llm, tag, requests, hf))
        _case(rows, f"{tag} prefill 8x2048", lambda: _prefill_case(runner, tag, peak))
        if tag == "1B":
            for n in (64, 1024):
                _case(rows, f"{tag} eager profile {n}", lambda n=n: _eager_prefill_profile(llm, cfg["vocab_size"], n)
                      or [])
        if tag == "1B" and not quick:
            bf16_blocks = runner.num_gpu_blocks
            del llm, runner
            gc.collect()
            torch.cuda.empty_cache()
            _case(rows, f"{tag} int4 decode b1", lambda: _int4_case(folder, tag, bw, rows))
            _case(rows, f"{tag} KV capacity", lambda: _kv_capacity_case(folder, tag, bf16_blocks))


def run(quick: bool = False) -> list[dict]:
    """Benchmark the engine; a failing case records a NaN row and prints its error.

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
    _log(f"copy bandwidth {bw / 1e9:.0f} GB/s, bf16 matmul peak {peak / 1e12:.0f} TFLOPS")
    torch.cuda.empty_cache()
    for name in ("llama-3.2-1b",) if quick else ("llama-3.2-1b", "llama-3.2-3b"):
        t0 = time.perf_counter()
        try:
            _model_cases(rows, name, bw, peak, quick)
        except Exception as e:  # checkpoint or engine load failed
            tag = name.replace("llama-3.2-", "").upper()
            note = f"error: {type(e).__name__}: {str(e)[:300]}"
            _log(f"{tag} FAILED: {note}")
            rows.append(row(BENCH, f"{tag} model setup", float("nan"), "", reference=note))
        gc.collect()  # the runner and its graphs form a reference cycle
        torch.cuda.empty_cache()
        _log(f"{name} done in {time.perf_counter() - t0:.1f}s")
    return rows


def int4_only() -> list[dict]:
    """The 1B batch-1 decode, bf16 then INT4 weights, in one process (for a short device call)."""
    from engine import LLM

    bw = measure_copy_bandwidth()
    with tempfile.TemporaryDirectory(prefix="bench_int4_") as tmp:
        folder = Path(tmp)
        _write_checkpoint("llama-3.2-1b", folder)
        llm = LLM(str(folder), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, token_budget=TOKEN_BUDGET,
                  gpu_memory_utilization=0.85)
        rows = _decode_case(llm, "1B", bw, {}, profile_kernels=False)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        return rows + _int4_case(folder, "1B", bw, rows)


if __name__ == "__main__":
    import sys

    for r in int4_only() if "--int4-only" in sys.argv[1:] else run(quick=False):
        print(r)
