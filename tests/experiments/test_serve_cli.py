"""servegym serve: flag checking (exit 2 before any weight loads) and the server it builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from experiments.cli import build_parser, main

ENGINE = ["--dtype", "float32", "--device", "cpu", "--num-gpu-blocks", "64", "--block-size", "4"]


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "/no/such/model"], "model folder /no/such/model does not exist"),
    (["--policy", "fastest"], "unknown policy 'fastest'"),
    (["--policy", "continuous:budget=3"], "policy 'continuous' has no parameter 'budget'"),
    (["--tokenizer", "llama3"], "has 128256 token ids but the model's vocab_size is 300"),
    (["--tokenizer", "/no/tok"], "tokenizer '/no/tok' is neither 'auto' nor 'llama3'"),
    (["--port", "70000"], "ServerConfig.port must be in 1..65535, got 70000"),
    (["--port", "http"], "--port: 'http' is not a valid int"),
    (["--served-model-name", " x "], "served_model_name must be non-empty without surrounding spaces"),
    (["--victim", "nobody"], "unknown victim policy 'nobody'"),
    (["--dtype", "int3"], "EngineConfig.dtype: must be one of"),
    (["--max-model-len", "1"], "EngineConfig.max_model_len: must be >= 2"),
    (["--warmup", "maybe"], "--warmup: 'maybe' is not a valid bool"),
    (["--speculation", "fixed"], "--speculation needs --speculative-method ngram or draft"),
    (["--speculation", "never"], "unknown speculation policy 'never'"),
])
def test_bad_flags_exit_2(tiny_model: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                          message: str) -> None:
    flags = {"--model": str(tiny_model), "--warmup": "false"} | dict(zip(args[::2], args[1::2], strict=True))
    assert main(["serve", *ENGINE, *[x for kv in flags.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("servegym serve: error: ") and message in err, err


def test_serve_builds_and_runs_the_app(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from experiments.serve import build_server, cmd_serve

    argv = ["serve", "--model", str(tiny_model), *ENGINE, "--policy", "continuous:max_num_seqs=4",
            "--served-model-name", "tiny-test", "--port", "8123", "--host", "0.0.0.0"]
    app, engine, server = build_server(build_parser().parse_args(argv))
    try:
        assert (server.host, server.port, server.served_model_name) == ("0.0.0.0", 8123, "tiny-test")
        assert engine.scheduler.policy.max_num_seqs == 4 and engine.executor.config.max_num_seqs == 4
        assert engine.scheduler.bm.num_blocks == 64 and engine.scheduler.block_size == 4
        with TestClient(app) as c:
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tiny-test"]
            out = c.post("/v1/completions", json={"model": "tiny-test", "prompt": [1, 2, 3], "max_tokens": 3,
                                                  "ignore_eos": True}).json()
            assert len(out["choices"][0]["token_ids"]) == 3  # no tokenizer: ids come back
    finally:
        engine.shutdown()

    import uvicorn

    import experiments.serve

    built: list[Any] = []
    ran: dict[str, Any] = {}

    def spy_build(ns: Any) -> Any:
        built.append(build_server(ns))
        return built[-1]

    def fake_run(app: Any, host: str, port: int, log_level: str) -> None:
        ran.update(app=app, host=host, port=port, running=built[-1][1].is_running)

    monkeypatch.setattr(experiments.serve, "build_server", spy_build)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    ns = build_parser().parse_args(["serve", "--model", str(tiny_model), *ENGINE, "--warmup", "false", "--port",
                                    "9001"])
    assert cmd_serve(ns) == 0
    app, engine, _ = built[0]
    assert ran == {"app": app, "host": "127.0.0.1", "port": 9001, "running": True}
    assert not engine.is_running  # shut down once the server returned


def test_serve_with_speculation_gives_the_plain_greedy_output(tiny_model: Path) -> None:
    from fastapi.testclient import TestClient

    from experiments.serve import build_server
    from policies.scheduler import STEP_LOG_COLUMNS

    body = {"model": "tiny", "prompt": [5, 6, 7, 8, 5, 6, 7, 8, 5, 6], "max_tokens": 12, "ignore_eos": True,
            "temperature": 0}
    outs, drafts = [], []
    for extra in ([], ["--speculation", "fixed:num_draft_tokens=3", "--speculative-method", "ngram"]):
        argv = ["serve", "--model", str(tiny_model), *ENGINE, "--served-model-name", "tiny", "--warmup", "false",
                *extra]
        app, engine, _ = build_server(build_parser().parse_args(argv))
        try:
            with TestClient(app) as c:
                outs.append(c.post("/v1/completions", json=body).json()["choices"][0]["token_ids"])
            log, width = engine.scheduler.step_log, len(STEP_LOG_COLUMNS)
            col = STEP_LOG_COLUMNS.index("draft_tokens")
            drafts.append(sum(log[i + col] for i in range(0, len(log), width)))
        finally:
            engine.shutdown()
    assert len(outs[0]) == 12 and outs[1] == outs[0]
    assert drafts[0] == 0 and drafts[1] > 0
