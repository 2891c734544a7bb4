"""The consumer side of an engine request: its output type, its stream, and the engine's error.

The engine's thread produces (``RequestStream.put``, ``resolve``); an asyncio task consumes
(``async for output in stream``). Items cross threads only through
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass


class EngineError(RuntimeError):
    """The engine failed or shut down; the request cannot complete."""


@dataclass(frozen=True)
class EngineOutput:
    """New tokens of one request after one step.

    Args:
        request_id: the request.
        token_ids: tokens generated since the last output.
        finished: whether the request is done.
        finish_reason: when finished: "stop" (a stop token), "length" or "abort".
        num_prompt_tokens: prompt length.
        num_output_tokens: tokens generated so far.
    """

    request_id: str
    token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int


class RequestStream:
    """The consumer side of one request: ``async for output in stream``; ``abort()`` to drop it.

    Created by ``AsyncEngine.add_request``; the stream ends after the finished output, and
    raises ``EngineError`` if the engine fails first.

    Args:
        request_id: the request.
        loop: the consumer's event loop (outputs are queued there).
        abort: called with ``request_id`` by ``abort()``.
    """

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop, abort: Callable[[str], None]) -> None:
        self.request_id = request_id
        self.loop = loop  # the consumer's event loop
        self.finished = False
        self._abort = abort
        self._queue: asyncio.Queue[EngineOutput | BaseException] = asyncio.Queue()

    def put(self, item: EngineOutput | BaseException) -> None:
        """Producer thread: hand an output (or the error that ends the stream) to the consumer's loop."""
        with contextlib.suppress(RuntimeError):  # RuntimeError: the consumer's loop is closed, nobody listens
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> EngineOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def abort(self) -> None:
        """Stop generating (client gone, stop string matched); a no-op once finished."""
        if not self.finished:
            self.finished = True
            self._abort(self.request_id)


def resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future, error: BaseException | None) -> None:
    """Producer thread: complete ``future`` on its loop, with ``error`` if given (unless its waiter gave up)."""

    def complete() -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    with contextlib.suppress(RuntimeError):  # the loop is closed
        loop.call_soon_threadsafe(complete)

