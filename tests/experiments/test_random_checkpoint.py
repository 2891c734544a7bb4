"""servegym random-checkpoint: a HF-layout folder the engine and transformers both load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments.cli import main
from experiments.random_checkpoint import write_random_checkpoint
from tests.experiments.conftest import TINY_CONFIG


def test_engine_loads_and_generates(tiny_model: Path) -> None:
    from engine import LLM

    llm = LLM(tiny_model, dtype="float32", device="cpu", num_gpu_blocks=64)
    out = llm.generate([[5, 6, 7, 8], [9, 10]], max_tokens=5)
    assert [len(o["token_ids"]) for o in out] == [5, 5]
    assert all(0 <= t < TINY_CONFIG["vocab_size"] for o in out for t in o["token_ids"])


def test_transformers_loads_every_tensor(tiny_model: Path) -> None:
    from transformers import LlamaForCausalLM

    model, info = LlamaForCausalLM.from_pretrained(tiny_model, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_weights_are_scaled_like_an_init_and_seeded(tmp_path: Path) -> None:
    a = write_random_checkpoint(TINY_CONFIG, tmp_path / "a", dtype="fp32", device="cpu", seed=3)
    b = write_random_checkpoint(TINY_CONFIG, tmp_path / "b", dtype="fp32", device="cpu", seed=3)
    c = write_random_checkpoint(TINY_CONFIG, tmp_path / "c", dtype="bf16", device="cpu", seed=4)
    digest = [hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest() for p in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]
    tensors = load_file(str(a / "model.safetensors"))
    assert "lm_head.weight" not in tensors  # tied embeddings
    q = tensors["model.layers.1.self_attn.q_proj.weight"]
    assert q.shape == (64, 64) and abs(q.std().item() - TINY_CONFIG["initializer_range"]) < 0.01
    assert torch.equal(tensors["model.norm.weight"], torch.ones(64))
    assert load_file(str(c / "model.safetensors"))["model.embed_tokens.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize(("args", "message"), [
    (["--config", "/nonexistent/config.json"], "config file /nonexistent/config.json does not exist"),
    (["--dtype", "int3"], "dtype must be one of"),
])
def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"hidden_size": 8}')
    base = {"--config": str(cfg), "--out": str(tmp_path / "out"), "--device": "cpu"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert main(["random-checkpoint", *[x for kv in base.items() for x in kv]]) == 2
    assert message in capsys.readouterr().err


def test_config_without_shapes_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"hidden_size": 8}')
    assert main(["random-checkpoint", "--config", str(cfg), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "missing key 'intermediate_size'" in capsys.readouterr().err
