"""Between the HTTP layer and the engine: requests checked against the model, outputs turned into text.

``GenerationSpec`` is one prompt's engine request, validated against the served model (token
ids within its vocabulary, prompt plus completion within its context window, stop tokens);
``Generation`` follows its engine stream and yields ``Delta``s of text (incremental
detokenization, stop strings ending it with an abort in the scheduler); ``start`` queues a
batch of them, all or none; ``merge`` interleaves their deltas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.api_protocol import APIError
from engine.async_engine import AsyncEngine
from engine.detokenizer import TextStream
from engine.request_stream import EngineError, RequestStream
from engine.tokenizer import Tokenizer
from policies.types import SamplingParams

GREEDY_BELOW = 1e-5  # temperatures below this sample greedily (dividing logits by them overflows)


@dataclass(frozen=True)
class ServedModel:
    """What the API needs to know about the model behind it.

    Args:
        name: the model name clients must send.
        vocab_size: the model's vocabulary size (valid token ids are below it).
        max_model_len: the context window (prompt plus completion).
        stop_token_ids: ids that end a generation unless ``ignore_eos`` (the model's EOS ids
            and the tokenizer's end-of-text / end-of-turn ids).
        created: creation time reported by ``/v1/models`` (Unix seconds).
        kv_capacity: tokens the KV pool holds (blocks times block size), which caps the default
            completion length; None: not capped.
    """

    name: str
    vocab_size: int
    max_model_len: int
    stop_token_ids: tuple[int, ...] = ()
    created: int = 0
    kv_capacity: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ServedModel.name must be non-empty")
        if self.vocab_size < 1 or self.max_model_len < 2:
            raise ValueError(f"ServedModel: vocab_size must be >= 1 and max_model_len >= 2, got "
                             f"{self.vocab_size} and {self.max_model_len}")
        bad = [t for t in self.stop_token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"ServedModel: stop token ids {bad} are outside the vocabulary [0, {self.vocab_size})")
        if self.kv_capacity is not None and self.kv_capacity < 1:
            raise ValueError(f"ServedModel.kv_capacity must be >= 1 or None, got {self.kv_capacity}")


@dataclass(frozen=True)
class GenerationSpec:
    """One prompt's engine request."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    """Raises APIError (400) if an id is outside ``[0, vocab_size)``."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise APIError(400, f"{param}: token id {bad} is outside the model's vocabulary [0, {vocab_size})", param)


def make_spec(req: Any, prompt_ids: Sequence[int], max_tokens: int | None, limit_param: str, model: ServedModel,
              tokenizer: Tokenizer | None, prompt_param: str = "prompt") -> GenerationSpec:
    """Validate one prompt of a request against the model.

    Args:
        req: the parsed request (``api_protocol._GenerationRequest``).
        prompt_ids: the prompt's token ids.
        max_tokens: the requested completion length (None: up to the context window, or as much
            as the KV pool holds beside the prompt if that is less).
        limit_param: the field ``max_tokens`` came from (for messages).
        model: the served model.
        tokenizer: the server's tokenizer, if any.
        prompt_param: the field the prompt came from (for messages).

    Raises:
        APIError: 400 for an empty prompt, ids outside the vocabulary, a prompt plus completion
            over the context window, or stop strings without a tokenizer.
    """
    n, window = len(prompt_ids), model.max_model_len
    if n == 0:
        raise APIError(400, f"{prompt_param}: the prompt is empty", prompt_param)
    check_token_ids(prompt_ids, model.vocab_size, prompt_param)
    if n >= window:
        raise APIError(400, f"{prompt_param}: the prompt has {n} tokens but this model's context window is {window} "
                            "tokens (prompt plus at least one new token)", prompt_param, "context_length_exceeded")
    if max_tokens is None:
        room = window if model.kv_capacity is None or model.kv_capacity <= n else min(window, model.kv_capacity)
        max_tokens = room - n  # a prompt the pool cannot hold at all is left for the scheduler to reject
    elif n + max_tokens > window:
        raise APIError(400, f"{limit_param}: {n} prompt tokens + {max_tokens} completion tokens = {n + max_tokens} "
                            f"exceed this model's context window of {window} tokens", limit_param,
                       "context_length_exceeded")
    stops = req.stop_strings()
    if stops and tokenizer is None:
        raise APIError(400, "stop: stop strings need a tokenizer and this server has none", "stop")
    check_token_ids(req.stop_token_ids, model.vocab_size, "stop_token_ids")
    stop_ids = list(req.stop_token_ids) + ([] if req.ignore_eos else list(model.stop_token_ids))
    # ignore_eos=False in the scheduler's terms: the stop ids below are exactly those to honour.
    sampling = SamplingParams(temperature=0.0 if req.temperature < GREEDY_BELOW else req.temperature,
                              top_p=req.top_p, top_k=max(req.top_k, 0), seed=req.seed, ignore_eos=False,
                              stop_token_ids=tuple(dict.fromkeys(stop_ids)))
    return GenerationSpec(tuple(prompt_ids), max_tokens, sampling, tuple(stops))


@dataclass
class Delta:
    """New output of one generation: text, the tokens behind it, and the finish reason once done."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class Generation:
    """One engine request followed as text.

    Args:
        stream: the engine stream.
        spec: what was asked.
        tokenizer: turns tokens into text (None: the text stays empty).
    """

    def __init__(self, stream: RequestStream, spec: GenerationSpec, tokenizer: Tokenizer | None) -> None:
        self.stream = stream
        self.spec = spec
        self.text = TextStream(tokenizer, spec.stop) if tokenizer is not None else None
        self.num_prompt_tokens = len(spec.prompt_ids)
        self.num_output_tokens = 0
        self._stop_ids = frozenset(spec.sampling.stop_token_ids)

    def abort(self) -> None:
        """Stop the engine request (a no-op once it finished)."""
        self.stream.abort()

    async def deltas(self) -> AsyncIterator[Delta]:
        """Deltas until the generation finishes (the last one has ``finish_reason``).

        Stop tokens count as completion tokens but give no text; a stop string cuts the text
        before it, finishes with "stop" and aborts the request in the engine.

        Raises:
            EngineError: the engine failed.
        """
        try:
            async for out in self.stream:
                ids = list(out.token_ids)
                self.num_output_tokens += len(ids)
                shown = ids[:-1] if out.finish_reason == "stop" and ids and ids[-1] in self._stop_ids else ids
                text = self.text.push(shown) if self.text is not None else ""
                if self.text is not None and self.text.stopped:
                    self.stream.abort()  # at once: the scheduler frees its blocks before the next step
                    yield Delta(text, ids, "stop")
                    return
                if out.finished:
                    if self.text is not None:
                        text += self.text.finish()
                    stopped = self.text is not None and self.text.stopped
                    yield Delta(text, ids, "stop" if stopped else out.finish_reason)
                    return
                yield Delta(text, ids)
        finally:
            self.stream.abort()  # a no-op after the finished output

    async def collect(self) -> Delta:
        """The whole output as one delta."""
        whole = Delta("")
        async for d in self.deltas():
            whole.text += d.text
            whole.token_ids += d.token_ids
            whole.finish_reason = d.finish_reason
        return whole


async def start(engine: AsyncEngine, request_id: str, specs: Sequence[GenerationSpec],
                tokenizer: Tokenizer | None, param: str = "prompt") -> list[Generation]:
    """Queue every spec (ids ``{request_id}-{i}``), or none of them.

    Args:
        engine: the engine.
        request_id: the API request's id.
        specs: one per prompt.
        tokenizer: the server's tokenizer, if any.
        param: the field the prompts came from (for messages).

    Raises:
        APIError: 400 when the scheduler rejects one (e.g. more KV blocks than the pool has),
            503 when the engine is not running.
    """
    gens: list[Generation] = []
    try:
        for i, spec in enumerate(specs):
            stream = await engine.add_request(f"{request_id}-{i}", spec.prompt_ids, spec.max_tokens, spec.sampling)
            gens.append(Generation(stream, spec, tokenizer))
    except BaseException as exc:
        for g in gens:
            g.abort()
        if isinstance(exc, ValueError):
            where = param if len(specs) == 1 else f"{param}[{len(gens)}]"
            raise APIError(400, f"{where}: {exc}", where, "request_too_large") from None
        if isinstance(exc, EngineError):
            raise APIError(503, str(exc), None, "engine_unavailable", "server_error") from None
        raise
    return gens


async def merge(gens: Sequence[Generation]) -> AsyncIterator[tuple[int, Delta]]:
    """Interleave the deltas of several generations as they come: ``(index, delta)``.

    Raises:
        EngineError: any generation's engine failure (the others are aborted).
    """
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, gen: Generation) -> None:
        try:
            async for d in gen.deltas():
                queue.put_nowait((i, d))
        except Exception as exc:  # handed to the consumer, which re-raises it
            queue.put_nowait((i, exc))
        finally:
            queue.put_nowait((i, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        left = len(gens)
        while left:
            i, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for g in gens:
            g.abort()
