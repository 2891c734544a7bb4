"""Streaming text from streaming token ids: incremental detokenization and stop strings.

``IncrementalDetokenizer`` turns token ids into text pieces as they arrive without ever
emitting half of a UTF-8 character (a byte-level BPE token may end in the middle of one):
it decodes a short window of recent ids and holds back a trailing run of U+FFFD.
``StopStrings`` finds stop strings in the text stream, holding back any tail that might
still grow into one, and cuts the text before the first match.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Text pieces of a growing sequence of ids, each decoded over a short window.

    The window is ``ids[prefix:]``; its first ``read - prefix`` ids were emitted in full
    (their text, ``done`` characters long, ends on a complete character), and ``emitted``
    characters of the window's text are out. A trailing run of U+FFFD may be a character
    whose last bytes have not come yet, so it is held back; everything before it is final
    (bytes already decoded never change meaning). The window slides once its text ends
    on a complete character, so each push decodes only a few ids.

    Args:
        tokenizer: the tokenizer.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._done = 0
        self._emitted = 0

    def push(self, ids: Sequence[int]) -> str:
        """Add new ids.

        Returns:
            The new text they complete ("" while only an incomplete character is new).
        """
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids[self._prefix:])
        end = len(text.rstrip(REPLACEMENT))
        piece = text[self._emitted:end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        if end == len(text) and len(self.ids) > self._read:  # ends on a complete character: slide
            self._prefix, self._read = self._read, len(self.ids)
            self._done = self._emitted = len(text) - self._done
        return piece

    def flush(self) -> str:
        """The text not emitted yet, incomplete characters as U+FFFD (the sequence ended)."""
        text = self.tokenizer.decode(self.ids[self._prefix:])
        piece = text[self._emitted:]
        self._prefix = self._read = len(self.ids)
        self._done = self._emitted = 0
        return piece


class StopStrings:
    """Stop-string matching over a stream of text pieces.

    Args:
        stops: the stop strings (non-empty).

    Raises:
        ValueError: an empty stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.stops = tuple(dict.fromkeys(stops))
        self.matched: str | None = None
        self._pending = ""  # received text that could still be the start of a stop string

    def push(self, text: str) -> str:
        """Add text.

        Returns:
            The text safe to emit: everything before a match (then ``matched`` is set and
            later text is dropped), or everything that cannot begin a stop string.
        """
        if self.matched is not None:
            return ""
        buf = self._pending + text
        # Text before _pending was emitted because no stop string can start in it, so every
        # match lies in buf: take the one that starts first.
        first: tuple[int, str] | None = None
        for s in self.stops:
            at = buf.find(s)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, s)
        if first is not None:
            self.matched = first[1]
            self._pending = ""
            return buf[:first[0]]
        hold = self._held_tail(buf)
        self._pending = buf[len(buf) - hold:]
        return buf[:len(buf) - hold]

    def _held_tail(self, buf: str) -> int:
        """Length of the longest tail of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        """The held-back text (the stream ended without a match)."""
        out, self._pending = self._pending, ""
        return out if self.matched is None else ""


class TextStream:
    """Token ids in, text out: detokenization, then stop strings.

    Args:
        tokenizer: the tokenizer.
        stops: stop strings (may be empty).
    """

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()) -> None:
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = StopStrings(stops) if stops else None

    @property
    def stopped(self) -> bool:
        """Whether a stop string matched (the text ended before it)."""
        return self.stops is not None and self.stops.matched is not None

    def push(self, ids: Sequence[int]) -> str:
        """Text to emit for new ids."""
        text = self.detok.push(ids)
        return text if self.stops is None else self.stops.push(text)

    def finish(self) -> str:
        """The remaining text at the end of the sequence."""
        text = self.detok.flush()
        if self.stops is None:
            return text
        return self.stops.push(text) + self.stops.flush()
