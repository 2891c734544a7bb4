"""``servegym calibrate``: time the engine's own steps and write a measured profile for the simulator.

Each timed step is one turn of the replay loop: ``scheduler.schedule`` + ``runner.execute`` +
``scheduler.postprocess``. The loop period (not only schedule + execute) is what separates the
starts of consecutive steps in a busy replay, and the simulator runs its steps back to back,
so the period is the step time a simulation must predict. The part of it after ``execute`` returns
(``postprocess``) is timed too: the replay logs a step's tokens before that work, so the profile's
``host_tail_s`` (``experiments.tail_fit``) tells the simulator how long before a step's end its tokens
come out.

The step shapes come from a real ``Scheduler`` with ``ContinuousBatching`` driven by synthetic
requests of random (unique) token ids:

* decode-only steps of ``B`` sequences (``max_num_seqs = B``): ``B`` prompts of ``c - 1`` tokens
  are prefilled (those steps are not timed), then the decode-only steps of all ``B`` are timed,
  at each of the grid's per-sequence contexts ``c`` (the profile's ``decode_steps`` keeps them all);
* prefill-only steps of one ``T``-token chunk: a prompt of ``T`` fresh tokens, and one of
  ``C`` tokens already in the prefix cache (a seed request computed them) followed by ``T``
  fresh tokens, so the chunk starts at ``C``;
* mixed steps: one fresh ``T``-token chunk beside ``D`` decodes (``StepDriver.mixed``), which
  price what decodes add to a step holding a prefill (the ``mixed_decode`` table);
* with a ``speculative_method``, verification steps: ``B`` decodes each verifying ``k`` drafts of the
  engine's own proposer, at the two decode contexts (``StepDriver.verify``; the ``draft_attention``
  table and ``speculative_overhead_s``).

With ``EngineConfig.decode_lookahead`` the steady decode loops above are served by looked-ahead steps
(not the step before the sequences' next token opens a block: ``StepDriver.decode`` keeps only the
served ones); each decode shape is then timed again right after with the lookahead paused
(``calibration_driver.without_lookahead``), as every step no looked-ahead step serves runs, and the
profile's ``decode_steps_cold`` keeps those (``sim/lookahead.py``).

The first ``warmup`` steps of each shape are dropped and the next ``repeats`` are timed; a
shape's time is their trimmed mean (``profile_fit.typical``: a simulation sums step times, so
it needs means). The decode grid is timed ``passes`` times, every other pass in reverse order,
and each shape's time pools the steps of all passes: on the H100 host, stretches of several
consecutive steps run 10-80% slow, so one pass of 7 steps could price a batch size far off (once
batch 96 60% high, which the table fit turned into 1.3 ms of error at batches 96-192). The fit of
the tables is documented in ``experiments.profile_fit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import statistics
import time
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from engine.heap import frozen_heap
from experiments.calibration_driver import StepDriver
from experiments.calibration_grid import QUICK_GRID, CalibrationGrid, plan_shapes, plan_verify_shapes
from experiments.engine_run import add_model_args, build_runner, device_label, engine_config, warm_up
from experiments.profile_fit import DecodeSample, MixedSample, PrefillSample, VerifySample, typical
from experiments.profile_tables import add_fitted_fields
from sim.profile import PROFILE_FORMAT, write_profile

if TYPE_CHECKING:  # pragma: no cover
    from engine.model_runner import ModelRunner

SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


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
    driver = StepDriver(runner)
    dec_shapes, pf_shapes, mixed_shapes = plan_shapes(grid, runner)
    verify_shapes = plan_verify_shapes(grid, runner)
    passes: dict[tuple[int, int], list[DecodeSample]] = {shape: [] for shape in dec_shapes}
    # with the decode lookahead, each decode shape is timed cold too, right after (decode_steps_cold)
    lookahead = runner.lookahead is not None
    cold_passes: dict[tuple[int, int], list[DecodeSample]] = {shape: [] for shape in dec_shapes} if lookahead else {}
    prefills: list[PrefillSample] = []
    mixed: list[MixedSample] = []
    verify: list[VerifySample] = []
    total = grid.passes * len(dec_shapes) * (1 + lookahead) + len(pf_shapes) + len(mixed_shapes) + len(verify_shapes)
    # The heap frozen as in the replays it prices (engine.heap): no full collection inside a timed step.
    with tqdm(total=total, desc="calibrating", unit="shape", disable=not progress) as bar, frozen_heap():
        for i in range(grid.passes):
            for size, ctx in dec_shapes if i % 2 == 0 else dec_shapes[::-1]:
                passes[(size, ctx)].append(driver.decode(size, ctx, grid.warmup, grid.repeats))
                bar.update()
                if lookahead:
                    cold_passes[(size, ctx)].append(driver.decode(size, ctx, grid.warmup, grid.repeats, cold=True))
                    bar.update()
        for size, ctx, seqs in pf_shapes:
            prefills.append(driver.prefill(size, ctx, seqs, grid.warmup, grid.repeats))
            bar.update()
        for tokens, size, ctx in mixed_shapes:
            mixed.append(driver.mixed(tokens, size, ctx, grid.warmup, grid.repeats))
            bar.update()
        for size, drafts, ctx in verify_shapes:
            verify.append(driver.verify(size, drafts, ctx, grid.warmup, grid.repeats))
            bar.update()
    decodes, cold = pooled_decodes(passes), pooled_decodes(cold_passes)
    cfg, s = runner.config, runner.spec
    dtype = SHORT_DTYPES[cfg.dtype]
    profile: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "meta": {"model": model_name, "gpu": device_label(runner), "dtype": dtype,
                 "kv_cache_dtype": dtype if cfg.kv_cache_dtype == "auto" else cfg.kv_cache_dtype,
                 "quantization": cfg.quantization, "source": "measured", "command": command,
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "method": "whole-step loop periods, tables fitted by differences (experiments/profile_fit.py)",
                 "engine": dataclasses.asdict(cfg),
                 "kernel_choices": runner.choice_summary(),
                 "grid": dataclasses.asdict(grid), "calibration_wall_s": time.perf_counter() - t_start,
                 "decode_samples": [dataclasses.asdict(d) for d in decodes],
                 "decode_pass_times_s": [[d.time_s for d in runs] for runs in passes.values()],  # per pass
                 "cold_decode_samples": [dataclasses.asdict(d) for d in cold],
                 "prefill_samples": [dataclasses.asdict(p) for p in prefills],
                 "mixed_samples": [dataclasses.asdict(m) for m in mixed],
                 "verify_samples": [dataclasses.asdict(v) for v in verify]},
        "kv_bytes_per_token": block_bytes(s.num_layers, runner.block_size, s.num_kv_heads, s.head_dim,
                                          runner.kv_dtype) / runner.block_size,
        "swap_bytes_per_s": swap_rate(runner),
    }
    if runner.graphs is not None:  # decode-only steps up to the largest size replay padded graphs
        profile["graph_batch_sizes"] = [int(b) for b in runner.graphs.sizes]
    if runner.mixed_graphs is not None:  # steps holding a prefill replay graphs padded by token count
        profile["graph_token_sizes"] = [int(t) for t in runner.mixed_graphs.sizes]
    if verify:
        profile["verify_group_rows"] = runner.max_group
    return add_fitted_fields(profile, decodes, cold, prefills, mixed, verify, runner.block_size)


def pooled_decodes(passes: dict[tuple[int, int], list[DecodeSample]]) -> list[DecodeSample]:
    """One sample per decode shape from the steps of all its passes."""
    decodes = []
    for (batch, _), runs in passes.items():
        pooled = tuple(t for d in runs for t in d.times)
        decodes.append(DecodeSample(batch, statistics.median(d.ctx_tokens for d in runs), typical(pooled), pooled,
                                    statistics.fmean(d.tail_s for d in runs)))
    return decodes


def add_calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="profile file to write (JSON)")
    p.add_argument("--quick", action="store_true", help="a coarse grid (seconds instead of a minute)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="decode batch sizes")
    p.add_argument("--decode-contexts", type=int, nargs="+", default=None, metavar="CTX",
                   help="per-sequence decode contexts (>= 2, increasing)")
    p.add_argument("--prefill-tokens", type=int, nargs="+", default=None, help="prefill chunk sizes")
    p.add_argument("--prefill-context", type=int, default=None, help="cached context of the second prefill series")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per shape")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per shape (trimmed mean kept)")
    p.add_argument("--passes", type=int, default=None, help="timings of the decode grid (their steps pooled)")
    p.add_argument("--mixed-tokens", type=int, nargs="*", default=None,
                   help="chunk sizes of the steps of one chunk beside decodes (none: no mixed_decode table)")
    p.add_argument("--mixed-batches", type=int, nargs="+", default=None, help="decodes beside that chunk")
    p.add_argument("--mixed-context", type=int, default=None, help="context per decoding sequence there")
    p.add_argument("--verify-batches", type=int, nargs="*", default=None,
                   help="decodes of the verification steps (with --speculative-method; none: no such steps)")
    p.add_argument("--verify-drafts", type=int, nargs="+", default=None, help="draft tokens per decode there")
    p.add_argument("--model-name", default=None, help="meta.model (default: the model folder's name)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)


def grid_from_args(ns: argparse.Namespace) -> CalibrationGrid:
    base = QUICK_GRID if ns.quick else CalibrationGrid()
    given = {"batch_sizes": ns.batch_sizes, "decode_contexts": ns.decode_contexts,
             "prefill_tokens": ns.prefill_tokens, "prefill_context": ns.prefill_context,
             "warmup": ns.warmup, "repeats": ns.repeats, "passes": ns.passes, "mixed_tokens": ns.mixed_tokens,
             "mixed_batches": ns.mixed_batches, "mixed_context": ns.mixed_context,
             "verify_batches": ns.verify_batches, "verify_drafts": ns.verify_drafts}
    return dataclasses.replace(base, **{k: (tuple(v) if isinstance(v, list) else v)
                                        for k, v in given.items() if v is not None})


def cmd_calibrate(ns: argparse.Namespace) -> int:
    """``servegym calibrate``."""
    grid = grid_from_args(ns)
    cfg = engine_config(ns, max_num_batched_tokens=max(grid.prefill_tokens))
    runner = build_runner(cfg)
    command = "servegym " + shlex.join(getattr(ns, "argv", []))
    name = ns.model_name or cfg.model.rstrip("/").split("/")[-1]
    for line in runner.choice_summary():
        print(line)
    profile = calibrate(runner, grid, command, name, progress=not ns.quiet)
    path = write_profile(profile, ns.out)
    print(f"step_overhead_s {profile['step_overhead_s'] * 1e3:.3f} ms, mixed extra "
          f"{profile['meta']['mixed_extra_s'] * 1e3:.3f} ms; {len(profile['meta']['decode_samples'])} decode and "
          f"{len(profile['meta']['prefill_samples'])} prefill shapes in {profile['meta']['calibration_wall_s']:.1f}s")
    if "speculative_overhead_s" in profile:
        spec = profile["speculative_overhead_s"]
        print(f"{len(profile['meta']['verify_samples'])} verification shapes: speculative overhead "
              f"{spec['step'] * 1e3:.3f} ms + {spec['per_decode'] * 1e6:.1f} us/decode + "
              f"{spec['per_draft'] * 1e6:.1f} us/draft")
    print(f"wrote {path}")
    return 0
