"""Tiny random Llama 3 checkpoints for the engine tests (built once per session)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from engine.async_engine import AsyncEngine
    from engine.tokenizer import Tokenizer

# The triton backend's kernels run on the CPU interpreter when there is no GPU; the
# variable must be set before any kernel module is imported (at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

VOCAB = 300
ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 500000.0}


def build_tiny_llama(folder: Path, seed: int = 0, hidden: int = 64, vocab: int = VOCAB) -> Path:
    """Save a random 2-layer Llama-3-style model (GQA 8/2 heads, llama3 rope, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=True,
                      max_position_embeddings=512, rope_parameters=dict(ROPE), initializer_range=0.1,
                      bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


CHAT_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def build_tiny_tokenizer(folder: Path, specials: tuple[str, ...] = CHAT_SPECIALS, vocab: int = VOCAB) -> Path:
    """Write a byte-level tokenizer.json whose ids fit the tiny models: id b is byte b (no merges),
    then ``specials`` from id 256, then reserved special tokens up to ``vocab`` ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = bytes_to_unicode()  # byte -> the printable character byte-level BPE writes it as
    tok = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    names = [*specials, *(f"<|reserved_special_token_{i}|>" for i in range(vocab - 256 - len(specials)))]
    tok.add_special_tokens([AddedToken(n, special=True) for n in names])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0] if specials else None,
              "eos_token": specials[1] if len(specials) > 1 else None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_llama_tok(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's weights with a byte-level tokenizer of its 300 ids (bos 256, eos 257, Llama 3
    chat tokens 258-260)."""
    folder = tmp_path_factory.mktemp("tiny_llama_tok")
    for path in tiny_llama.iterdir():
        (folder / path.name).symlink_to(path)
    return build_tiny_tokenizer(folder)


@pytest.fixture(scope="session")
def tiny_llama_wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden size 128: wide enough for int4 groups of 128 input channels."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama_wide"), hidden=128)


@pytest.fixture(scope="session")
def tiny_llama_old_keys(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights with a config.json in the pre-5.x style (rope_theta + rope_scaling)."""
    folder = tmp_path_factory.mktemp("tiny_llama_old")
    cfg = json.loads((tiny_llama / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").symlink_to(tiny_llama / "model.safetensors")
    return folder


@pytest.fixture(scope="session")
def hf_model(tiny_llama: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_tok(tiny_llama_tok: Path) -> Tokenizer:
    from engine.tokenizer import load_tokenizer

    tok = load_tokenizer("auto", tiny_llama_tok)
    assert tok is not None
    return tok


@pytest.fixture(scope="session")
def tiny_server(tiny_llama_tok: Path, tiny_tok: Tokenizer) -> Iterator[tuple[FastAPI, AsyncEngine]]:
    """``(app, engine)``: the tiny model with its byte-level tokenizer behind the HTTP API (EOS id 2)."""
    from engine.api_server import build_app
    from tests.engine.serving_helpers import make_engine, runner, served

    r = runner(tiny_llama_tok)
    engine = make_engine(r)
    yield build_app(engine, served(r, (2, *tiny_tok.stop_ids)), tiny_tok), engine
    engine.shutdown()


@pytest.fixture(scope="session")
def tiny_client(tiny_server: tuple[FastAPI, AsyncEngine]) -> Iterator[TestClient]:
    from fastapi.testclient import TestClient

    with TestClient(tiny_server[0]) as client:
        yield client
