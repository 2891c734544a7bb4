"""Tokenizers behind one small interface: the model folder's own files, or Meta's Llama 3 BPE.

``load_tokenizer(spec, model_folder)`` picks one: ``"auto"`` (the folder's tokenizer files
through ``transformers.AutoTokenizer`` when present, else none), ``"llama3"`` (the tiktoken
BPE file shipped in Meta's ``llama-models`` package, read from the installed package), or a
path (a folder of tokenizer files, or a Llama 3 tiktoken ``tokenizer.model`` file).

Every implementation encodes text as plain text: a special token's spelling inside the text
("<|eot_id|>") gives ordinary tokens, never the special id, so user content cannot inject
control tokens; special tokens are only ever added by id (``special_id``).
"""

from __future__ import annotations

import abc
import base64
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
TOKENIZER_CHOICES = ("auto", "llama3")

# Llama 3 pre-tokenizer: the text is split into pieces by these alternatives, tried in order,
# before byte-pair merging. Written out one alternative per line.
_LLAMA3_SPLIT = "|".join((
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",   # English contractions, any case
    r"[^\r\n\p{L}\p{N}]?\p{L}+",       # a word, with at most one leading non-letter/digit (often a space)
    r"\p{N}{1,3}",                     # numbers, in groups of up to three digits
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",      # punctuation runs, optional leading space, trailing newlines
    r"\s*[\r\n]+",                     # newlines with the whitespace before them
    r"\s+(?!\S)",                      # whitespace not followed by a non-space (keeps one for the next word)
    r"\s+",                            # any other whitespace
))
LLAMA3_NUM_BASE = 128_000
LLAMA3_NUM_SPECIAL = 256
# Named special tokens of Llama 3.1 / 3.2 at their offsets from LLAMA3_NUM_BASE; the other
# offsets are "<|reserved_special_token_K|>", K counting up from 0 over the unnamed offsets.
_LLAMA3_NAMED = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 4: "<|finetune_right_pad_id|>",
                 6: "<|start_header_id|>", 7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                 10: "<|python_tag|>"}
_STOP_NAMES = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")  # end of text, of a tool message, of a turn
# tiktoken's regex engine overflows its stack on whitespace runs of about a million characters;
# such runs are cut into pieces of this many characters, each encoded on its own.
_MAX_WHITESPACE_RUN = 100_000
_LONG_WHITESPACE = re.compile(rf"\s{{{_MAX_WHITESPACE_RUN + 1},}}")


class Tokenizer(abc.ABC):
    """Text <-> token ids, with the ids of the special tokens the engine needs.

    Attributes:
        name: where it came from (for messages).
        vocab_size: number of token ids (largest id + 1), special tokens included.
        bos_id: beginning-of-text id, or None.
        eos_id: end-of-text id, or None.
        stop_ids: ids that end a generation (end of text, end of turn, end of message).
        special_ids: spelling -> id of every special token.
    """

    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    stop_ids: tuple[int, ...]
    special_ids: Mapping[str, int]

    @abc.abstractmethod
    def _encode_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain text (special-token spellings included)."""

    @abc.abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Text of ``ids``, all of which are known, non-special ids."""

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        """Token ids of ``text``, special-token spellings encoded as ordinary text.

        Args:
            text: the text.
            bos: prepend the beginning-of-text id (if this tokenizer has one).

        Returns:
            The ids.

        Raises:
            TypeError: ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"can only encode a str, got {type(text).__name__}")
        ids = self._encode_plain(text) if text else []
        return [self.bos_id, *ids] if bos and self.bos_id is not None else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens, and ids this tokenizer does not know, give no text."""
        special = self._special_set
        return self._decode([i for i in ids if 0 <= i < self.vocab_size and i not in special])

    def special_id(self, token: str) -> int:
        """The id of special token ``token`` (e.g. ``"<|eot_id|>"``).

        Raises:
            ValueError: this tokenizer has no such special token.
        """
        try:
            return self.special_ids[token]
        except KeyError:
            raise ValueError(f"tokenizer {self.name} has no special token {token!r}") from None

    def _finish_init(self) -> None:
        self._special_set = frozenset(self.special_ids.values())
        self.stop_ids = tuple(dict.fromkeys(
            [*([] if self.eos_id is None else [self.eos_id]),
             *(self.special_ids[n] for n in _STOP_NAMES if n in self.special_ids)]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, vocab_size={self.vocab_size})"


class HFTokenizer(Tokenizer):
    """A model folder's tokenizer files, through ``transformers.AutoTokenizer``.

    Args:
        folder: a folder with ``tokenizer.json`` / ``tokenizer_config.json`` / ``tokenizer.model``.

    Raises:
        FileNotFoundError: the folder has none of those files.
        ValueError: transformers cannot load them.
    """

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
        from transformers import AutoTokenizer

        try:
            self._tok: Any = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:  # transformers raises many kinds; the message names the file
            raise ValueError(f"cannot load the tokenizer in {folder}: {exc}") from exc
        self.name = str(folder)
        self.vocab_size = len(self._tok)
        self.bos_id = self._tok.bos_token_id
        self.eos_id = self._tok.eos_token_id
        self.special_ids = {t.content: i for i, t in self._tok.added_tokens_decoder.items() if t.special}
        for attr in ("bos", "eos", "pad", "unk"):  # named special tokens outside the added ones
            token, tid = getattr(self._tok, f"{attr}_token"), getattr(self._tok, f"{attr}_token_id")
            if token is not None and tid is not None:
                self.special_ids.setdefault(str(token), int(tid))
        self._finish_init()

    def _encode_plain(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False, split_special_tokens=True))

    def _decode(self, ids: list[int]) -> str:
        # No space clean-up: byte-level BPE text is exact, and the clean-up would make the
        # text of a sequence differ from the concatenated text of its pieces.
        return self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class Llama3Tokenizer(Tokenizer):
    """The Llama 3 tokenizer: a tiktoken BPE file of 128,000 ranks plus 256 special tokens.

    Args:
        path: the BPE file (lines ``base64-token rank``); None: the one in the installed
            ``llama-models`` package (``llama_models/llama3/tokenizer.model``).

    Raises:
        FileNotFoundError: no such file, or ``llama-models`` is not installed.
        ValueError: a malformed file.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        import tiktoken

        text, self.name = _read_bpe_text(path)
        ranks = _parse_ranks(text, self.name)
        base = len(ranks)
        specials = {}
        reserved = 0
        for offset in range(LLAMA3_NUM_SPECIAL):
            name = _LLAMA3_NAMED.get(offset)
            if name is None:
                name = f"<|reserved_special_token_{reserved}|>"
                reserved += 1
            specials[name] = base + offset
        self._enc = tiktoken.Encoding(name="llama3", pat_str=_LLAMA3_SPLIT, mergeable_ranks=ranks,
                                      special_tokens=specials)
        self.vocab_size = base + LLAMA3_NUM_SPECIAL
        self.special_ids = specials
        self.bos_id = specials["<|begin_of_text|>"]
        self.eos_id = specials["<|end_of_text|>"]
        self._finish_init()

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        for run in _LONG_WHITESPACE.finditer(text):
            ids += self._enc.encode_ordinary(text[pos:run.start()])
            for cut in range(run.start(), run.end(), _MAX_WHITESPACE_RUN):
                ids += self._enc.encode_ordinary(text[cut:min(cut + _MAX_WHITESPACE_RUN, run.end())])
            pos = run.end()
        return ids + self._enc.encode_ordinary(text[pos:])

    def _decode(self, ids: list[int]) -> str:
        return self._enc.decode_bytes(ids).decode("utf-8", errors="replace")


def _read_bpe_text(path: str | Path | None) -> tuple[str, str]:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file {p} does not exist")
        return p.read_text(encoding="utf-8"), str(p)
    from importlib.resources import files

    try:
        resource = files("llama_models") / "llama3" / "tokenizer.model"
    except ModuleNotFoundError:
        raise FileNotFoundError("the llama3 tokenizer needs Meta's llama-models package "
                                "(pip install 'llama-models>=0.3')") from None
    if not resource.is_file():
        raise FileNotFoundError(f"the installed llama-models package has no {resource}")
    return resource.read_text(encoding="utf-8"), "llama3 (llama-models)"


def _parse_ranks(text: str, where: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{where}: line {n} is not 'base64-token rank': {line[:80]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{where}: the ranks are not 0..{len(ranks) - 1}, each once")
    return ranks


def load_tokenizer(spec: str, model_folder: str | Path | None = None) -> Tokenizer | None:
    """The tokenizer named by ``spec``.

    Args:
        spec: "auto" (the model folder's tokenizer files if it has any, else None), "llama3"
            (Meta's Llama 3 BPE from the ``llama-models`` package), or a path: a folder of
            tokenizer files or a Llama 3 tiktoken BPE file.
        model_folder: the model folder ("auto" looks there).

    Returns:
        The tokenizer, or None ("auto" without tokenizer files).

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without tokenizer files.
        ValueError: files that cannot be loaded.
    """
    if spec == "auto":
        folder = None if model_folder is None else Path(model_folder)
        if folder is None or not any((folder / f).is_file() for f in TOKENIZER_FILES):
            return None
        return HFTokenizer(folder)
    if spec == "llama3":
        return Llama3Tokenizer()
    path = Path(spec)
    if path.is_dir():
        return HFTokenizer(path)
    if path.is_file():
        return Llama3Tokenizer(path)
    raise FileNotFoundError(f"tokenizer {spec!r} is neither {' nor '.join(map(repr, TOKENIZER_CHOICES))} "
                            "nor an existing folder or file")


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Reject a tokenizer whose ids do not all fit the model's embedding table.

    Raises:
        ValueError: ``tokenizer.vocab_size > model_vocab_size``.
    """
    if tokenizer.vocab_size > model_vocab_size:
        raise ValueError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} token ids but the model's "
                         f"vocab_size is {model_vocab_size}: its ids would fall outside the embedding table "
                         "(choose the tokenizer the model was trained with)")
