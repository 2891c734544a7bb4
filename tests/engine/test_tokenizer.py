"""Tokenizers: Meta's Llama 3 BPE through tiktoken, a model folder's files, selection and vocab checks."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from engine import LLM
from engine.tokenizer import HFTokenizer, Llama3Tokenizer, check_vocab, load_tokenizer
from tests.engine.conftest import build_tiny_tokenizer

TEXTS = ["Hello world", "I'm here, isn't it?  12345 ...\n\n\tTabs", "héllo wörld 你好 🙂 \r\n x",
         "  leading and trailing   ", "DON'T STOP", "a\n\n\nb", ""]


@pytest.fixture(scope="module")
def llama3() -> Llama3Tokenizer:
    return Llama3Tokenizer()


def test_llama3_documented_ids(llama3: Llama3Tokenizer) -> None:
    assert llama3.encode("Hello world", bos=True) == [128000, 9906, 1917]
    assert llama3.encode("Hello world") == [9906, 1917]
    assert llama3.vocab_size == 128_256
    assert (llama3.bos_id, llama3.eos_id, llama3.special_id("<|eot_id|>")) == (128000, 128001, 128009)
    assert llama3.special_id("<|start_header_id|>") == 128006 and llama3.special_id("<|end_header_id|>") == 128007
    assert llama3.special_id("<|python_tag|>") == 128010
    assert llama3.special_id("<|reserved_special_token_0|>") == 128002
    assert llama3.special_id("<|reserved_special_token_247|>") == 128255
    assert len(llama3.special_ids) == 256
    assert set(llama3.stop_ids) == {128001, 128008, 128009}
    with pytest.raises(ValueError, match="has no special token '<|image|>'"):
        llama3.special_id("<|image|>")


@pytest.mark.parametrize("text", TEXTS)
def test_llama3_round_trips(llama3: Llama3Tokenizer, text: str) -> None:
    ids = llama3.encode(text)
    assert all(0 <= i < 128_000 for i in ids)
    assert llama3.decode(ids) == text


def test_llama3_special_spellings_are_plain_text(llama3: Llama3Tokenizer) -> None:
    ids = llama3.encode("say <|eot_id|> then <|begin_of_text|>")
    assert not set(ids) & set(llama3.special_ids.values())
    assert llama3.decode(ids) == "say <|eot_id|> then <|begin_of_text|>"
    # special ids, and ids past the vocabulary, give no text
    assert llama3.decode([128000, 9906, 128009, 1917, 999_999]) == "Hello world"


def test_llama3_long_whitespace_runs(llama3: Llama3Tokenizer) -> None:
    text = "x" + " " * 250_001 + "y\n"  # tiktoken's regex alone overflows its stack near 10**6
    assert llama3.decode(llama3.encode(text)) == text


def test_llama3_tokenizer_from_a_bpe_file(tmp_path: Path) -> None:
    path = tmp_path / "bytes.model"
    path.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    tok = load_tokenizer(str(path))
    assert isinstance(tok, Llama3Tokenizer) and tok.vocab_size == 512
    assert tok.encode("Hi", bos=True) == [256, 72, 105] and tok.special_id("<|eot_id|>") == 265
    assert tok.decode([72, 256, 105]) == "Hi"
    bad = tmp_path / "bad.model"
    bad.write_text("IQ== 0\nnot-a-line\n")
    with pytest.raises(ValueError, match=r"line 2 is not 'base64-token rank'"):
        Llama3Tokenizer(bad)
    gap = tmp_path / "gap.model"
    gap.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(ValueError, match=r"ranks are not 0..1"):
        Llama3Tokenizer(gap)


def test_folder_tokenizer(tiny_llama_tok: Path) -> None:
    tok = load_tokenizer("auto", tiny_llama_tok)
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 300
    assert (tok.bos_id, tok.eos_id, tok.special_id("<|eot_id|>")) == (256, 257, 260)
    assert set(tok.stop_ids) == {257, 260}
    assert tok.encode("Hé", bos=True) == [256, 72, 195, 169]
    assert tok.encode("<|eot_id|>") == list(b"<|eot_id|>")  # plain text, not id 260
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([72, 258, 299, 105, 5000]) == "Hi"  # special and unknown ids give no text


def test_selection_and_errors(tiny_llama: Path, tiny_llama_tok: Path, tmp_path: Path) -> None:
    assert load_tokenizer("auto", tiny_llama) is None  # no tokenizer files: none
    assert isinstance(load_tokenizer("llama3", tiny_llama), Llama3Tokenizer)
    assert isinstance(load_tokenizer(str(tiny_llama_tok)), HFTokenizer)
    with pytest.raises(FileNotFoundError, match="tokenizer '/no/such' is neither 'auto' nor 'llama3' nor"):
        load_tokenizer("/no/such")
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        HFTokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="cannot load the tokenizer in"):
        HFTokenizer(tmp_path)


def test_vocab_check(llama3: Llama3Tokenizer) -> None:
    check_vocab(llama3, 128_256)
    with pytest.raises(ValueError, match=r"has 128256 token ids but the model's vocab_size is 300"):
        check_vocab(llama3, 300)


def test_llm_uses_the_tokenizer(tiny_llama: Path, tiny_llama_tok: Path, tmp_path: Path) -> None:
    engine = LLM(str(tiny_llama_tok), dtype="float32", device="cpu", block_size=4, num_gpu_blocks=64)
    tok = engine.tokenizer
    assert tok is not None
    by_text = engine.generate(["Hello"], max_tokens=6)[0]
    by_ids = engine.generate([tok.encode("Hello", bos=True)], max_tokens=6)[0]
    assert by_text["token_ids"] == by_ids["token_ids"] and len(by_text["token_ids"]) == 6
    assert by_text["text"] == tok.decode(by_text["token_ids"])
    with pytest.raises(ValueError, match="has 128256 token ids but the model's vocab_size is 300"):
        LLM(str(tiny_llama), tokenizer="llama3", dtype="float32", device="cpu", num_gpu_blocks=8)
    small = build_tiny_tokenizer(tmp_path / "tok", vocab=280)  # fewer ids than the model: fine
    assert LLM(str(tiny_llama), tokenizer=str(small), dtype="float32", device="cpu",
               num_gpu_blocks=8).tokenizer.vocab_size == 280
