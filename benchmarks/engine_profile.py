"""Engine benchmark profiling: a per-step log of ``runner.execute`` and where a step's time goes
(GPU kernel tables, host-side ops of eager steps). CUDA only; nothing runs at import."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def eager_only(runner) -> Iterator[None]:
    """Run every step eagerly inside the block (the captured graphs are set aside, then restored)."""
    graphs, mixed = runner.graphs, runner.mixed_graphs
    runner.graphs = runner.mixed_graphs = None
    try:
        yield
    finally:
        runner.graphs, runner.mixed_graphs = graphs, mixed


def kernel_table(llm, prompt: list[int], steps: int = 8) -> None:
    """Print the GPU kernels of eager decode steps at batch 1 (per step), largest total first."""
    from torch.profiler import ProfilerActivity, profile

    with eager_only(llm.runner):
        llm.generate([prompt], max_tokens=2)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            llm.generate([prompt], max_tokens=steps + 1)
        torch.cuda.synchronize()
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
    """Print a prefill step's time as a captured graph and eagerly, and where the eager one's time goes:
    wall, GPU busy time, top host-side ops."""
    from torch.profiler import ProfilerActivity, profile

    prompt = [(7 * i + 11) % vocab for i in range(tokens)]

    def request_s() -> float:
        llm.generate([prompt], max_tokens=1)
        t0 = time.perf_counter()
        for _ in range(reps):
            llm.generate([prompt], max_tokens=1)
        return (time.perf_counter() - t0) / reps

    graphed = request_s()
    with eager_only(llm.runner):
        wall = request_s()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                llm.generate([prompt], max_tokens=1)
            torch.cuda.synchronize()
    events = prof.key_averages()
    gpu = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / reps
    log(f"  prefill of {tokens} tokens (generate, 1 token): graphed {graphed * 1e3:.2f} ms a request, "
         f"eager {wall * 1e3:.2f} ms, eager GPU kernels {gpu / 1e3:.2f} ms")
    rows = sorted(((e.self_cpu_time_total / reps, e.count / reps, e.key) for e in events), reverse=True)
    for us, count, key in rows[:14]:
        log(f"    host {us:8.1f} us  x{count:6.1f}  {key[:80]}")


def host_breakdown(runner, reps: int = 200) -> str:
    """Host microseconds of a batch-1 graph decode step's parts, each timed with the GPU idle before it.

    One made-up sequence (a 128-token prompt in blocks 1.., its KV slots overwritten) is staged and
    replayed: staging into the pinned mirror with its copy, the graph launch (``CUDAGraph.replay``), both
    (``DecodeGraphs.run``), and a whole ``runner.execute`` (wall, including the GPU step and the id
    readback). Medians of ``reps`` calls.
    """
    import statistics

    from policies.sequence import Sequence
    from policies.types import Request, StepPlan

    graphs = runner.graphs
    if graphs is None or 1 not in graphs.graphs:
        return "host breakdown: no batch-1 decode graph"
    seq = Sequence(Request("host-breakdown", 0.0, 128, 256, prompt_token_ids=tuple(range(128))))
    seq.block_table = list(range(1, 1 + -(-129 // runner.block_size)))
    seq.num_computed = 127

    def timed(fn) -> float:
        out = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        torch.cuda.synchronize()
        return statistics.median(out) * 1e6

    stage = timed(lambda: graphs.inputs.stage([seq], 1))
    replay = timed(graphs.graphs[1].replay)
    both = timed(lambda: graphs.run([seq]))
    execute = timed(lambda: runner.execute(StepPlan(0, 0.0, decodes=[seq])))
    return (f"host per batch-1 graph step (GPU idle before each part): stage + copy {stage:.1f} us, "
            f"graph.replay() {replay:.1f} us, both {both:.1f} us; whole execute() {execute:.1f} us wall "
            "(GPU step and id readback included)")
