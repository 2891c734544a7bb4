"""The online engine: concurrent requests, aborts, idling, timers, failures and shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import LLM
from engine.async_engine import AsyncEngine
from engine.request_stream import EngineError, RequestStream
from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.sequence import Sequence as Seq
from policies.types import Request, SamplingParams
from tests.engine.serving_helpers import Exploding, make_engine, wait_idle

BLOCKS = 64
PROMPTS = [list(range(3, 3 + n)) for n in (5, 17, 9, 2)]
GREEDY = SamplingParams()  # greedy, EOS ignored: exactly max_tokens tokens


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(str(tiny_llama), dtype="float32", device="cpu", block_size=4, num_gpu_blocks=BLOCKS)


@pytest.fixture(scope="module")
def reference(llm: LLM) -> list[list[int]]:
    return [o["token_ids"] for o in llm.generate(PROMPTS, max_tokens=10)]


@pytest.fixture
def engine(llm: LLM) -> Iterator[AsyncEngine]:
    eng = make_engine(llm.runner, blocks=BLOCKS)
    yield eng
    eng.shutdown()


async def collect(stream: RequestStream) -> tuple[list[int], str | None]:
    tokens: list[int] = []
    reason = None
    async for out in stream:
        tokens += out.token_ids
        reason = out.finish_reason
        assert out.num_output_tokens == len(tokens)
    return tokens, reason


def test_concurrent_requests_match_offline_generation(engine: AsyncEngine, reference: list[list[int]]) -> None:
    async def main() -> list[tuple[list[int], str | None]]:
        async def one(i: int) -> tuple[list[int], str | None]:
            await asyncio.sleep(0.005 * i)  # staggered arrivals join a running batch
            return await collect(await engine.add_request(f"r{i}", PROMPTS[i], 10, GREEDY))

        return await asyncio.gather(*(one(i) for i in range(len(PROMPTS))))

    results = asyncio.run(main())
    assert [t for t, _ in results] == reference
    assert all(r == "length" for _, r in results)
    assert wait_idle(engine)["kv_blocks_used"] == 0


def test_stop_tokens_finish_with_stop(engine: AsyncEngine, reference: list[list[int]]) -> None:
    stop = reference[1][3]
    params = SamplingParams(ignore_eos=False, stop_token_ids=(stop,))
    tokens, reason = asyncio.run(_run_one(engine, "s", PROMPTS[1], 10, params))
    assert tokens == reference[1][: reference[1].index(stop) + 1] and reason == "stop"


async def _run_one(engine: AsyncEngine, rid: str, prompt: list[int], n: int,
                   params: SamplingParams) -> tuple[list[int], str | None]:
    return await collect(await engine.add_request(rid, prompt, n, params))


def test_abort_frees_the_blocks_and_spares_the_others(engine: AsyncEngine, reference: list[list[int]]) -> None:
    async def main() -> tuple[list[int], list[int]]:
        victim = await engine.add_request("victim", PROMPTS[1], 200, GREEDY)
        other = asyncio.ensure_future(_run_one(engine, "other", PROMPTS[0], 10, GREEDY))
        got: list[int] = []
        async for out in victim:
            got += out.token_ids
            if len(got) >= 3:
                victim.abort()
                break
        return got, (await other)[0]

    steps = engine.num_steps
    got, other = asyncio.run(main())
    assert got[:3] == reference[1][:3]
    assert other == reference[0]
    stats = wait_idle(engine)
    assert stats["kv_blocks_used"] == 0 and stats["kv_blocks_free"] == BLOCKS
    assert engine.num_steps - steps < 30  # the victim's 200 tokens were never generated
    engine.scheduler.bm.check_invariants()


def test_rejected_and_invalid_requests(engine: AsyncEngine) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match=r"needs \d+ KV blocks .* only 64 blocks"):
            await engine.add_request("big", list(range(1, 200)), 300, GREEDY)
        with pytest.raises(ValueError, match="output_len must be >= 1"):
            await engine.add_request("zero", [1, 2], 0, GREEDY)
        await collect(await engine.add_request("dup", [1, 2], 2, GREEDY))
        with pytest.raises(ValueError, match="duplicate request id 'dup'"):
            await engine.add_request("dup", [1, 2], 2, GREEDY)

    asyncio.run(main())
    assert engine.is_running


def test_idle_engine_blocks_instead_of_spinning(engine: AsyncEngine) -> None:
    asyncio.run(_run_one(engine, "warm", [1, 2, 3], 2, GREEDY))
    wait_idle(engine)
    steps, cpu = engine.num_steps, time.process_time()
    time.sleep(0.3)
    assert engine.num_steps == steps
    assert time.process_time() - cpu < 0.1  # a spinning loop would burn ~0.3 s of CPU here


def test_dynamic_batching_timer_wakes_the_loop(llm: LLM) -> None:
    engine = make_engine(llm.runner, BLOCKS, "dynamic", max_num_seqs=8, max_wait_s=0.15)
    try:
        start = time.monotonic()
        tokens, reason = asyncio.run(_run_one(engine, "lonely", [5, 6, 7], 3, GREEDY))
        waited = time.monotonic() - start
        assert len(tokens) == 3 and reason == "length"
        assert 0.15 <= waited < 2.0  # held for its batch to fill, then released by the timer alone
    finally:
        engine.shutdown()


def test_an_engine_failure_reaches_every_request(llm: LLM) -> None:
    engine = make_engine(Exploding(llm.runner, fail_at=4), BLOCKS)

    async def main() -> list[BaseException | tuple[list[int], str | None]]:
        streams = [await engine.add_request(f"f{i}", p, 20, GREEDY) for i, p in enumerate(PROMPTS)]
        return await asyncio.wait_for(asyncio.gather(*(collect(s) for s in streams), return_exceptions=True), 10)

    results = asyncio.run(main())
    assert all(isinstance(r, EngineError) and "device on fire" in str(r) for r in results)
    assert not engine.is_running and isinstance(engine.error, RuntimeError)

    async def later() -> None:
        with pytest.raises(EngineError, match="the engine failed: RuntimeError\\('device on fire'\\)"):
            await engine.add_request("late", [1, 2], 2, GREEDY)

    asyncio.run(later())


def test_shutdown_ends_requests_in_flight(llm: LLM) -> None:
    engine = make_engine(llm.runner, BLOCKS)

    async def main() -> None:
        stream = await engine.add_request("long", PROMPTS[0], 200, GREEDY)
        first = await stream.__anext__()
        assert first.token_ids and not first.finished
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
        with pytest.raises(EngineError, match="shut down"):
            async for _ in stream:
                pass
        with pytest.raises(EngineError, match="shut down"):
            await engine.add_request("after", [1], 1, GREEDY)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert not engine.is_running and engine.error is None


def test_a_failure_while_queueing_is_not_a_hang(llm: LLM) -> None:
    class Broken(Scheduler):
        def add_request(self, request: Request) -> Seq:
            if request.id == "bad":
                raise RuntimeError("bookkeeping bug")
            return super().add_request(request)

    engine = AsyncEngine(Broken(SchedulerConfig(num_gpu_blocks=BLOCKS, block_size=4), make_policy("continuous")),
                         llm.runner)

    async def main() -> None:
        ok = await engine.add_request("ok", PROMPTS[0], 100, GREEDY)
        with pytest.raises(EngineError, match="bookkeeping bug"):
            await engine.add_request("bad", PROMPTS[1], 5, GREEDY)
        with pytest.raises(EngineError, match="bookkeeping bug"):
            await collect(ok)

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        engine.shutdown()
