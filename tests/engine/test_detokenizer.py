"""Incremental detokenization (no broken UTF-8 halves) and stop strings over streamed text."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.detokenizer import IncrementalDetokenizer, StopStrings, TextStream
from engine.tokenizer import Llama3Tokenizer, Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def byte_tok(tiny_llama_tok: Path) -> Tokenizer:
    """Byte-level tokenizer: token b is byte b, so multi-byte characters span several tokens."""
    tok = load_tokenizer("auto", tiny_llama_tok)
    assert tok is not None
    return tok


def pieces(tok: Tokenizer, ids: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tok)
    return [detok.push([i]) for i in ids] + [detok.flush()]


def test_multibyte_characters_wait_for_their_last_byte(byte_tok: Tokenizer) -> None:
    text = "aé🙂b"
    ids = byte_tok.encode(text)
    assert len(ids) == 1 + 2 + 4 + 1
    out = pieces(byte_tok, ids)
    assert out == ["a", "", "é", "", "", "", "🙂", "b", ""]
    assert all("\ufffd" not in p for p in out)


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, 299), max_size=40), data=st.data())
def test_pieces_concatenate_to_the_full_decode(byte_tok: Tokenizer, ids: list[int], data: st.DataObject) -> None:
    """Any id stream, valid UTF-8 or not, pushed in any grouping, gives exactly the full decode."""
    detok = IncrementalDetokenizer(byte_tok)
    out, i = "", 0
    while i < len(ids):
        n = data.draw(st.integers(1, 4))
        out += detok.push(ids[i:i + n])
        i += n
    assert out + detok.flush() == byte_tok.decode(ids)


def test_llama3_pieces(tmp_path: Path) -> None:
    tok = Llama3Tokenizer()
    text = "Grüße, 世界! 🙂🙃 done"
    ids = tok.encode(text)
    out = pieces(tok, ids)
    assert "".join(out) == text and all("\ufffd" not in p for p in out)


def test_stop_strings_across_pieces() -> None:
    s = StopStrings(["STOP", "\n\n"])
    assert s.push("hello S") == "hello "  # "S" might begin "STOP"
    assert s.push("T") == ""
    assert s.push("OP and more") == "" and s.matched == "STOP"
    assert s.push("later") == "" and s.flush() == ""


def test_stop_strings_earliest_match_and_release() -> None:
    s = StopStrings(["bc", "abcd"])
    assert s.push("xab") == "x"  # "ab" could still become "abcd", and "b" "bc"
    assert s.push("c") == "xa"[1:] and s.matched == "bc"  # "bc" starts before "abcd" would end
    t = StopStrings(["aab"])
    assert t.push("aa") == "" and t.push("ab") == "a" and t.matched == "aab"
    u = StopStrings(["end"])
    assert u.push("the en") == "the " and u.push("try") == "entry" and u.matched is None
    assert u.push("e") == "" and u.flush() == "e"
    with pytest.raises(ValueError, match="non-empty"):
        StopStrings(["ok", ""])


def test_text_stream_stops_on_detokenized_text(byte_tok: Tokenizer) -> None:
    ids = byte_tok.encode("one é two")
    stream = TextStream(byte_tok, ["é t"])
    out = "".join(stream.push([i]) for i in ids)
    assert out == "one " and stream.stopped
    plain = TextStream(byte_tok, ["zzz"])
    out = "".join(plain.push([i]) for i in ids[:-1]) + plain.push(ids[-1:]) + plain.finish()
    assert out == "one é two" and not plain.stopped
    tail = TextStream(byte_tok, ["two!"])
    assert "".join(tail.push([i]) for i in ids) == "one é "  # "two" might still become "two!"
    assert tail.finish() == "two" and not tail.stopped
