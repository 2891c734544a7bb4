"""Deterministic token ids for requests that carry only a prompt length (and maybe block hashes).

The engine needs real token ids; traces give lengths and, at best, content hashes. Materialising
keeps the trace's sharing structure:

- a hashed prompt's token at position ``p`` is a pure function of
  ``(block_hashes[p // hash_block_size], p % hash_block_size, seed)``, so equal hashes at equal
  offsets give equal tokens (shared prefixes stay shared, for any KV block size) and different
  hashes give different blocks (with overwhelming probability);
- a length-only prompt gets pseudo-random ids from a generator seeded with
  ``(zlib.crc32(request.id), seed)``: deterministic across processes (Python's ``hash(str)`` is
  randomised per process and is not used).

Ids lie in ``[0, min(vocab_size, 128000))``, below the Llama 3 special tokens (128000 and up).
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

from policies.types import Request

MAX_TOKEN_ID = 128000  # Llama 3: ids >= 128000 are special tokens (bos, eos, headers...)
_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective scrambling of uint64 values (wraps modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MUL1
    x = x ^ (x >> np.uint64(27))
    x = x * _MUL2
    return x ^ (x >> np.uint64(31))


def materialize_token_ids(request: Request, vocab_size: int, seed: int = 0) -> Request:
    """Give a request deterministic prompt token ids (a request that has them is returned as is).

    Args:
        request: the request.
        vocab_size: the model's vocabulary size; ids are drawn below ``min(vocab_size, 128000)``.
        seed: changes every materialised id (the same seed gives the same ids).

    Returns:
        A copy of ``request`` with ``prompt_token_ids`` set (block hashes kept).
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if request.prompt_token_ids is not None:
        return request
    high = np.uint64(min(vocab_size, MAX_TOKEN_ID))
    length = request.prompt_len
    if request.block_hashes is None:
        rng = np.random.default_rng([zlib.crc32(request.id.encode("utf-8")), seed])
        ids = rng.integers(0, int(high), size=length, dtype=np.int64)
    else:
        size = request.hash_block_size
        blocks = np.array([h & _MASK64 for h in request.block_hashes], dtype=np.uint64)
        seed_key = _mix64(np.array([seed & _MASK64], dtype=np.uint64))
        # One key per block: a scrambled (hash, seed) pair; then one value per (key, offset).
        keys = _mix64(_mix64(blocks) ^ seed_key)
        pos = np.arange(length, dtype=np.uint64)
        offsets = pos % np.uint64(size) + np.uint64(1)
        ids = _mix64(keys[pos // np.uint64(size)] ^ (offsets * _GOLDEN)) % high
    return replace(request, prompt_token_ids=tuple(ids.tolist()))


def materialize_trace(requests: list[Request], vocab_size: int, seed: int = 0) -> list[Request]:
    """Apply :func:`materialize_token_ids` to every request of a trace.

    Returns:
        New requests in the same order.
    """
    return [materialize_token_ids(r, vocab_size, seed) for r in requests]
