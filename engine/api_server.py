"""The OpenAI-compatible HTTP API over an ``AsyncEngine`` (FastAPI).

``build_app(engine, model, tokenizer)`` returns the app; it closes over its engine (no
global state). Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, the last two as JSON or, with ``"stream": true``, as
Server-Sent Events (``data: {json}`` chunks, then ``data: [DONE]``). A client that goes away
mid-request has its sequences aborted in the scheduler. Errors use OpenAI's body
(``engine.api_protocol.APIError``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.api_protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_request
from engine.async_engine import AsyncEngine
from engine.chat_format import ChatFormat, ChatFormatError
from engine.request_stream import EngineError
from engine.serving import Delta, Generation, GenerationSpec, ServedModel, make_spec, merge, start
from engine.tokenizer import Tokenizer, check_vocab

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(gens: list[Generation]) -> dict[str, int]:
    prompt = sum(g.num_prompt_tokens for g in gens)
    completion = sum(g.num_output_tokens for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Any, gens: list[Generation]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it and abort ``gens``.

    Returns:
        ``work``'s result, or None when the client went away.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():  # the client left (or this handler is cancelled): stop generating
            task.cancel()
            for g in gens:
                g.abort()
    if not task.done():
        await asyncio.gather(task, return_exceptions=True)  # let the cancellation land
        return None
    return task.result()


class _Api:
    """The state the routes share: engine, model, tokenizer, chat format."""

    def __init__(self, engine: AsyncEngine, model: ServedModel, tokenizer: Tokenizer | None) -> None:
        self.engine = engine
        self.model = model
        self.tokenizer = tokenizer
        self.chat: ChatFormat | None = None
        self.chat_problem = "this server has no tokenizer (start it with --tokenizer)"
        if tokenizer is not None:
            try:
                self.chat = ChatFormat(tokenizer)
            except ValueError as exc:
                self.chat_problem = f"the tokenizer lacks the Llama 3 chat tokens ({exc})"

    def check_model(self, name: str) -> None:
        """Raises APIError (404) unless ``name`` is the served model's."""
        if name != self.model.name:
            raise APIError(404, f"model: the model {name!r} does not exist; this server serves {self.model.name!r}",
                           "model", "model_not_found")

    def encode_prompts(self, req: CompletionRequest) -> list[list[int]]:
        """Token ids of every prompt of a completion request (texts start with the bos id).

        Raises:
            APIError: a text prompt on a server without a tokenizer.
        """
        out = []
        for p in req.prompts():
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise APIError(400, "prompt: text prompts need a tokenizer and this server has none; "
                                        "send token ids", "prompt")
                out.append(self.tokenizer.encode(p, bos=True))
            else:
                out.append(p)
        return out

    async def respond(self, request: Request, req: Any, specs: list[GenerationSpec], kind: str,
                      param: str) -> Response:
        """Start the generations and answer as JSON or as an event stream."""
        created = int(time.time())
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        rid = f"{prefix}-{uuid.uuid4().hex}"
        gens = await start(self.engine, rid, specs, self.tokenizer, param)
        ids = req.return_token_ids or self.tokenizer is None
        head = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
                "model": self.model.name}
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            body = self._events(gens, head, kind, ids, usage)
            return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
        try:
            outs = await _unless_disconnected(request, asyncio.gather(*(g.collect() for g in gens)), gens)
        except EngineError as exc:
            raise APIError(500, str(exc), None, "engine_error", "server_error") from None
        if outs is None:
            return Response(status_code=499)  # nobody is listening
        choices = [self._choice(i, d, kind, ids, gens[i]) for i, d in enumerate(outs)]
        return JSONResponse({**head, "choices": choices, "usage": _usage(gens)})

    @staticmethod
    def _choice(i: int, d: Delta, kind: str, ids: bool, gen: Generation) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": i}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": d.text}
        else:
            choice["text"] = d.text
        choice |= {"logprobs": None, "finish_reason": d.finish_reason}
        if ids:
            choice |= {"prompt_token_ids": list(gen.spec.prompt_ids), "token_ids": d.token_ids}
        return choice

    async def _events(self, gens: list[Generation], head: dict[str, Any], kind: str, ids: bool,
                      usage: bool) -> AsyncIterator[str]:
        head = {**head, "object": "chat.completion.chunk" if kind == "chat" else "text_completion"}
        extra = {"usage": None} if usage else {}

        def chunk(i: int, d: Delta | None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": i}
            if kind == "chat":
                choice["delta"] = {"role": "assistant", "content": ""} if d is None else (
                    {"content": d.text} if d.text else {})
            else:
                choice["text"] = "" if d is None else d.text
            choice |= {"logprobs": None, "finish_reason": None if d is None else d.finish_reason}
            if ids and d is not None:
                choice["token_ids"] = d.token_ids
            return {**head, "choices": [choice], **extra}

        try:
            if kind == "chat":
                for i in range(len(gens)):
                    yield _sse(chunk(i, None))
            async for i, d in merge(gens):
                if d.text or d.finish_reason or (ids and d.token_ids):
                    yield _sse(chunk(i, d))
            if usage:
                yield _sse({**head, "choices": [], "usage": _usage(gens)})
            yield _sse("[DONE]")
        except EngineError as exc:  # the headers are out: report in the stream, and end it
            yield _sse(APIError(500, str(exc), None, "engine_error", "server_error").body())
        finally:
            for g in gens:
                g.abort()


def build_app(engine: AsyncEngine, model: ServedModel, tokenizer: Tokenizer | None) -> FastAPI:
    """The FastAPI app serving ``model`` through ``engine``.

    Args:
        engine: a running engine (the caller shuts it down).
        model: name, vocabulary, context window and stop ids of the served model.
        tokenizer: text <-> ids; None serves token-id prompts only (texts come back empty and
            every choice carries ``token_ids``).

    Returns:
        The app.

    Raises:
        ValueError: a tokenizer with ids outside the model's vocabulary.
    """
    if tokenizer is not None:
        check_vocab(tokenizer, model.vocab_size)
    api = _Api(engine, model, tokenizer)
    app = FastAPI(title="servegym", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), kind=kind).body(), status_code=exc.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.is_running:
            raise APIError(503, f"the engine is not running: {engine.error!r}", None, "engine_unavailable",
                           "server_error")
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {"id": model.name, "object": "model", "created": model.created, "owned_by": "servegym",
                "max_model_len": model.max_model_len}
        return JSONResponse({"object": "list", "data": [card]})

    def route(parse: Callable[[bytes], Any], prepare: Callable[[Any], tuple[list[GenerationSpec], str]],
              kind: str) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            req = parse(await request.body())
            req.check_options()
            api.check_model(req.model)
            specs, param = prepare(req)
            return await api.respond(request, req, specs, kind, param)

        return handle

    def completion_specs(req: CompletionRequest) -> tuple[list[GenerationSpec], str]:
        prompts = api.encode_prompts(req)
        many = len(prompts) > 1
        return [make_spec(req, p, req.max_tokens, "max_tokens", model, tokenizer, f"prompt[{i}]" if many else "prompt")
                for i, p in enumerate(prompts)], "prompt"

    def chat_specs(req: ChatCompletionRequest) -> tuple[list[GenerationSpec], str]:
        if api.chat is None:
            raise APIError(400, f"messages: chat needs a Llama 3 tokenizer: {api.chat_problem}", "messages")
        try:
            ids = api.chat.encode(req.messages)
        except ChatFormatError as exc:
            raise APIError(400, str(exc), exc.param) from None
        limit, param = req.token_limit()
        return [make_spec(req, ids, limit, param, model, tokenizer, "messages")], "messages"

    app.add_api_route("/v1/completions", route(lambda b: parse_request(b, CompletionRequest), completion_specs,
                                               "completion"), methods=["POST"])
    app.add_api_route("/v1/chat/completions", route(lambda b: parse_request(b, ChatCompletionRequest), chat_specs,
                                                    "chat"), methods=["POST"])
    return app
