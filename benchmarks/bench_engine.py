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
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import measure_copy_bandwidth, measure_matmul_peak, row, time_cuda, time_wall
from benchmarks.engine_profile import StepLog, eager_only, eager_prefill_profile, host_breakdown, kernel_table
from benchmarks.engine_setup import (
    HF_OFFLINE,
    MAX_MODEL_LEN,
    TOKEN_BUDGET,
    hf_baselines,
    log,
    offline_requests,
    write_checkpoint,
)

BENCH = "engine"


def _prefill_flops(spec, lens: list[int]) -> float:
    """Matmul FLOPs of a prefill: linear layers per token, plus causal q.k and p.v per sequence."""
    h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
    linear = h * (q + 2 * kv) + q * h + 3 * h * inter
    attn = sum(n * (n + 1) // 2 for n in lens) * 4 * q
    return spec.num_layers * (2 * sum(lens) * linear + attn)


def _decode_case(llm, tag: str, bw: float, hf: dict[str, float], profile_kernels: bool) -> list[dict]:
    runner = llm.runner
    prompt = list(range(1000, 1128))
    llm.generate([prompt], max_tokens=8)  # warm-up
    torch.cuda.synchronize()
    with StepLog(runner) as steps_log:
        t = time.perf_counter()
        out = llm.generate([prompt], max_tokens=256)
        wall = time.perf_counter() - t
    assert len(out[0]["token_ids"]) == 256
    tps = 256 / wall
    floor_tps = bw / runner.model.weight_bytes()
    graph_steps = [s for s in steps_log.steps if s[0]]
    exec_ms = statistics.median(s[3] for s in graph_steps) * 1e3 if graph_steps else float("nan")
    launch_ms = statistics.median(s[4] for s in graph_steps) * 1e3 if graph_steps else float("nan")
    loop_ms = (wall - sum(s[3] for s in steps_log.steps)) / len(steps_log.steps) * 1e3
    replay_ms = readback_ms = float("nan")
    if runner.graphs is not None:
        replay_ms = time_cuda(lambda: runner.graphs.replay_static(1), iters=50) * 1e3
        readback_ms = time_wall(lambda: runner.graphs.replay_static(1).tolist(), iters=50) * 1e3
    with eager_only(runner), StepLog(runner) as eager_log:
        llm.generate([prompt], max_tokens=17)
    eager_ms = statistics.median(s[3] for s in eager_log.steps if s[1] == 0) * 1e3
    prefill_ms = statistics.median(s[3] for s in steps_log.steps if s[1]) * 1e3
    eager_prefill_ms = statistics.median(s[3] for s in eager_log.steps if s[1]) * 1e3
    nan = float("nan")
    log(f"{tag}: decode b1 {tps:.0f} tok/s ({1e3 / tps:.3f} ms/token), floor {floor_tps:.0f} tok/s "
         f"({1e3 / floor_tps:.3f} ms), transformers eager static cache {hf.get('decode', nan):.0f} tok/s")
    log(f"  per step: execute() {exec_ms:.3f} ms (host until graph launch {launch_ms:.3f} ms), "
         f"loop outside execute {loop_ms:.3f} ms; graph replay alone {replay_ms:.3f} ms GPU, "
         f"replay + id readback {readback_ms:.3f} ms wall; eager decode step {eager_ms:.3f} ms; "
         f"prefill step (128 tokens) {prefill_ms:.3f} ms, eager {eager_prefill_ms:.3f} ms; "
         f"{len(graph_steps)}/{len(steps_log.steps)} steps on graphs")
    for line in runner.choice_summary() or ["kernel choices: none made"]:
        log(f"  {line}")
    if profile_kernels:
        log(f"  {host_breakdown(llm.runner)}")
        try:
            kernel_table(llm, prompt)
        except Exception as e:
            log(f"  kernel table failed: {type(e).__name__}: {e}")
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
            row(BENCH, f"{name} eager decode step", eager_ms, "ms"),
            row(BENCH, f"{name} prefill step (128 tokens)", prefill_ms, "ms", "the same step eager",
                eager_prefill_ms)]


def _offline_case(llm, tag: str, requests: list, hf: dict[str, float]) -> list[dict]:
    with StepLog(llm.runner) as steps_log:
        t = time.perf_counter()
        seqs = llm.run(requests)
        wall = time.perf_counter() - t
    out_tokens = sum(s.num_generated for s in seqs)
    assert out_tokens == sum(r.output_len for r in requests)
    tps = out_tokens / wall
    graph = [s[3] for s in steps_log.steps if s[0] and not s[1]]
    mixed = [s[3] for s in steps_log.steps if s[0] and s[1]]
    eager = [s[3] for s in steps_log.steps if not s[0]]
    slow = sorted(steps_log.steps, key=lambda s: -s[3])[:3]
    sched = llm.last_scheduler
    log(f"{tag}: offline {len(requests)} requests {tps:.0f} out tok/s in {wall:.1f}s, preemptions "
         f"{sched.num_preemptions if sched else 'n/a'}; {len(graph)} graph decode steps {sum(graph):.2f}s, "
         f"{len(mixed)} graph prefill steps {sum(mixed):.2f}s, {len(eager)} eager steps {sum(eager):.2f}s, "
         f"outside {wall - sum(graph) - sum(mixed) - sum(eager):.2f}s; "
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
    log(f"{tag}: prefill 8x2048 {sum(lens) / t:.0f} tok/s, {flops / 1e12:.0f} TFLOP/s "
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
        log(f"{tag}: {kv} KV {blocks} blocks vs bf16 {bf16_blocks}: {blocks // per_seq} vs "
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
        log(f"FAILED {case}: {note}")
        rows.append(row(BENCH, case, float("nan"), "", reference=note))
    torch.cuda.empty_cache()
    log(f"  ({case}: {time.perf_counter() - t:.1f}s)")


def _model_cases(rows: list[dict], name: str, bw: float, peak: float, quick: bool) -> None:
    from engine import LLM

    tag = name.replace("llama-3.2-", "").upper()
    n_requests = 64 if quick else 256
    with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        cfg = write_checkpoint(name, folder)
        log(f"{tag}: checkpoint written in {time.perf_counter() - t0:.1f}s")
        requests = offline_requests(n_requests, cfg["vocab_size"])
        t0 = time.perf_counter()
        try:
            hf = hf_baselines(folder, requests, cfg["vocab_size"])
        except Exception as e:
            log(f"{tag}: transformers baselines failed: {type(e).__name__}: {e}")
            hf = {}
        gc.collect()
        torch.cuda.empty_cache()
        log(f"{tag}: transformers baselines {hf} in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        llm = LLM(str(folder), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, token_budget=TOKEN_BUDGET,
                  gpu_memory_utilization=0.85)
        runner = llm.runner
        log(f"{tag}: engine loaded in {time.perf_counter() - t0:.1f}s, {runner.num_gpu_blocks} KV blocks, "
             f"decode graphs {runner.graphs.sizes if runner.graphs else None}, "
             f"prefill graphs {runner.mixed_graphs.sizes if runner.mixed_graphs else None}")
        _case(rows, f"{tag} decode b1", lambda: _decode_case(llm, tag, bw, hf, profile_kernels=tag == "1B"))
        _case(rows, f"{tag} offline", lambda: _offline_case(llm, tag, requests, hf))
        _case(rows, f"{tag} prefill 8x2048", lambda: _prefill_case(runner, tag, peak))
        if tag == "1B":
            for n in (64, 1024):
                _case(rows, f"{tag} eager profile {n}", lambda n=n: eager_prefill_profile(llm, cfg["vocab_size"], n)
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
    log(f"copy bandwidth {bw / 1e9:.0f} GB/s, bf16 matmul peak {peak / 1e12:.0f} TFLOPS")
    torch.cuda.empty_cache()
    for name in ("llama-3.2-1b",) if quick else ("llama-3.2-1b", "llama-3.2-3b"):
        t0 = time.perf_counter()
        try:
            _model_cases(rows, name, bw, peak, quick)
        except Exception as e:  # checkpoint or engine load failed
            tag = name.replace("llama-3.2-", "").upper()
            note = f"error: {type(e).__name__}: {str(e)[:300]}"
            log(f"{tag} FAILED: {note}")
            rows.append(row(BENCH, f"{tag} model setup", float("nan"), "", reference=note))
        gc.collect()  # the runner and its graphs form a reference cycle
        torch.cuda.empty_cache()
        log(f"{name} done in {time.perf_counter() - t0:.1f}s")
    return rows


def int4_only() -> list[dict]:
    """The 1B batch-1 decode, bf16 then INT4 weights, in one process (for a short device call)."""
    from engine import LLM

    bw = measure_copy_bandwidth()
    with tempfile.TemporaryDirectory(prefix="bench_int4_") as tmp:
        folder = Path(tmp)
        write_checkpoint("llama-3.2-1b", folder)
        llm = LLM(str(folder), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, token_budget=TOKEN_BUDGET,
                  gpu_memory_utilization=0.85)
        rows = _decode_case(llm, "1B", bw, {}, profile_kernels=False)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        return rows + _int4_case(folder, "1B", bw, rows)


if __name__ == "__main__":
    import sys

    from benchmarks.decode_ab import decode_variants, parse_variants

    argv = sys.argv[1:]
    mode = argv[0] if argv else ""
    presets = {"--fused-ab": "fused_decode=false,true", "--fused-ba": "fused_decode=true,false"}
    if mode == "--int4-only":
        rows = int4_only()
    elif mode == "--decode-ab" or mode in presets:
        rows = decode_variants(*parse_variants(argv[1:] if mode == "--decode-ab" else [presets[mode]]))
    else:
        rows = run(quick=False)
    for r in rows:
        print(r)
