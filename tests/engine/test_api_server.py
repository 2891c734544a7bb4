"""The OpenAI-compatible server on the tiny model: outputs, streaming, chat, concurrency, aborts."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from engine import LLM
from engine.api_server import build_app
from engine.async_engine import AsyncEngine
from engine.chat_format import ChatFormat
from engine.tokenizer import Llama3Tokenizer, Tokenizer
from tests.engine.serving_helpers import BLOCKS, GREEDY, complete, events, make_engine, runner, served, wait_idle

PROMPTS = [list(range(3, 3 + n)) for n in (5, 17, 9, 30)]
N = 12


@pytest.fixture(scope="module")
def reference(tiny_llama_tok: Path) -> dict[str, Any]:
    """Offline greedy outputs (EOS ignored) of the token-id prompts and of a text prompt."""
    llm = LLM(str(tiny_llama_tok), dtype="float32", device="cpu", block_size=4, num_gpu_blocks=BLOCKS)
    ids = [o["token_ids"] for o in llm.generate(PROMPTS, max_tokens=N)]
    text = llm.generate(["Hello there"], max_tokens=N)[0]
    long = llm.generate([PROMPTS[1]], max_tokens=60)[0]
    return {"ids": ids, "text": text, "long": long}


def test_health_and_models(tiny_client: TestClient) -> None:
    assert tiny_client.get("/health").json() == {"status": "ok"}
    models = tiny_client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == 512


def test_greedy_completions_equal_offline_generate(tiny_client: TestClient, tiny_tok: Tokenizer,
                                                   reference: dict[str, Any]) -> None:
    for prompt, want in zip(PROMPTS, reference["ids"], strict=True):
        out = complete(tiny_client, prompt=prompt, max_tokens=N, return_token_ids=True, **GREEDY)
        choice = out["choices"][0]
        assert choice["token_ids"] == want and choice["prompt_token_ids"] == prompt
        assert choice["text"] == tiny_tok.decode(want) and choice["finish_reason"] == "length"
        assert out["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": N, "total_tokens": len(prompt) + N}
        assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    text = complete(tiny_client, prompt="Hello there", max_tokens=N, return_token_ids=True, **GREEDY)["choices"][0]
    assert text["prompt_token_ids"] == tiny_tok.encode("Hello there", bos=True)
    assert text["token_ids"] == reference["text"]["token_ids"] and text["text"] == reference["text"]["text"]


def test_streaming_concatenates_to_the_full_response(tiny_client: TestClient) -> None:
    body = {"prompt": "Hello there", "max_tokens": N, "return_token_ids": True, **GREEDY}
    whole = complete(tiny_client, **body)
    r = tiny_client.post("/v1/completions", json={"model": "tiny", "stream": True,
                                                  "stream_options": {"include_usage": True}, **body})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = events(r.text)
    *parts, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    assert all(c["usage"] is None and c["object"] == "text_completion" for c in parts)
    assert "".join(c["choices"][0]["text"] for c in parts) == whole["choices"][0]["text"]
    assert sum((c["choices"][0]["token_ids"] for c in parts), []) == whole["choices"][0]["token_ids"]
    assert [c["choices"][0]["finish_reason"] for c in parts][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in parts[:-1])
    plain = events(tiny_client.post("/v1/completions", json={"model": "tiny", "stream": True, **body}).text)
    assert all("usage" not in c for c in plain)


def test_chat_completions(tiny_client: TestClient, tiny_tok: Tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    body = {"model": "tiny", "messages": messages, "max_completion_tokens": 8, "return_token_ids": True, **GREEDY}
    r = tiny_client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    choice = out["choices"][0]
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert choice["prompt_token_ids"] == ChatFormat(tiny_tok).encode(messages)
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert len(choice["token_ids"]) == 8 and out["usage"]["completion_tokens"] == 8
    stream = events(tiny_client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert stream[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in stream)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in stream)
    assert text == choice["message"]["content"] and stream[-1]["choices"][0]["finish_reason"] == "length"
    legacy = tiny_client.post("/v1/chat/completions", json={**body, "max_completion_tokens": None, "max_tokens": 8})
    assert legacy.json()["choices"][0]["token_ids"] == choice["token_ids"]


def test_concurrent_requests_all_complete(tiny_server: tuple[Any, AsyncEngine], reference: dict[str, Any]) -> None:
    app, engine = tiny_server

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            reqs = [c.post("/v1/completions", json={"model": "tiny", "prompt": p, "max_tokens": N, "stream": i % 2 == 1,
                                                    "return_token_ids": True, **GREEDY})
                    for i, p in enumerate(PROMPTS * 2)]
            return await asyncio.gather(*reqs)

    steps = engine.num_steps
    responses = asyncio.run(main())
    for i, r in enumerate(responses):
        assert r.status_code == 200
        if i % 2:
            ids = sum((c["choices"][0]["token_ids"] for c in events(r.text)), [])
        else:
            ids = r.json()["choices"][0]["token_ids"]
        assert ids == reference["ids"][i % len(PROMPTS)]
    assert engine.num_steps - steps < len(responses) * N  # they were batched, not run one by one
    assert wait_idle(engine)["kv_blocks_used"] == 0


def test_batched_prompts(tiny_client: TestClient, reference: dict[str, Any]) -> None:
    out = complete(tiny_client, prompt=PROMPTS[:3], max_tokens=N, return_token_ids=True, **GREEDY)
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["token_ids"] for c in out["choices"]] == reference["ids"][:3]
    assert out["usage"]["prompt_tokens"] == sum(map(len, PROMPTS[:3])) and out["usage"]["completion_tokens"] == 3 * N
    texts = complete(tiny_client, prompt=["Hello there", "Hello there"], max_tokens=N, **GREEDY)["choices"]
    assert [c["text"] for c in texts] == [reference["text"]["text"]] * 2
    r = tiny_client.post("/v1/completions", json={"model": "tiny", "prompt": PROMPTS[:2], "max_tokens": N,
                                                  "stream": True, "return_token_ids": True, **GREEDY})
    by_index: dict[int, list[int]] = {0: [], 1: []}
    for c in events(r.text):
        by_index[c["choices"][0]["index"]] += c["choices"][0]["token_ids"]
    assert [by_index[0], by_index[1]] == reference["ids"][:2]


def test_stop_strings_truncate_and_abort(tiny_server: tuple[Any, AsyncEngine], tiny_client: TestClient,
                                         reference: dict[str, Any]) -> None:
    engine = tiny_server[1]
    full = reference["long"]["text"]  # a random model's text: mostly repeats and broken UTF-8 (U+FFFD)
    stop = next(full[i:i + 2] for i in range(2, len(full)) if full[i:i + 2].strip() and "\ufffd" not in full[i:i + 2])
    want = full[: full.index(stop)]
    assert want
    wait_idle(engine)
    steps = engine.num_steps
    for stream in (False, True):
        body = {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 400, "stop": [stop, "\x00never"],
                "stream": stream, **GREEDY}
        r = tiny_client.post("/v1/completions", json=body)
        if stream:
            chunks = events(r.text)
            text = "".join(c["choices"][0]["text"] for c in chunks)
            reason = chunks[-1]["choices"][0]["finish_reason"]
        else:
            text, reason = r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]
            assert r.json()["usage"]["completion_tokens"] < 60
        assert (text, reason) == (want, "stop")
    stats = wait_idle(engine)
    assert engine.num_steps - steps < 2 * 60  # aborted at the match, not run to 400 tokens
    assert stats["kv_blocks_used"] == 0


def test_stop_token_ids_and_eos(tiny_server: tuple[Any, AsyncEngine], tiny_tok: Tokenizer,
                                reference: dict[str, Any]) -> None:
    ref = reference["ids"][1]
    app, engine = tiny_server
    with TestClient(app) as c:
        out = complete(c, prompt=PROMPTS[1], max_tokens=N, stop_token_ids=[ref[4]], return_token_ids=True,
                       **GREEDY)["choices"][0]
    cut = ref[: ref.index(ref[4]) + 1]
    assert out["finish_reason"] == "stop" and out["token_ids"] == cut
    assert out["text"] == tiny_tok.decode(cut[:-1])  # the stop token counts but is not shown
    # A model whose EOS is that token: generation ends there unless ignore_eos.
    eos_app = build_app(engine, served(engine.executor, (ref[4],)), tiny_tok)  # type: ignore[arg-type]
    with TestClient(eos_app) as c:
        body = {"prompt": PROMPTS[1], "max_tokens": N, "temperature": 0, "return_token_ids": True}
        assert complete(c, **body)["choices"][0]["token_ids"] == cut
        ignored = complete(c, **body, ignore_eos=True)["choices"][0]
    assert ignored["token_ids"] == ref and ignored["finish_reason"] == "length"


@pytest.fixture(scope="module")
def live_url(tiny_server: tuple[Any, AsyncEngine]) -> Iterator[str]:
    """The app on a real uvicorn server (client disconnects are real socket closes)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(tiny_server[0], log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not srv.started and time.monotonic() < end:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_the_request(tiny_server: tuple[Any, AsyncEngine], live_url: str,
                                              stream: bool) -> None:
    engine = tiny_server[1]
    wait_idle(engine)
    steps = engine.num_steps
    body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 480, "stream": stream, **GREEDY}
    if stream:
        with httpx.Client(timeout=10) as c, c.stream("POST", f"{live_url}/v1/completions", json=body) as r:
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: ")
                if got == 3:
                    break  # leaving the block closes the connection mid-stream
            assert got == 3
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live_url}/v1/completions", json=body, timeout=0.3)
    stats = wait_idle(engine)
    assert stats["kv_blocks_used"] == 0 and stats["kv_blocks_free"] == BLOCKS
    assert engine.num_steps - steps < 400  # 480 tokens were asked for; the abort stopped them early
    engine.scheduler.bm.check_invariants()


def test_llama3_tokenizer_through_the_server(tmp_path: Path) -> None:
    """A model with Llama 3's vocabulary (tiny otherwise) served with the real Llama 3 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128_256, tie_word_embeddings=True, max_position_embeddings=128,
                      bos_token_id=128000, eos_token_id=128001)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    r = runner(tmp_path, blocks=32)
    tok = Llama3Tokenizer()
    engine = make_engine(r, blocks=32)
    try:
        with TestClient(build_app(engine, served(r, tok.stop_ids), tok)) as c:
            body = {"model": "tiny", "messages": [{"role": "system", "content": "You are helpful."},
                                                  {"role": "user", "content": "Hi"}],
                    "max_tokens": 4, "return_token_ids": True, **GREEDY}
            out = c.post("/v1/chat/completions", json=body).json()["choices"][0]
            assert out["prompt_token_ids"] == [128000, 128006, 9125, 128007, 271, 2675, 527, 11190, 13, 128009,
                                               128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271]
            assert len(out["token_ids"]) == 4 and out["message"]["content"] == tok.decode(out["token_ids"])
            text = c.post("/v1/completions", json={"model": "tiny", "prompt": "Hello world", "max_tokens": 2,
                                                   "return_token_ids": True, **GREEDY}).json()["choices"][0]
            assert text["prompt_token_ids"] == [128000, 9906, 1917]
    finally:
        engine.shutdown()
