"""Request bodies of the OpenAI-compatible API, parsed strictly, and its error format.

``parse_request(body, Model)`` turns raw JSON into a validated pydantic model or raises an
``APIError`` whose body is OpenAI's ``{"error": {"message", "type", "param", "code"}}`` and
names the field: malformed JSON, a missing field, a field of the wrong type or out of range,
an unknown field, and OpenAI fields this server does not implement (logprobs, tools, ...),
which are refused unless they hold their no-op value, never silently ignored. A null for a
field that has a default and cannot be null means that default (``"temperature": null``).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

M = TypeVar("M", bound=BaseModel)

# OpenAI fields that this server does not implement, with the values that mean "off" (accepted
# and dropped); any other value is a 400 naming the field.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False), "top_logprobs": (None,), "echo": (None, False), "suffix": (None,),
    "best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None,), "response_format": (None, {"type": "text"}), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "reasoning_effort": (None,),
    "web_search_options": (None,), "service_tier": (None, "auto", "default"), "store": (None, False),
    "metadata": (None, {}),
}
MAX_STOP_STRINGS = 16
MAX_SEED = 2**32  # seeds are mixed with token indices into a 64-bit generator seed


class APIError(Exception):
    """An error reply: HTTP status plus OpenAI's error body.

    Args:
        status: HTTP status code.
        message: what is wrong, naming the field.
        param: the offending field, if any (e.g. ``messages[1].role``).
        code: a short machine-readable code, if any.
        kind: the error ``type`` ("invalid_request_error", "server_error"...).
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        """The JSON body of the reply."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """Fields shared by completions and chat completions (``top_k``, ``stop_token_ids``,
    ``ignore_eos`` and ``return_token_ids`` are extensions)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="keep the k most likely tokens; 0 or -1 disables")
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    return_token_ids: bool = False
    user: str | None = None  # an end-user id for the caller's records: it does not change generation

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str) and not (isinstance(v, list)
                                                             and all(isinstance(s, str) for s in v)):
            raise ValueError("must be a string or a list of strings")
        stops = [v] if isinstance(v, str) else (v or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        return v

    def stop_strings(self) -> list[str]:
        """``stop`` as a list (empty when not given)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check_options(self) -> None:
        """Cross-field rules that pydantic types cannot say.

        Raises:
            APIError: ``n`` other than 1, or ``stream_options`` without ``stream``.
        """
        if self.n != 1:
            raise APIError(400, f"n: only n=1 is supported, got {self.n}", "n")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options: only allowed when stream is true", "stream_options")


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``: prompt is a string, token ids, or a list of either (a batch)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v:
            if all(type(x) is int for x in v) or all(isinstance(x, str) for x in v):
                return v
            if all(isinstance(x, list) and x and all(type(t) is int for t in x) for x in v):
                return v
        raise ValueError("must be a string, a non-empty list of token ids, or a non-empty list of strings "
                         "or of non-empty token-id lists")

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a batch: texts or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if type(p[0]) is int:
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``: messages in the Llama 3 chat format (``engine.chat_format``)."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def token_limit(self) -> tuple[int | None, str]:
        """The requested completion length and the field that gave it.

        Raises:
            APIError: both fields given, with different values.
        """
        a, b = self.max_completion_tokens, self.max_tokens
        if a is not None and b is not None and a != b:
            raise APIError(400, f"max_tokens ({b}) and max_completion_tokens ({a}) disagree; give one",
                           "max_completion_tokens")
        return (a, "max_completion_tokens") if a is not None else (b, "max_tokens")


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _same(value: Any, off: Any) -> bool:
    """``value == off`` without taking booleans for numbers (``0 == False``) or None for anything."""
    if off is None or value is None:
        return value is off
    if isinstance(off, bool) or isinstance(value, bool):
        return isinstance(off, bool) and isinstance(value, bool) and value == off
    return bool(value == off)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(body: bytes, model: type[M]) -> M:
    """Parse and validate a JSON request body.

    Args:
        body: the raw body.
        model: the request model.

    Returns:
        The validated request (no-op values of ``UNSUPPORTED`` fields dropped).

    Raises:
        APIError: 400 for malformed JSON, a body that is not an object, an unsupported field
            with an effective value, or any validation error (the first, naming its field).
    """
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    for name, off in UNSUPPORTED.items():
        if name in data:
            value = data.pop(name)
            if not any(_same(value, v) for v in off):
                raise APIError(400, f"{name}: not supported by this server (got {value!r})", name, "unsupported")
    for name, info in model.model_fields.items():
        # null for a field with a default that cannot be null means "the default" (clients send it).
        if name in data and data[name] is None and not info.is_required() and type(None) not in get_args(
                info.annotation):
            del data[name]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            message = f"{param}: unknown field"
        else:
            message = f"{param}: {err['msg'].removeprefix('Value error, ')}"
        raise APIError(400, message, param or None) from None
