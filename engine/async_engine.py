"""The online engine: the step loop on a background thread, requests streamed to asyncio.

One thread owns the ``Scheduler`` and the executor (a ``ModelRunner``) and runs the step
contract while there is work, blocking on a condition variable when there is none (or
until the policy's next timer, ``Scheduler.next_wake``). The scheduler's clock is wall time
since the engine started. Other threads talk to it only through an inbox of commands
(add, abort) that the loop applies between steps; every request's new tokens go back to
the event loop that added it through ``loop.call_soon_threadsafe`` into an ``asyncio.Queue``.

If a step raises, the engine stops: every request in flight, and every later one, gets an
``EngineError`` (never a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.heap import frozen_heap
from engine.request_stream import EngineError, EngineOutput, RequestStream, resolve
from policies.scheduler import STEP_LOG_COLUMNS, Scheduler
from policies.sequence import Sequence as Seq
from policies.types import Request, SamplingParams, StepPlan, StepResult

MAX_STEP_LOG_ROWS = 100_000  # the step log keeps at most this many recent steps
_IDLE_RETRY_S = 0.001  # a timer already due that planned nothing is asked again after this


class Executor(Protocol):
    """Runs step plans (``engine.model_runner.ModelRunner``, or a test double)."""

    def execute(self, plan: StepPlan) -> StepResult: ...


@dataclass
class _Live:
    seq: Seq
    stream: RequestStream
    sent: int = 0  # output tokens delivered so far


class AsyncEngine:
    """A scheduler and an executor driven by a background thread, for online serving.

    Args:
        scheduler: a fresh scheduler (this engine owns it from now on).
        executor: runs plans (``ModelRunner``).
        clock: monotonic seconds.

    The thread starts at construction; call ``shutdown()`` to stop it.
    """

    def __init__(self, scheduler: Scheduler, executor: Executor,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self._clock = clock
        self._start = clock()
        self._cond = threading.Condition()
        self._inbox: list[tuple] = []  # ("add", request, stream, future) | ("abort", request_id)
        self._batch: deque[tuple] = deque()  # commands taken from the inbox, being applied (loop thread only)
        self._live: dict[str, _Live] = {}
        self._stopping = False
        self.error: BaseException | None = None  # why the loop stopped, once it has
        self.num_steps = 0
        self._thread = threading.Thread(target=self._run, name="servegym-engine", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------- any thread
    def now(self) -> float:
        """Seconds since the engine started (the scheduler's clock)."""
        return self._clock() - self._start

    @property
    def is_running(self) -> bool:
        """Whether the loop runs and takes requests (False after ``shutdown`` or a failure)."""
        return self._thread.is_alive() and not self._stopping

    def _post(self, command: tuple) -> None:
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise EngineError(self._dead_message())
            self._inbox.append(command)
            self._cond.notify()

    def _dead_message(self) -> str:
        if self.error is not None:
            return f"the engine failed: {self.error!r}"
        return "the engine is shut down"

    async def add_request(self, request_id: str, prompt_token_ids: Sequence[int], max_tokens: int,
                          sampling: SamplingParams, priority: int = 0) -> RequestStream:
        """Queue a request (arriving now) and return its output stream.

        Args:
            request_id: a unique id.
            prompt_token_ids: the prompt.
            max_tokens: most tokens to generate.
            sampling: sampling and stop-token parameters.
            priority: larger is more important (priority-aware policies).

        Returns:
            The stream, once the scheduler has accepted the request.

        Raises:
            ValueError: an invalid request, or one the scheduler rejects (duplicate id, more KV
                blocks than the pool has...).
            EngineError: the engine is not running.
        """
        ids = tuple(prompt_token_ids)
        request = Request(request_id, self.now(), len(ids), max_tokens, prompt_token_ids=ids, sampling=sampling,
                          priority=priority)
        loop = asyncio.get_running_loop()
        stream = RequestStream(request_id, loop, self.abort)
        accepted: asyncio.Future[None] = loop.create_future()
        self._post(("add", request, stream, accepted))
        try:
            await accepted
        except asyncio.CancelledError:
            self.abort(request_id)  # the caller went away while the request was being queued
            raise
        return stream

    def abort(self, request_id: str) -> None:
        """Drop a request in flight (applied before the next step; unknown or finished ids are ignored)."""
        with contextlib.suppress(EngineError):  # nothing is running any more
            self._post(("abort", request_id))

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the loop after its current step; requests in flight get an ``EngineError``."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        """Queue lengths and KV block use (read without locking: exact only while idle)."""
        s = self.scheduler
        return {"running": len(s.running), "waiting": len(s.waiting), "swapped": len(s.swapped),
                "kv_blocks_used": s.bm.num_used, "kv_blocks_free": s.bm.num_free_blocks,
                "kv_blocks_total": s.bm.num_blocks, "steps": self.num_steps}

    # -------------------------------------------------------- engine thread
    def _run(self) -> None:
        timeout: float | None = None  # how long to sleep when no command comes (None: until one does)
        try:
            with frozen_heap():  # the engine's objects stay out of full collections while it serves
                while True:
                    with self._cond:
                        if not self._inbox and not self._stopping and timeout != 0.0:
                            self._cond.wait(timeout)
                        if self._stopping:
                            break
                        self._batch.extend(self._inbox)
                        self._inbox.clear()
                    self._apply()
                    timeout = self._step()
        except BaseException as exc:  # any failure ends the loop; every waiting request must hear of it
            self.error = exc
        with self._cond:
            self._stopping = True
            self._batch.extend(self._inbox)
            self._inbox.clear()
        for cmd in self._batch:  # commands not applied (or whose application failed)
            if cmd[0] == "add":
                resolve(cmd[2].loop, cmd[3], self._failure())
        for live in self._live.values():
            live.stream.put(self._failure())
        self._live.clear()

    def _failure(self) -> EngineError:
        err = EngineError(self._dead_message())
        err.__cause__ = self.error
        return err

    def _apply(self) -> None:
        """Apply queued commands in order; each leaves ``_batch`` only once fully applied, so
        if one raises, the failure path still reaches its caller."""
        batch = self._batch
        while batch:
            cmd = batch[0]
            if cmd[0] == "add":
                _, request, stream, accepted = cmd
                try:
                    seq = self.scheduler.add_request(request)
                except ValueError as exc:  # a rejected request, not an engine failure
                    batch.popleft()
                    resolve(stream.loop, accepted, exc)
                    continue
                self._live[request.id] = _Live(seq, stream)
                resolve(stream.loop, accepted, None)
            else:
                live = self._live.get(cmd[1])
                if live is not None:
                    self.scheduler.abort_request(cmd[1], self.now())
                    del self._live[cmd[1]]
                    self._deliver(live)
            batch.popleft()

    def _step(self) -> float | None:
        """Run one step if there is one to run.

        Returns:
            How long to wait for a command before trying again: 0 (go on), a policy timer's
            delay, or None (nothing to do until a command arrives).
        """
        sched = self.scheduler
        if not sched.has_unfinished():
            return None
        now = self.now()
        plan = sched.schedule(now)
        if plan.is_empty:
            if plan.preempted:
                return 0.0
            # Nothing runs now: wait for the policy's timer, or else for an arrival or an
            # abort, which are the only other things that change what the policy does.
            wake = sched.next_wake(now)
            return None if wake is None else max(wake - now, _IDLE_RETRY_S)
        result = self.executor.execute(plan)
        done = sched.postprocess(plan, StepResult(self.now() - now, result.token_ids))
        self.num_steps += 1
        for seq_id in result.token_ids or ():
            live = self._live.get(seq_id)
            if live is not None:
                self._deliver(live)
        for seq in done:
            self._live.pop(seq.seq_id, None)
        self._trim_history()
        return 0.0

    def _deliver(self, live: _Live) -> None:
        seq = live.seq
        new = tuple(seq.output_ids[live.sent:])
        live.sent = len(seq.output_ids)
        live.stream.put(EngineOutput(seq.seq_id, new, seq.is_finished, seq.finish_reason, seq.prompt_len,
                                      len(seq.output_ids)))

    def _trim_history(self) -> None:
        """Keep a long-running server's memory flat: finished sequences were delivered, and
        the step log keeps only its last ``MAX_STEP_LOG_ROWS`` rows."""
        sched = self.scheduler
        sched.finished.clear()
        width = len(STEP_LOG_COLUMNS)
        if len(sched.step_log) > 2 * MAX_STEP_LOG_ROWS * width:
            del sched.step_log[: len(sched.step_log) - MAX_STEP_LOG_ROWS * width]
