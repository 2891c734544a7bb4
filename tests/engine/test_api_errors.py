"""The server's errors: every bad request a 4xx naming the field; engine failures reach the client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.api_server import build_app
from engine.tokenizer import Llama3Tokenizer
from tests.engine.serving_helpers import GREEDY, Exploding, complete, make_engine, runner, served


@pytest.mark.parametrize(("path", "body", "status", "param", "message"), [
    ("/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "a", "temperature": NaN}', 400, None, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, None, "must be a JSON object, got list"),
    ("/v1/completions", {"prompt": "a"}, 400, "model", "model: Field required"),
    ("/v1/completions", {"model": "tiny"}, 400, "prompt", "prompt: Field required"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "a"}, 404, "model", "'gpt-4' does not exist"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "temperature": "hot"}, 400, "temperature", "valid number"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "temperature": -0.5}, 400, "temperature",
     "greater than or equal to 0"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "top_p": 0}, 400, "top_p", "greater than 0"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "top_p": 1.5}, 400, "top_p", "less than or equal to 1"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "max_tokens",
     "greater than or equal to 1"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 2.5}, 400, "max_tokens", "valid integer"),
    ("/v1/completions", {"model": "tiny", "prompt": [1, 2], "max_tokens": 511}, 400, "max_tokens",
     "2 prompt tokens + 511 completion tokens = 513 exceed this model's context window of 512 tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": [i % 300 for i in range(512)]}, 400, "prompt",
     "the prompt has 512 tokens but this model's context window is 512 tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": [1, 300]}, 400, "prompt",
     "token id 300 is outside the model's vocabulary [0, 300)"),
    ("/v1/completions", {"model": "tiny", "prompt": ["a", [1]]}, 400, "prompt", "must be a string, a non-empty"),
    ("/v1/completions", {"model": "tiny", "prompt": []}, 400, "prompt", "must be a string, a non-empty"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "n": 2}, 400, "n", "only n=1 is supported, got 2"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "logprobs": 1}, 400, "logprobs", "not supported"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "presence_penalty": 0.5}, 400, "presence_penalty",
     "not supported"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "colour": "red"}, 400, "colour", "colour: unknown field"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "stop": ""}, 400, "stop", "must be non-empty"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "stop": [1]}, 400, "stop", "a string or a list of strings"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "stop_token_ids": [999]}, 400, "stop_token_ids",
     "token id 999 is outside"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "ignore_eos": "yes"}, 400, "ignore_eos", "valid boolean"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "seed": -1}, 400, "seed", "greater than or equal to 0"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "stream_options": {"include_usage": True}}, 400,
     "stream_options", "only allowed when stream is true"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "stream": True, "stream_options": {"usage": True}}, 400,
     "stream_options.usage", "unknown field"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages", "at least one message"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "a"}]}, 400,
     "messages[0].role", "unknown role 'robot'"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content", "must be a string or a list of text parts"),
    ("/v1/chat/completions", {"model": "tiny", "messages": ["hi"]}, 400, "messages[0]", "valid dictionary"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "a"}], "tools": [{}]},
     400, "tools", "not supported"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "a"}], "max_tokens": 4,
                              "max_completion_tokens": 5}, 400, "max_completion_tokens", "disagree"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "a"}],
                              "max_completion_tokens": 600}, 400, "max_completion_tokens", "context window of 512"),
])
def test_bad_requests(tiny_client: TestClient, path: str, body: Any, status: int, param: str | None,
                      message: str) -> None:
    c = tiny_client
    r = c.post(path, content=body) if isinstance(body, bytes) else c.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert message in err["message"], err["message"]


def test_unknown_route_no_op_fields_and_nulls(tiny_client: TestClient) -> None:
    r = tiny_client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"] == {"message": "Not Found", "type": "not_found_error",
                                                          "param": None, "code": None}
    out = complete(tiny_client, prompt=[1, 2], max_tokens=2, logprobs=None, presence_penalty=0.0, echo=False,
                   user="u1", **GREEDY)
    assert out["usage"]["completion_tokens"] == 2
    # null where a default exists means the default; for max_tokens it means "up to the context window"
    out = complete(tiny_client, prompt=[1, 2], max_tokens=None, n=None, stream=None, top_p=None, ignore_eos=True,
                   temperature=0, stop=None, seed=None)
    assert out["usage"]["completion_tokens"] == 510 and out["choices"][0]["finish_reason"] == "length"


def test_small_pool_and_no_tokenizer(tiny_llama: Path) -> None:
    r = runner(tiny_llama, blocks=8)  # 32 tokens of KV
    engine = make_engine(r, blocks=8)
    try:
        with pytest.raises(ValueError, match="has 128256 token ids but the model's vocab_size is 300"):
            build_app(engine, served(r), Llama3Tokenizer())
        with TestClient(build_app(engine, served(r), None)) as c:
            big = c.post("/v1/completions", json={"model": "tiny", "prompt": list(range(1, 11)), "max_tokens": 30})
            assert big.status_code == 400 and "needs 10 KV blocks" in big.json()["error"]["message"]
            assert big.json()["error"]["param"] == "prompt"
            text = c.post("/v1/completions", json={"model": "tiny", "prompt": "hello"})
            assert text.status_code == 400 and "text prompts need a tokenizer" in text.json()["error"]["message"]
            chat = c.post("/v1/chat/completions",
                          json={"model": "tiny", "messages": [{"role": "user", "content": "a"}]})
            assert chat.status_code == 400 and "no tokenizer" in chat.json()["error"]["message"]
            stop = c.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2], "stop": "x"})
            assert stop.status_code == 400 and stop.json()["error"]["param"] == "stop"
            ok = c.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2], "max_tokens": 3, **GREEDY}).json()
            assert ok["choices"][0]["text"] == "" and len(ok["choices"][0]["token_ids"]) == 3
            # no max_tokens: as many as the 32-token pool holds beside the prompt (the window is 512)
            fill = c.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2], "max_tokens": None,
                                                   **GREEDY}).json()
            assert len(fill["choices"][0]["token_ids"]) == 30 and fill["choices"][0]["finish_reason"] == "length"
    finally:
        engine.shutdown()


@pytest.mark.parametrize("stream", [False, True])
def test_engine_failure_is_an_error_not_a_hang(tiny_llama: Path, stream: bool) -> None:
    r = runner(tiny_llama, blocks=32)
    engine = make_engine(Exploding(r, fail_at=3), blocks=32)
    try:
        with TestClient(build_app(engine, served(r), None)) as c:
            body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 20, "stream": stream, **GREEDY}
            res = c.post("/v1/completions", json=body)
            if stream:
                assert res.status_code == 200
                blocks = res.text.split("\n\n")
                err = json.loads(blocks[-2][len("data: "):])["error"]
                assert "data: [DONE]" not in blocks
            else:
                assert res.status_code == 500
                err = res.json()["error"]
            assert err["type"] == "server_error" and "device on fire" in err["message"]
            health = c.get("/health")
            assert health.status_code == 503 and "device on fire" in health.json()["error"]["message"]
            again = c.post("/v1/completions", json=body)
            assert again.status_code == 503 and "the engine failed" in again.json()["error"]["message"]
    finally:
        engine.shutdown()


