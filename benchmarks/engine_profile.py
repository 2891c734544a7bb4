"""Engine benchmark profiling: a per-step log of ``runner.execute`` and where a step's time goes
(GPU kernel tables, host-side ops of eager steps). CUDA only; nothing runs at import."""

from __future__ import annotations

import time

import torch

from benchmarks.engine_setup import log


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


def kernel_table(llm, prompt: list[int], steps: int = 8) -> None:
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
    log(f"  GPU kernels per eager decode step (1 prefill step included, /{steps}): "
         f"total {sum(r[0] for r in rows):.0f} us")
    for us, count, key in rows[:16]:
        log(f"    {us:8.1f} us  x{count:5.1f}  {key[:90]}")


def eager_prefill_profile(llm, vocab: int, tokens: int, reps: int = 5) -> None:
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
    log(f"  eager prefill of {tokens} tokens: {wall * 1e3:.2f} ms a request (generate, 1 token), "
         f"GPU kernels {gpu / 1e3:.2f} ms")
    rows = sorted(((e.self_cpu_time_total / reps, e.count / reps, e.key) for e in events), reverse=True)
    for us, count, key in rows[:14]:
        log(f"    host {us:8.1f} us  x{count:6.1f}  {key[:80]}")
