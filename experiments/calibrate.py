"""``servegym calibrate``: time the engine's own steps and write a measured profile for the simulator.

Each timed step is one turn of the replay loop: ``scheduler.schedule`` + ``runner.execute`` +
``scheduler.postprocess``. The loop period (not only schedule + execute) is what separates the
starts of consecutive steps in a busy replay, and the simulator runs its steps back to back,
so the period is the step time a simulation must predict.

The step shapes come from a real ``Scheduler`` with ``ContinuousBatching`` driven by synthetic
requests of random (unique) token ids:

* decode-only steps of ``B`` sequences (``max_num_seqs = B``): ``B`` prompts of ``c - 1`` tokens
  are prefilled (those steps are not timed), then the decode-only steps of all ``B`` are timed,
  at a small and a large per-sequence context ``c``;
* prefill-only steps of one ``T``-token chunk: a prompt of ``T`` fresh tokens, and one of
  ``C`` tokens already in the prefix cache (a seed request computed them) followed by ``T``
  fresh tokens, so the chunk starts at ``C``.

The first ``warmup`` steps of each shape are dropped and the median of the next ``repeats``
is kept. The fit of the tables from these medians is documented in ``experiments.profile_fit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from experiments.engine_run import add_model_args, build_runner, device_label, engine_config, warm_up
from experiments.profile_fit import DecodeSample, PrefillSample, chunk_sizes, fit_profile
from policies.batching import ContinuousBatching
from policies.scheduler import Scheduler, SchedulerConfig
from policies.types import Request, StepPlan, StepResult
from sim.profile import PROFILE_FORMAT, write_profile

if TYPE_CHECKING:  # pragma: no cover
    from engine.model_runner import ModelRunner

SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class CalibrationGrid:
    """The step shapes to time.

    Args:
        batch_sizes: decode batch sizes (>= 2 of them).
        decode_contexts: (small, large) context per decoding sequence, in tokens.
        prefill_tokens: chunk sizes of the prefill-only steps (>= 2 of them).
        prefill_context: cached context under the second prefill series.
        warmup: steps of each shape run before the timed ones.
        repeats: timed steps of each shape (the median is kept).
    """

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
    decode_contexts: tuple[int, int] = (32, 2048)
    prefill_tokens: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
    prefill_context: int = 4096
    warmup: int = 3
    repeats: int = 7

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "prefill_tokens"):
            values = getattr(self, name)
            if len(values) < 2 or any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"CalibrationGrid.{name}: need >= 2 strictly increasing sizes >= 1, got {values}")
        lo, hi = self.decode_contexts
        if not 2 <= lo < hi:
            raise ValueError(f"CalibrationGrid.decode_contexts: need 2 <= small < large, got {self.decode_contexts}")
        if self.prefill_context < 1 or self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"CalibrationGrid: need prefill_context >= 1, warmup >= 0 and repeats >= 1, got "
                             f"{self.prefill_context}, {self.warmup}, {self.repeats}")


QUICK_GRID = CalibrationGrid(batch_sizes=(1, 4, 16, 64, 256), decode_contexts=(32, 1024),
                             prefill_tokens=(16, 128, 1024, 8192), prefill_context=2048, warmup=2, repeats=3)


class _Driver:
    """Runs synthetic requests through fresh schedulers on one runner and times whole steps."""

    def __init__(self, runner: ModelRunner, seed: int = 0) -> None:
        self.runner = runner
        self.bs = runner.block_size
        self.rng = np.random.default_rng(seed)
        self.vocab = min(runner.spec.vocab_size, 128000)
        self.count = 0

    def request(self, length: int, output_len: int, prefix: tuple[int, ...] = ()) -> Request:
        self.count += 1
        ids = prefix + tuple(self.rng.integers(0, self.vocab, size=length - len(prefix)).tolist())
        return Request(f"cal{self.count}", 0.0, length, output_len, prompt_token_ids=ids)

    def scheduler(self, max_num_seqs: int, budget: int, caching: bool) -> Scheduler:
        cfg = SchedulerConfig(num_gpu_blocks=self.runner.num_gpu_blocks, block_size=self.bs,
                              enable_prefix_caching=caching)
        return Scheduler(cfg, ContinuousBatching(max_num_seqs=max_num_seqs, token_budget=budget))

    def step(self, sched: Scheduler) -> tuple[StepPlan, float]:
        """One loop turn; returns its plan and its wall time."""
        t0 = time.perf_counter()
        plan = sched.schedule(0.0)
        if plan.is_empty:
            raise RuntimeError(f"calibration: the scheduler planned nothing at step {plan.step_id}")
        result = self.runner.execute(plan)
        sched.postprocess(plan, StepResult(result.duration_s, result.token_ids))
        return plan, time.perf_counter() - t0

    def decode(self, batch: int, context: int, warmup: int, repeats: int) -> DecodeSample:
        budget = max(2 * batch, self.runner.config.max_num_batched_tokens)
        setup = -(-batch * context // (budget - batch)) + 3  # prefill steps (decodes share their budget)
        sched = self.scheduler(batch, budget, caching=False)
        for _ in range(batch):
            sched.add_request(self.request(context - 1, warmup + repeats + setup + 2))
        times: list[float] = []
        ctx: list[float] = []
        for _ in range(setup + warmup + repeats + 2):
            plan, dt = self.step(sched)
            if not plan.prefills and len(plan.decodes) == batch:
                times.append(dt)
                ctx.append(plan.decode_ctx_tokens)
                if len(times) == warmup + repeats:
                    return DecodeSample(batch, statistics.median(ctx[warmup:]), statistics.median(times[warmup:]))
        raise RuntimeError(f"calibration: no steady decode batch of {batch} at context {context}")

    def prefill(self, tokens: int, context: int, seqs: int, warmup: int, repeats: int) -> PrefillSample:
        budget = max(tokens, self.runner.config.max_num_batched_tokens)
        sched = self.scheduler(seqs, budget, caching=True)
        prefix: tuple[int, ...] = ()
        if context:
            seed = self.request(context, 1)
            prefix = seed.prompt_token_ids or ()
            sched.add_request(seed)
            while sched.has_unfinished():
                self.step(sched)
        times: list[float] = []
        want = [(context, t) for t in chunk_sizes(tokens, seqs)]
        for _ in range(warmup + repeats):
            for _, t in want:
                sched.add_request(self.request(context + t, 1, prefix))
            plan, dt = self.step(sched)
            chunks = [(c.start, c.num_tokens) for c in plan.prefills]
            if sorted(chunks) != sorted(want) or plan.decodes:
                raise RuntimeError(f"calibration: expected chunks {want} (start, tokens), got chunks {chunks} "
                                   f"and {len(plan.decodes)} decodes")
            times.append(dt)
        return PrefillSample(tokens, context, statistics.median(times[warmup:]), seqs)


def plan_shapes(grid: CalibrationGrid, runner: ModelRunner
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """The (batch, context) decode shapes and (tokens, context, seqs) prefill shapes that fit this engine.

    Contexts are shrunk to fit ``max_model_len`` and the KV pool; prefill steps of more tokens than
    ``max_num_batched_tokens`` are dropped, and those longer than one sequence may hold are split into
    ``seqs`` near-equal chunks.
    """
    bs, blocks, mml = runner.block_size, runner.num_gpu_blocks, runner.max_model_len
    steps = grid.warmup + grid.repeats + 8
    decodes: list[tuple[int, int]] = []
    for b in grid.batch_sizes:
        fit = min(mml, (blocks // b) * bs) - steps - 2 * bs  # per-sequence tokens the pool holds
        shapes = [c for c in dict.fromkeys(min(c, fit) for c in grid.decode_contexts) if c >= 2]
        if len(shapes) == 2:
            decodes += [(b, c) for c in shapes]
    prefills: list[tuple[int, int, int]] = []
    ctx = min(grid.prefill_context, mml // 2) // bs * bs
    for t in grid.prefill_tokens:
        if t > runner.config.max_num_batched_tokens:
            continue
        seqs = -(-t // (mml - ctx - 1))
        if seqs > runner.config.max_num_seqs or ctx < bs or (ctx + t) // bs + 2 * seqs > blocks // 2:
            continue
        prefills += [(t, 0, seqs), (t, ctx, seqs)]
    return decodes, prefills


def swap_rate(runner: ModelRunner, nbytes: int = 1 << 26) -> float:
    """Host<->device copy rate in bytes/s (a plain host copy on the CPU)."""
    import torch

    dev = runner.device
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=dev.type == "cuda")
    target = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    for _ in range(2):  # the second pass is timed
        t0 = time.perf_counter()
        target.copy_(host, non_blocking=True)
        host.copy_(target, non_blocking=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
    return 2 * nbytes / max(dt, 1e-9)


def calibrate(runner: ModelRunner, grid: CalibrationGrid, command: str, model_name: str,
              progress: bool = True) -> dict[str, Any]:
    """Time the grid on ``runner`` and return a validated ``measured`` profile."""
    from engine.kv_cache import block_bytes

    t_start = time.perf_counter()
    warm_up(runner)
    driver = _Driver(runner)
    dec_shapes, pf_shapes = plan_shapes(grid, runner)
    decodes: list[DecodeSample] = []
    prefills: list[PrefillSample] = []
    with tqdm(total=len(dec_shapes) + len(pf_shapes), desc="calibrating", unit="shape", disable=not progress) as bar:
        for size, ctx in dec_shapes:
            decodes.append(driver.decode(size, ctx, grid.warmup, grid.repeats))
            bar.update()
        for size, ctx, seqs in pf_shapes:
            prefills.append(driver.prefill(size, ctx, seqs, grid.warmup, grid.repeats))
            bar.update()
    fitted = fit_profile(decodes, prefills)
    cfg, s = runner.config, runner.spec
    dtype = SHORT_DTYPES[cfg.dtype]
    profile = {
        "format": PROFILE_FORMAT,
        "meta": {"model": model_name, "gpu": device_label(runner), "dtype": dtype,
                 "kv_cache_dtype": dtype if cfg.kv_cache_dtype == "auto" else cfg.kv_cache_dtype,
                 "quantization": cfg.quantization, "source": "measured", "command": command,
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "method": "whole-step loop periods, tables fitted by differences (experiments/profile_fit.py)",
                 "mixed_extra_s": fitted.mixed_extra_s, "engine": dataclasses.asdict(cfg),
                 "grid": dataclasses.asdict(grid), "calibration_wall_s": time.perf_counter() - t_start,
                 "decode_samples": [dataclasses.asdict(d) for d in decodes],
                 "prefill_samples": [dataclasses.asdict(p) for p in prefills]},
        "step_overhead_s": fitted.step_overhead_s,
        "kv_bytes_per_token": block_bytes(s.num_layers, runner.block_size, s.num_kv_heads, s.head_dim,
                                          runner.kv_dtype) / runner.block_size,
        "swap_bytes_per_s": swap_rate(runner),
        "tables": {name: {"x": xs, "time_s": ys} for name, (xs, ys) in fitted.tables.items()},
    }
    if runner.graphs is not None:  # decode-only steps up to the largest size replay padded graphs
        profile["graph_batch_sizes"] = [int(b) for b in runner.graphs.sizes]
    if runner.mixed_graphs is not None:  # steps holding a prefill replay graphs padded by token count
        profile["graph_token_sizes"] = [int(t) for t in runner.mixed_graphs.sizes]
    return profile


def add_calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="profile file to write (JSON)")
    p.add_argument("--quick", action="store_true", help="a coarse grid (seconds instead of a minute)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="decode batch sizes")
    p.add_argument("--decode-contexts", type=int, nargs=2, default=None, metavar=("SMALL", "LARGE"),
                   help="per-sequence decode contexts")
    p.add_argument("--prefill-tokens", type=int, nargs="+", default=None, help="prefill chunk sizes")
    p.add_argument("--prefill-context", type=int, default=None, help="cached context of the second prefill series")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per shape")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per shape (median kept)")
    p.add_argument("--model-name", default=None, help="meta.model (default: the model folder's name)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)


def grid_from_args(ns: argparse.Namespace) -> CalibrationGrid:
    base = QUICK_GRID if ns.quick else CalibrationGrid()
    given = {"batch_sizes": ns.batch_sizes, "decode_contexts": ns.decode_contexts,
             "prefill_tokens": ns.prefill_tokens, "prefill_context": ns.prefill_context,
             "warmup": ns.warmup, "repeats": ns.repeats}
    return dataclasses.replace(base, **{k: (tuple(v) if isinstance(v, list) else v)
                                        for k, v in given.items() if v is not None})


def cmd_calibrate(ns: argparse.Namespace) -> int:
    """``servegym calibrate``."""
    grid = grid_from_args(ns)
    cfg = engine_config(ns, max_num_batched_tokens=max(grid.prefill_tokens))
    runner = build_runner(cfg)
    command = "servegym " + shlex.join(getattr(ns, "argv", []))
    name = ns.model_name or cfg.model.rstrip("/").split("/")[-1]
    profile = calibrate(runner, grid, command, name, progress=not ns.quiet)
    path = write_profile(profile, ns.out)
    print(f"step_overhead_s {profile['step_overhead_s'] * 1e3:.3f} ms, mixed extra "
          f"{profile['meta']['mixed_extra_s'] * 1e3:.3f} ms; {len(profile['meta']['decode_samples'])} decode and "
          f"{len(profile['meta']['prefill_samples'])} prefill shapes in {profile['meta']['calibration_wall_s']:.1f}s")
    print(f"wrote {path}")
    return 0
