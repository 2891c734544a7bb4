"""Synthetic calibration steps: real schedulers drive one runner through step shapes, timed whole.

A timed step is one turn of the replay loop, ``scheduler.schedule`` + ``runner.execute`` +
``scheduler.postprocess`` (see ``experiments.calibrate``); requests carry random token ids, so no
two share a prefix unless a shape asks for one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import numpy as np

from experiments.profile_fit import DecodeSample, MixedSample, PrefillSample, VerifySample, chunk_sizes, typical
from policies.batching import ContinuousBatching
from policies.scheduler import Scheduler, SchedulerConfig
from policies.speculation import SpeculationPolicy
from policies.types import Request, StepPlan, StepResult

if TYPE_CHECKING:  # pragma: no cover
    from engine.model_runner import ModelRunner


@contextmanager
def without_lookahead(runner: ModelRunner) -> Iterator[None]:
    """Inside, ``runner``'s decode lookahead (``EngineConfig.decode_lookahead``) launches no looked-ahead step:
    every decode step runs as a replay's step that no looked-ahead step serves does (host work, then GPU
    work, then the same asynchronous readback of the ids)."""
    ahead = runner.lookahead
    if ahead is None:
        yield
        return
    ahead.drop()  # a pending step would serve no plan
    ahead.launching = False
    try:
        yield
    finally:
        ahead.launching = True


class StepDriver:
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

    def scheduler(self, max_num_seqs: int, budget: int, caching: bool,
                  speculation: SpeculationPolicy | None = None) -> Scheduler:
        cfg = SchedulerConfig(num_gpu_blocks=self.runner.num_gpu_blocks, block_size=self.bs,
                              enable_prefix_caching=caching, verify_group_rows=self.runner.max_group)
        batching = ContinuousBatching(max_num_seqs=max_num_seqs, token_budget=budget)
        return Scheduler(cfg, batching, speculation=speculation)

    def step(self, sched: Scheduler) -> tuple[StepPlan, float, float]:
        """One loop turn; returns its plan, its wall time, and the part of it after the step's tokens were
        out (``scheduler.postprocess``: the host tail, ``host_tail_s`` of the profile)."""
        t0 = time.perf_counter()
        plan = sched.schedule(0.0)
        if plan.is_empty:
            raise RuntimeError(f"calibration: the scheduler planned nothing at step {plan.step_id}")
        result = self.runner.execute(plan)
        t_out = time.perf_counter()
        sched.postprocess(plan, StepResult(result.duration_s, result.token_ids))
        t_end = time.perf_counter()
        return plan, t_end - t0, t_end - t_out

    def all_decoding(self, batch: int, context: int, budget: int, max_num_seqs: int, steps: int,
                      speculation: SpeculationPolicy | None = None) -> Scheduler:
        """A scheduler whose ``batch`` requests (prompts of ``context - 1`` tokens, random ids) all decode,
        with output left for ``steps`` more steps (of up to ``k + 1`` tokens under ``speculation``); the
        prefill steps that got there are not timed."""
        setup = -(-batch * context // (budget - batch)) + 3  # prefill steps (decodes share their budget)
        sched = self.scheduler(max_num_seqs, budget, caching=False, speculation=speculation)
        per_step = 1 + (speculation.num_draft_tokens if speculation is not None else 0)
        for _ in range(batch):
            sched.add_request(self.request(context - 1, (steps + setup) * per_step + 2))
        for _ in range(setup + 1):
            plan, _, _ = self.step(sched)
            if not plan.prefills and len(plan.decodes) == batch:
                return sched
        raise RuntimeError(f"calibration: {batch} sequences of context {context} never all decode")

    def decode(self, batch: int, context: int, warmup: int, repeats: int, cold: bool = False) -> DecodeSample:
        """Decode-only steps of ``batch`` sequences at about ``context`` tokens each; with ``cold``, none served
        by a looked-ahead step (``without_lookahead``; the profile's ``decode_steps_cold``)."""
        budget = max(2 * batch, self.runner.config.max_num_batched_tokens)
        sched = self.all_decoding(batch, context, budget, batch, warmup + repeats)
        times: list[float] = []
        tails: list[float] = []
        ctx: list[float] = []
        ahead = self.runner.lookahead
        served: list[bool] = []  # per step, whether a looked-ahead step served it
        with without_lookahead(self.runner) if cold else nullcontext():
            for _ in range(warmup + repeats):
                hits = ahead.hits if ahead is not None else 0
                plan, dt, tail = self.step(sched)
                if plan.prefills or len(plan.decodes) != batch:
                    raise RuntimeError(f"calibration: expected {batch} decodes, got {len(plan.decodes)} and "
                                       f"{len(plan.prefills)} chunks")
                times.append(dt)
                tails.append(tail)
                ctx.append(plan.decode_ctx_tokens)
                served.append(ahead is not None and ahead.hits > hits)
        kept = times[warmup:]
        if ahead is not None and not cold:  # the steps whose next token opened a block were not served: not kept
            kept = [t for t, hit in zip(kept, served[warmup:], strict=True) if hit] or kept
        return DecodeSample(batch, statistics.median(ctx[warmup:]), typical(kept), tuple(kept), typical(tails[warmup:]))

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
        tails: list[float] = []
        want = [(context, t) for t in chunk_sizes(tokens, seqs)]
        for _ in range(warmup + repeats):
            for _, t in want:
                sched.add_request(self.request(context + t, 1, prefix))
            plan, dt, tail = self.step(sched)
            chunks = [(c.start, c.num_tokens) for c in plan.prefills]
            if sorted(chunks) != sorted(want) or plan.decodes:
                raise RuntimeError(f"calibration: expected chunks {want} (start, tokens), got chunks {chunks} "
                                   f"and {len(plan.decodes)} decodes")
            times.append(dt)
            tails.append(tail)
        return PrefillSample(tokens, context, typical(times[warmup:]), seqs, typical(tails[warmup:]))

    def mixed(self, tokens: int, batch: int, context: int, warmup: int, repeats: int) -> MixedSample:
        """Steps of one fresh ``tokens``-token chunk beside ``batch`` decodes at about ``context`` tokens each.

        ``batch`` requests are prefilled (untimed) until all decode; then each round adds a request of
        ``tokens`` prompt tokens and one output token, so the next step holds its whole prompt as one
        chunk beside the ``batch`` decodes, and it finishes in that step.
        """
        budget = max(tokens + batch, self.runner.config.max_num_batched_tokens)
        rounds = warmup + repeats
        sched = self.all_decoding(batch, context, budget, batch + 1, rounds)
        times: list[float] = []
        ctx: list[float] = []
        for _ in range(rounds):
            sched.add_request(self.request(tokens, 1))
            plan, dt, _ = self.step(sched)
            chunks = [(c.start, c.num_tokens) for c in plan.prefills]
            if chunks != [(0, tokens)] or len(plan.decodes) != batch:
                raise RuntimeError(f"calibration: expected one chunk (0, {tokens}) beside {batch} decodes, got "
                                   f"chunks {chunks} and {len(plan.decodes)} decodes")
            times.append(dt)
            ctx.append(plan.decode_ctx_tokens)
        return MixedSample(tokens, batch, statistics.median(ctx[warmup:]), typical(times[warmup:]))

    def verify(self, batch: int, drafts: int, context: int, warmup: int, repeats: int) -> VerifySample:
        """Decode-only steps of ``batch`` decodes at about ``context`` tokens, each verifying ``drafts`` draft
        tokens from the runner's own proposer (``EngineConfig.speculative_method``)."""
        rows = batch * (drafts + 1)
        budget = max(2 * rows, self.runner.config.max_num_batched_tokens)
        spec = SpeculationPolicy(num_draft_tokens=drafts)
        sched = self.all_decoding(batch, context, budget, batch, warmup + repeats, spec)
        times: list[float] = []
        ctx: list[tuple[float, float]] = []
        for _ in range(warmup + repeats):
            plan, dt, _ = self.step(sched)
            if plan.prefills or len(plan.decodes) != batch or plan.num_draft_tokens != batch * drafts:
                raise RuntimeError(f"calibration: expected {batch} decodes verifying {drafts} drafts each, got "
                                   f"{len(plan.decodes)} decodes, {plan.num_draft_tokens} drafts and "
                                   f"{len(plan.prefills)} chunks")
            times.append(dt)
            ctx.append((plan.decode_ctx_tokens - plan.draft_ctx_tokens, plan.draft_ctx_tokens))
        own, draft = zip(*ctx[warmup:], strict=True)
        return VerifySample(batch, drafts, statistics.median(own), statistics.median(draft), typical(times[warmup:]))
