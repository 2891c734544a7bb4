"""Where a step's time goes, in calibration-style loops and in wall-clock replays: GPU or host.

    python -m benchmarks.step_timing --model DIR --out OUT [--traces SPEC ...] [--policy static]
        [--decode-lookahead] [--cold] [--mixed T:D:CTX ...] [--prefill T:CTX ...]

One engine (the sim-vs-real suite's settings). Every graph replay is bracketed by CUDA events, so each
step's row holds its loop time (schedule + execute + postprocess), its ``execute`` time and the GPU time
of its own graph replays (``gpu_s``). With ``--decode-lookahead`` a step served by a looked-ahead step
launches nothing of its own: its ``gpu_s`` is the GPU time of the replay the step before launched for it
(``served`` says which steps those are; ``wasted_gpu_s`` is a dropped looked-ahead step's GPU time, charged
to the step that dropped it). Order: calibration-style loops (``StepDriver``: decode loops at a few batch
sizes, cold ones with ``--cold``, mixed steps of one T-token chunk beside D decodes at CTX tokens each,
prefills of T tokens on CTX cached ones), the replays of ``--traces``, then the decode loops again. Writes
``OUT/step_timing.parquet`` (one row per step) and prints medians per phase and shape; ``host = loop - gpu``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
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
from policies.types import StepPlan, StepResult


class StepClock:
    """Times every graph replay of ``runner`` with CUDA events and every ``execute`` on the host."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        # (step, start, end, launched by the lookahead)
        self.events: list[tuple[int, torch.cuda.Event, torch.cuda.Event, bool]] = []
        self.steps: dict[int, dict] = {}  # step -> plan aggregates, execute seconds, served
        self.step = 0
        self._ahead = False
        graph_sets = [runner.graphs, runner.mixed_graphs]
        for graphs in (g for g in graph_sets if g is not None):
            for table in (graphs.graphs, getattr(graphs, "grouped", {})):
                for step in table.values():
                    if isinstance(step, GraphStep):
                        step.replay = self._timed(step.replay)  # this instance only
        self._execute = runner.execute
        ahead = runner.lookahead
        if ahead is not None:
            launch = ahead.launch_after

            def tagged(plan: StepPlan, rows: int) -> None:
                self._ahead = True
                try:
                    launch(plan, rows)
                finally:
                    self._ahead = False
            ahead.launch_after = tagged  # this instance only

    def _timed(self, replay: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            replay()
            end.record()
            self.events.append((self.step, start, end, self._ahead))
        return run

    def execute(self, plan: StepPlan) -> StepResult:
        """The runner's ``execute``, timed, its plan's aggregates kept."""
        self.step += 1
        ahead = self.runner.lookahead
        hits = ahead.hits if ahead is not None else 0
        t0 = time.perf_counter()
        result = self._execute(plan)
        self.steps[self.step] = {
            "exec_s": time.perf_counter() - t0, "served": ahead is not None and ahead.hits > hits,
            "decodes": len(plan.decodes), "prefills": len(plan.prefills), "prefill_tokens": plan.num_prefill_tokens,
            "decode_ctx_tokens": plan.decode_ctx_tokens, "prefill_ctx_tokens": plan.prefill_ctx_tokens,
            "prefill_attn_pairs": plan.prefill_attn_pairs}
        return result

    def gpu_seconds(self) -> pd.DataFrame:
        """Per step: ``gpu_s`` (its own replays, or the looked-ahead replay that served it) and
        ``wasted_gpu_s`` (a looked-ahead replay launched in the step before that it dropped)."""
        if self.events:  # none on the CPU (no graphs)
            torch.cuda.synchronize()
        own: dict[int, float] = {}
        ahead: dict[int, float] = {}  # launched in step s, for step s + 1
        for step, start, end, looked in self.events:
            t = start.elapsed_time(end) / 1e3
            table = ahead if looked else own
            table[step] = table.get(step, 0.0) + t
        rows = []
        for step, info in self.steps.items():
            before = ahead.get(step - 1, 0.0)
            rows.append({"step": step, "gpu_s": before if info["served"] else own.get(step, 0.0),
                         "wasted_gpu_s": 0.0 if info["served"] else before})
        return pd.DataFrame(rows)


def shapes(specs: list[str], arity: int, flag: str) -> list[tuple[int, ...]]:
    out = []
    for s in specs:
        parts = s.split(":")
        if len(parts) != arity or not all(p.isdigit() for p in parts):
            raise SystemExit(f"step_timing: {flag} {s!r}: need {arity} non-negative integers joined by ':'")
        out.append(tuple(int(p) for p in parts))
    return out


def timed_loops(driver: StepDriver, clock: StepClock, phase: str, ns: argparse.Namespace, rows: list[dict],
                extra: bool) -> None:
    """Run the loops of ``ns`` on ``driver``, one row per step in ``rows`` (loop time from ``driver.step``)."""
    step = driver.step

    def timed(sched: Scheduler) -> tuple[StepPlan, float, float]:
        plan, dt, tail = step(sched)
        rows.append({"phase": phase, "step": clock.step, "loop_s": dt, "tail_s": tail})
        return plan, dt, tail
    def labelled(suffix: str, loop: Callable[[], object]) -> None:
        n = len(rows)
        loop()
        for r in rows[n:]:
            r["phase"] = phase + suffix

    driver.step = timed  # this instance only
    try:
        for b in ns.batches:
            driver.decode(b, ns.ctx, 3, ns.repeats)
            if ns.cold:
                labelled("-cold", lambda b=b: driver.decode(b, ns.ctx, 3, ns.repeats, cold=True))
        if extra:
            for t, d, c in ns.mixed:
                labelled("-mixed", lambda t=t, d=d, c=c: driver.mixed(t, d, c, 3, ns.repeats))
            for t, c in ns.prefill:
                labelled("-prefill", lambda t=t, c=c: driver.prefill(t, c, 1, 3, ns.repeats))
    finally:
        driver.step = step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--traces", nargs="*", default=[])
    p.add_argument("--policy", default="static")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--ctx", type=int, default=1400)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--cold", action="store_true", help="also time each decode loop cold (lookahead off)")
    p.add_argument("--mixed", nargs="*", default=[], metavar="T:D:CTX", help="mixed-step loops")
    p.add_argument("--prefill", nargs="*", default=[], metavar="T:CTX", help="prefill loops")
    p.add_argument("--decode-lookahead", action="store_true")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--num-gpu-blocks", type=int, default=None, help="KV pool (default: from free GPU memory)")
    ns = p.parse_args()
    ns.mixed = shapes(ns.mixed, 3, "--mixed")
    ns.prefill = shapes(ns.prefill, 2, "--prefill")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = ModelRunner(EngineConfig(model=ns.model, max_model_len=ns.max_model_len,
                                      max_num_batched_tokens=65536, max_num_seqs=256,
                                      num_gpu_blocks=ns.num_gpu_blocks, decode_lookahead=ns.decode_lookahead))
    warm_up(runner)
    clock = StepClock(runner)
    runner.execute = clock.execute  # this instance only: the driver and the replay call it
    driver = StepDriver(runner)
    rows: list[dict] = []
    timed_loops(driver, clock, "loop-before", ns, rows, extra=True)
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
        rows += [{"phase": label, "step": first + i, "loop_s": s.duration_s} for i, s in enumerate(log.itertuples())]
    timed_loops(driver, clock, "loop-after", ns, rows, extra=False)
    frame = pd.DataFrame(rows)
    frame = frame.merge(pd.DataFrame.from_dict(clock.steps, orient="index").rename_axis("step").reset_index(),
                        on="step", how="left").merge(clock.gpu_seconds(), on="step", how="left")
    frame["host_s"] = frame["loop_s"] - frame["gpu_s"]
    frame["mean_ctx"] = frame["decode_ctx_tokens"] / frame["decodes"].clip(lower=1)
    frame.to_parquet(out / "step_timing.parquet")
    keys = ["phase", "served", "prefill_tokens", "prefill_ctx_tokens", "decodes"]
    loops = frame[frame.phase.str.startswith("loop")]
    table = loops.groupby(keys, sort=False)[["loop_s", "exec_s", "gpu_s", "host_s", "wasted_gpu_s"]].median() * 1e3
    table["n"] = loops.groupby(keys, sort=False).size()
    table["mean_ctx"] = loops.groupby(keys, sort=False)["mean_ctx"].median()
    pd.set_option("display.width", 200)
    print("medians (ms) of the calibration-style loops")
    print(table.round(3).to_string())
    reps = frame[~frame.phase.str.startswith("loop")].copy()
    if len(reps):
        reps["kind"] = ["mixed" if t else ("served" if s else "cold")
                        for t, s in zip(reps.prefill_tokens, reps.served, strict=True)]
        reps["rows"] = pd.cut(reps.decodes, [-1, 0, 8, 32, 64, 128, 256])
        g = reps.groupby(["phase", "kind", "rows"], observed=True)
        table = g[["loop_s", "gpu_s", "host_s", "wasted_gpu_s"]].mean() * 1e3
        table["n"] = g.size()
        table["mean_ctx"] = g["mean_ctx"].median()
        print("means (ms) of the replays' steps")
        print(table.round(3).to_string())


if __name__ == "__main__":
    main()
