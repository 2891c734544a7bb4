"""Where a decode step's time goes, in calibration-style loops and in wall-clock replays: GPU or host.

    python -m benchmarks.step_timing --model DIR --out OUT [--traces SPEC ...] [--policy static]

One engine (the sim-vs-real suite's settings). Every graph replay is bracketed by CUDA events, so each
step's row holds its loop time (schedule + execute + postprocess), its ``execute`` time and the GPU time
of its graph replays. Order: calibration-style decode loops (``StepDriver.decode``) at a few batch
sizes, the replays of ``--traces``, then the same decode loops again. Writes ``OUT/step_timing.parquet``
(one row per step) and prints medians per phase and batch size; ``host = loop - gpu``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from engine.config import EngineConfig
from engine.cuda_graphs import GraphStep
from engine.model_runner import ModelRunner
from experiments.calibration_driver import StepDriver
from experiments.engine_run import load_requests, warm_up
from experiments.replay import replay
from policies.metrics import steps_frame
from policies.scheduler import Scheduler
from policies.scheduler_config import SchedulerConfig
from policies.spec import parse_policy


class StepClock:
    """Times every graph replay of ``runner`` with CUDA events and every ``execute`` on the host."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.events: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []  # (step, start, end)
        self.execs: list[tuple[int, float]] = []  # (step, execute seconds)
        self.step = 0
        graph_sets = [runner.graphs, runner.mixed_graphs]
        for graphs in (g for g in graph_sets if g is not None):
            for table in (graphs.graphs, getattr(graphs, "grouped", {})):
                for step in table.values():
                    if isinstance(step, GraphStep):
                        step.replay = self._timed(step.replay)  # this instance only
        self._execute = runner.execute

    def _timed(self, replay):  # noqa: ANN001, ANN202 - a bound method in, a wrapper out
        def run() -> None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            replay()
            end.record()
            self.events.append((self.step, start, end))
        return run

    def execute(self, plan):  # noqa: ANN001, ANN201 - the executor contract
        self.step += 1
        t0 = time.perf_counter()
        result = self._execute(plan)
        self.execs.append((self.step, time.perf_counter() - t0))
        return result

    def gpu_seconds(self) -> dict[int, float]:
        if self.events:  # none on the CPU (no graphs)
            torch.cuda.synchronize()
        out: dict[int, float] = {}
        for step, start, end in self.events:
            out[step] = out.get(step, 0.0) + start.elapsed_time(end) / 1e3
        return out


def decode_loops(driver: StepDriver, clock: StepClock, phase: str, batches: list[int], ctx: int,
                 repeats: int) -> list[dict]:
    rows = []
    for b in batches:
        first = clock.step + 1
        sample = driver.decode(b, ctx, 3, repeats)
        steps = range(clock.step - repeats + 1, clock.step + 1)
        assert steps.start >= first
        rows += [{"phase": phase, "step": s, "decodes": b, "prefill_tokens": 0, "mean_ctx": sample.ctx_tokens / b,
                  "loop_s": t} for s, t in zip(steps, sample.times, strict=True)]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--traces", nargs="*", default=[])
    p.add_argument("--policy", default="static")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--ctx", type=int, default=1400)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--num-gpu-blocks", type=int, default=None, help="KV pool (default: from free GPU memory)")
    ns = p.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = ModelRunner(EngineConfig(model=ns.model, max_model_len=ns.max_model_len,
                                      max_num_batched_tokens=65536, max_num_seqs=256,
                                      num_gpu_blocks=ns.num_gpu_blocks))
    warm_up(runner)
    clock = StepClock(runner)
    runner.execute = clock.execute  # this instance only: the driver and the replay call it
    driver = StepDriver(runner)
    rows = decode_loops(driver, clock, "loop-before", ns.batches, ns.ctx, ns.repeats)
    policy = parse_policy(ns.policy)
    for trace in ns.traces:
        label, reqs = load_requests(trace, runner.spec.vocab_size, runner.max_model_len)
        cfg = SchedulerConfig(num_gpu_blocks=runner.num_gpu_blocks, block_size=runner.block_size)
        sched = Scheduler(cfg, policy)
        first = clock.step + 1
        with tqdm(total=len(reqs), desc=label, unit="req") as bar:
            replay(reqs, sched, clock, on_step=lambda n: bar.update(n) if n else None)
        log = steps_frame(sched.step_log, runner.num_gpu_blocks)
        if len(log) != clock.step - first + 1:
            raise RuntimeError(f"{label}: {len(log)} logged steps but {clock.step - first + 1} executed")
        rows += [{"phase": label, "step": first + i, "decodes": int(s.decodes), "prefill_tokens": int(s.prefill_tokens),
                  "mean_ctx": s.decode_ctx_tokens / max(1, s.decodes), "loop_s": s.duration_s}
                 for i, s in enumerate(log.itertuples())]
    rows += decode_loops(driver, clock, "loop-after", ns.batches, ns.ctx, ns.repeats)
    gpu, execs = clock.gpu_seconds(), dict(clock.execs)
    frame = pd.DataFrame(rows)
    frame["exec_s"] = frame["step"].map(execs)
    frame["gpu_s"] = frame["step"].map(gpu)
    frame["host_s"] = frame["loop_s"] - frame["gpu_s"]
    frame.to_parquet(out / "step_timing.parquet")
    dec = frame[(frame.prefill_tokens == 0) & frame.decodes.isin(ns.batches)
                & frame.mean_ctx.between(ns.ctx * 0.6, ns.ctx * 1.5)]
    table = dec.groupby(["phase", "decodes"], sort=False)[["loop_s", "exec_s", "gpu_s", "host_s"]].median() * 1e3
    table["n"] = dec.groupby(["phase", "decodes"], sort=False).size()
    print(f"medians (ms) of decode-only steps at {ns.ctx * 0.6:.0f}-{ns.ctx * 1.5:.0f} tokens per sequence")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
