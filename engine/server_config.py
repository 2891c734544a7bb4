"""Configuration of the OpenAI-compatible HTTP server (``servegym serve``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens, the name it serves the model under, and its tokenizer.

    Args:
        host: address to bind.
        port: TCP port (1-65535).
        served_model_name: the ``model`` clients send; None: the ``--model`` path as given.
        tokenizer: "auto" (the model folder's tokenizer files if any, else none: token-id
            prompts only), "llama3" (Meta's Llama 3 tokenizer from ``llama-models``), or a path
            (a folder of tokenizer files or a Llama 3 tiktoken BPE file).
        warmup: run a few warm-up steps before listening (kernel compilation and allocator
            caches are then not paid by the first requests).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    tokenizer: str = "auto"
    warmup: bool = True

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("ServerConfig.host must be non-empty")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"ServerConfig.port must be in 1..65535, got {self.port}")
        name = self.served_model_name
        if name is not None and (not name.strip() or name != name.strip()):
            raise ValueError(f"ServerConfig.served_model_name must be non-empty without surrounding spaces, "
                             f"got {name!r}")
        if not self.tokenizer:
            raise ValueError("ServerConfig.tokenizer must be 'auto', 'llama3' or a path, got ''")
