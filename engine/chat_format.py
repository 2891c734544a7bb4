"""The Llama 3 chat format, as token ids.

A conversation is ``<|begin_of_text|>``, then for each message
``<|start_header_id|>ROLE<|end_header_id|>`` + ``"\\n\\n"`` + CONTENT + ``<|eot_id|>``, and finally
the assistant's header (``<|start_header_id|>assistant<|end_header_id|>\\n\\n``), after which the
model writes its reply and ends it with ``<|eot_id|>``.

Special tokens are added by id only; roles and contents are encoded as plain text, so a
message containing the text "<|eot_id|>" cannot end its turn early.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.tokenizer import Tokenizer

# Accepted roles -> the role written in the header. Llama 3.1 calls tool results "ipython";
# OpenAI clients send them as "tool".
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "ipython": "ipython", "tool": "ipython"}
SPECIAL_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


class ChatFormatError(ValueError):
    """A conversation that cannot be formatted.

    Attributes:
        param: the offending field, e.g. ``messages[1].role``.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def message_text(content: Any, where: str) -> str:
    """The text of a message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts.

    Raises:
        ChatFormatError: anything else (named by ``where``).
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ChatFormatError(f"{where}[{i}]", "only text parts ({'type': 'text', 'text': '...'}) "
                                                       "are supported")
            if set(part) - {"type", "text"}:
                raise ChatFormatError(f"{where}[{i}]", f"unknown keys {sorted(set(part) - {'type', 'text'})}")
            texts.append(part["text"])
        return "".join(texts)
    raise ChatFormatError(where, f"must be a string or a list of text parts, got {type(content).__name__}")


class ChatFormat:
    """Llama 3 conversations to prompt token ids.

    Args:
        tokenizer: a tokenizer with the Llama 3 special tokens (``SPECIAL_TOKENS``).

    Raises:
        ValueError: the tokenizer lacks one of them.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos, self.start_header, self.end_header, self.eot = (tokenizer.special_id(t) for t in SPECIAL_TOKENS)
        self._newlines = tokenizer.encode("\n\n")
        self._roles = {role: tokenizer.encode(header) for role, header in ROLES.items()}

    def header(self, role: str) -> list[int]:
        """``<|start_header_id|>role<|end_header_id|>`` followed by the two newlines."""
        return [self.start_header, *self._roles[role], self.end_header, *self._newlines]

    def encode(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The prompt of a conversation, ready for the assistant's reply.

        Args:
            messages: ``{"role": ..., "content": ...}`` mappings, oldest first; roles are the
                keys of ``ROLES``; contents are strings or lists of text parts.

        Returns:
            Token ids: begin-of-text, every message, the assistant header.

        Raises:
            ChatFormatError: no messages, a message that is not a mapping, an unknown role or
                key, or a content that is not text.
        """
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ChatFormatError("messages", f"must be a list of messages, got {type(messages).__name__}")
        if not messages:
            raise ChatFormatError("messages", "must hold at least one message")
        ids = [self.bos]
        for i, msg in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(msg, Mapping):
                raise ChatFormatError(where, f"must be an object with 'role' and 'content', got {type(msg).__name__}")
            extra = set(msg) - {"role", "content"}
            if extra:
                raise ChatFormatError(f"{where}.{sorted(extra)[0]}", "is not supported (only 'role' and 'content')")
            role = msg.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise ChatFormatError(f"{where}.role", f"unknown role {role!r}; expected one of {sorted(ROLES)}")
            if "content" not in msg:
                raise ChatFormatError(f"{where}.content", "is required")
            text = message_text(msg["content"], f"{where}.content")
            ids += self.header(role)
            ids += self.tokenizer.encode(text)
            ids.append(self.eot)
        ids += self.header("assistant")
        return ids
