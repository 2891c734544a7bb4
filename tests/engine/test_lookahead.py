"""Decode lookahead: the same tokens and the same plans as without it, with looked-ahead steps used.

On the CPU the decode steps run eagerly through the static buffers (``DecodeGraphs(eager=True)``), so
the whole mechanism (advance, readback, plan matching) runs here; the GPU test repeats it on graphs.
"""

from __future__ import annotations

import pytest
import torch

from engine import SamplingParams
from engine.cuda_graphs import GraphStep
from policies.scheduler import STEP_LOG_COLUMNS, Scheduler
from policies.types import Request, StepPlan
from tests.engine.test_llm import MAX_TOKENS, PROMPTS, llm

CUDA = torch.cuda.is_available()


def plans_of(engine) -> list[tuple[float, ...]]:
    """(prefill tokens, decodes, KV blocks used, preempted) of every step of the engine's last run."""
    log, width = engine.last_scheduler.step_log, len(STEP_LOG_COLUMNS)
    cols = [STEP_LOG_COLUMNS.index(c) for c in ("prefill_tokens", "decodes", "kv_blocks_used", "preempted")]
    return [tuple(log[i + c] for c in cols) for i in range(0, len(log), width)]


@pytest.mark.parametrize("kw", [
    {},                                              # all prompts batched
    {"token_budget": 7},                             # chunked prefill, mixed steps
    {"num_gpu_blocks": 14, "token_budget": 16},      # preemption by recompute
    {"num_gpu_blocks": 14, "token_budget": 16, "preemption_mode": "swap", "num_cpu_blocks": 64},
])
def test_same_tokens_and_plans_as_without(tiny_llama, kw):
    plain = llm(tiny_llama, **kw)
    ahead = llm(tiny_llama, decode_lookahead=True, **kw)
    # Different output lengths: sequences leave the batch at different steps.
    requests = [Request(str(i), 0.0, len(p), 4 + 3 * i, prompt_token_ids=tuple(p)) for i, p in enumerate(PROMPTS)]
    want = {s.seq_id: s.output_ids for s in plain.run(requests)}
    got = {s.seq_id: s.output_ids for s in ahead.run(requests)}
    assert got == want
    assert plans_of(ahead) == plans_of(plain)
    assert ahead.runner.lookahead.hits > 0


def test_one_sequence_uses_every_looked_ahead_step(tiny_llama):
    engine = llm(tiny_llama, decode_lookahead=True)
    out = engine.generate([PROMPTS[1]], max_tokens=MAX_TOKENS)[0]["token_ids"]
    assert out == llm(tiny_llama).generate([PROMPTS[1]], max_tokens=MAX_TOKENS)[0]["token_ids"]
    ahead = engine.runner.lookahead
    # 11 decode steps; a step is looked ahead unless its next token opens a block (block_size 4) or
    # it is the last one: nothing is ever dropped when nothing can surprise the scheduler.
    assert ahead.misses == 0
    assert ahead.hits >= 6


def test_a_stop_token_drops_one_looked_ahead_step(tiny_llama):
    plain = llm(tiny_llama).generate([PROMPTS[1]], max_tokens=MAX_TOKENS)[0]["token_ids"]
    stop = plain[5]
    params = SamplingParams(ignore_eos=False, stop_token_ids=(stop,))
    engine = llm(tiny_llama, decode_lookahead=True)
    out = engine.generate([PROMPTS[1]], params, max_tokens=MAX_TOKENS)[0]["token_ids"]
    assert out == plain[: plain.index(stop) + 1]
    ahead = engine.runner.lookahead
    assert ahead.misses == 0 and ahead.pending  # the step past the stop token waits for a plan...
    engine.generate([PROMPTS[0]], max_tokens=2)
    assert ahead.misses == 1  # ...and the next run's first plan (a prefill) drops it


def test_sampled_requests_are_not_looked_ahead(tiny_llama):
    params = [SamplingParams(temperature=1.0, seed=s) for s in range(3)]
    engine = llm(tiny_llama, decode_lookahead=True)
    got = engine.generate(PROMPTS[:3], params, max_tokens=MAX_TOKENS)
    want = llm(tiny_llama).generate(PROMPTS[:3], params, max_tokens=MAX_TOKENS)
    assert [o["token_ids"] for o in got] == [o["token_ids"] for o in want]
    assert engine.runner.lookahead.hits == engine.runner.lookahead.misses == 0


class SteppedClock:
    """A virtual clock that a step moves on by 1 ms (the executor wrapper) and idling by the sleep."""

    def __init__(self, runner) -> None:
        self.t, self.runner = 0.0, runner

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt

    def execute(self, plan):
        self.t += 1e-3
        return self.runner.execute(plan)


def test_arrivals_mid_decode_drop_looked_ahead_steps(tiny_llama):
    """Wall-clock replay: requests arriving while others decode change the next plan, so looked-ahead
    steps are dropped; the tokens stay those of the run without lookahead."""
    from experiments.replay import replay

    outs, lookahead = {}, None
    for flag in (False, True):
        engine = llm(tiny_llama, decode_lookahead=flag)
        clock = SteppedClock(engine.runner)
        sched = Scheduler(engine.scheduler_config, engine.policy)
        requests = [Request(str(i), 0.0035 * i, len(p), 10, prompt_token_ids=tuple(p)) for i, p in enumerate(PROMPTS)]
        replay(requests, sched, clock, clock=clock, sleep=clock.sleep)
        outs[flag] = {s.seq_id: s.output_ids for s in sched.finished}
        lookahead = engine.runner.lookahead
    assert outs[True] == outs[False] and len(outs[True]) == len(PROMPTS)
    assert lookahead.hits > 0 and lookahead.misses > 0


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_graphs_with_lookahead_give_the_same_tokens(tiny_llama):
    kw = {"dtype": "bfloat16", "device": "cuda", "attention_backend": "triton"}
    from engine import LLM

    plain = LLM(str(tiny_llama), num_gpu_blocks=128, block_size=4, **kw)
    ahead = LLM(str(tiny_llama), num_gpu_blocks=128, block_size=4, decode_lookahead=True, **kw)
    assert ahead.runner.graphs is not None and isinstance(ahead.runner.graphs.graphs[1], GraphStep)  # captured
    requests = [Request(str(i), 0.0, len(p), 6 + 5 * i, prompt_token_ids=tuple(p)) for i, p in enumerate(PROMPTS)]
    want = {s.seq_id: s.output_ids for s in plain.run(requests)}
    assert {s.seq_id: s.output_ids for s in ahead.run(requests)} == want
    assert plans_of(ahead) == plans_of(plain)
    assert ahead.runner.lookahead.hits > 0
    one = ahead.generate([PROMPTS[3]], max_tokens=40)[0]["token_ids"]
    assert one == plain.generate([PROMPTS[3]], max_tokens=40)[0]["token_ids"]


def test_steps_past_the_largest_graph_replay_it_on_chunks_of_rows(tiny_llama):
    """With graphs of 1 and 2 rows, a step of 5 decodes replays the 2-row graph twice and the 1-row graph
    once (``DecodeGraphs.run``), giving the tokens of an eager engine; such steps are not looked ahead."""
    plain = llm(tiny_llama, max_num_seqs=5)
    chunked = llm(tiny_llama, max_num_seqs=5, decode_lookahead=True, cuda_graph_batch_sizes=(1, 2))
    requests = [Request(str(i), 0.0, len(p), 4 + 3 * i, prompt_token_ids=tuple(p)) for i, p in enumerate(PROMPTS)]
    want = {s.seq_id: s.output_ids for s in plain.run(requests)}
    got = {s.seq_id: s.output_ids for s in chunked.run(requests)}
    assert got == want and len(got) >= 5
    assert max(d for _, d, _, _ in plans_of(chunked)) > 2  # some steps did not fit one graph
    five = StepPlan(0, 0.0, decodes=list(chunked.last_scheduler.finished[:5]))
    assert chunked.runner.uses_graph(five) and not plain.runner.uses_graph(five)
    assert chunked.runner.lookahead.hits > 0  # the steps of 1 and 2 decodes were still looked ahead


class Watched:
    """The runner's ``execute``, noting per plan whether the engine served it from a looked-ahead step and
    whether the simulator's ``LookaheadTracker``, shown the same plan first, said it would; and likewise
    whether the plan dropped a looked-ahead step (the engine's ``misses``; the tracker's ``dropped``)."""

    def __init__(self, runner) -> None:
        from sim.lookahead import LookaheadTracker

        self.runner, self.execute_ = runner, runner.execute
        self.tracker = LookaheadTracker(runner.block_size, runner.graphs.sizes[-1])
        self.engine: list[bool] = []
        self.sim: list[bool] = []
        self.engine_drops: list[bool] = []
        self.sim_drops: list[bool] = []
        runner.execute = self

    def __call__(self, plan):
        self.sim.append(self.tracker.served(plan))
        self.sim_drops.append(self.tracker.dropped is not None)
        hits, misses = self.runner.lookahead.hits, self.runner.lookahead.misses
        result = self.execute_(plan)
        self.engine.append(self.runner.lookahead.hits > hits)
        self.engine_drops.append(self.runner.lookahead.misses > misses)
        return result


@pytest.mark.parametrize("kw", [
    {},
    {"token_budget": 7},
    {"num_gpu_blocks": 14, "token_budget": 16},
    {"num_gpu_blocks": 14, "token_budget": 16, "preemption_mode": "swap", "num_cpu_blocks": 64},
    {"cuda_graph_batch_sizes": (1, 2)},  # larger decode steps replay the largest graph on chunks: never ahead
])
def test_the_simulators_tracker_predicts_every_served_step(tiny_llama, kw):
    engine = llm(tiny_llama, decode_lookahead=True, **kw)
    watched = Watched(engine.runner)
    requests = [Request(str(i), 0.0, len(p), 4 + 5 * i, prompt_token_ids=tuple(p)) for i, p in enumerate(PROMPTS)]
    sampled = Request("s", 0.0, 6, 9, prompt_token_ids=tuple(range(6)), sampling=SamplingParams(temperature=1.0))
    engine.run([*requests, sampled])
    assert watched.sim == watched.engine and watched.sim_drops == watched.engine_drops
    assert 0 < sum(watched.engine) < len(watched.engine)  # both kinds of step occurred


def test_the_tracker_follows_arrivals_mid_decode(tiny_llama):
    from experiments.replay import replay

    engine = llm(tiny_llama, decode_lookahead=True)
    watched = Watched(engine.runner)
    clock = SteppedClock(engine.runner)  # its execute is the watched one
    sched = Scheduler(engine.scheduler_config, engine.policy)
    requests = [Request(str(i), 0.0035 * i, len(p), 10, prompt_token_ids=tuple(p)) for i, p in enumerate(PROMPTS)]
    replay(requests, sched, clock, clock=clock, sleep=clock.sleep)
    assert watched.sim == watched.engine and engine.runner.lookahead.misses > 0 and any(watched.engine)
    assert watched.sim_drops == watched.engine_drops and any(watched.sim_drops)  # admissions drop steps


def test_a_replay_counts_the_served_steps_as_the_simulator_does(tiny_llama):
    from experiments.engine_run import replay_on_engine

    engine = llm(tiny_llama, decode_lookahead=True)
    watched = Watched(engine.runner)
    requests = [Request(str(i), 0.0, len(p), 4 + 5 * i, prompt_token_ids=tuple(p)) for i, p in enumerate(PROMPTS)]
    _, _, summary = replay_on_engine(requests, engine.policy, engine.scheduler_config, engine.runner,
                                     progress=False)
    assert summary["lookahead_served_steps"] == sum(watched.sim) == sum(watched.engine) > 0


def test_a_lookahead_not_launching_serves_nothing_and_changes_no_token(tiny_llama):
    """``DecodeLookahead.launching`` False (calibration's cold decode steps): every decode step runs cold
    through the lookahead's readback, with the tokens of a run without it."""
    engine = llm(tiny_llama, decode_lookahead=True)
    ahead = engine.runner.lookahead
    ahead.launching = False
    out = engine.generate([PROMPTS[1], PROMPTS[2]], max_tokens=MAX_TOKENS)
    want = llm(tiny_llama).generate([PROMPTS[1], PROMPTS[2]], max_tokens=MAX_TOKENS)
    assert [o["token_ids"] for o in out] == [w["token_ids"] for w in want]
    assert ahead.hits == ahead.misses == 0
    ahead.launching = True
    engine.generate([PROMPTS[1]], max_tokens=MAX_TOKENS)
    assert ahead.hits > 0
