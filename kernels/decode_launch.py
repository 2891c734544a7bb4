"""How the paged decode attention kernel (``kernels.attention_decode``) is launched: how many KV splits a
batch uses, how long each split is, and the tile / warp / pipeline shape of its programs.

Everything here is decided on the host from shapes alone (no device sync), so a captured CUDA graph of
one shape always replays the same launch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels._util import check_int_fields, is_pow2, sm_count

#: Keys per split at least this many (splitting finer only adds reduction traffic).
_MIN_KEYS_PER_SPLIT = 128
#: The default split count keeps every split at most this many keys long (see default_num_splits): on an
#: H100 one program streams keys latency-bound, so 2048-key splits left a long context 40% slower than
#: the same bytes spread evenly (benchmarks/bench_decode_launch.py, 'decode_mixed' rows).
_MAX_KEYS_PER_SPLIT = 512
#: Largest default number of splits.
_MAX_SPLITS = 64


@dataclass(frozen=True)
class DecodeConfig:
    """Launch shape of the decode attention partition kernel.

    Args:
        block_n: keys per loop step (power of two, 16..256).
        num_warps: warps per program (1, 2, 4 or 8).
        num_stages: software-pipeline depth of the K/V loads (1..6).

    Raises:
        ValueError: a field out of range, naming it.
    """

    block_n: int = 128
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        check_int_fields(self, ("block_n", "num_warps", "num_stages"))
        if not (is_pow2(self.block_n) and 16 <= self.block_n <= 256):
            raise ValueError(f"DecodeConfig.block_n must be a power of two in [16, 256], got {self.block_n}")
        if self.num_warps not in (1, 2, 4, 8):
            raise ValueError(f"DecodeConfig.num_warps must be 1, 2, 4 or 8, got {self.num_warps}")
        if not 1 <= self.num_stages <= 6:
            raise ValueError(f"DecodeConfig.num_stages must be in [1, 6], got {self.num_stages}")

    @property
    def label(self) -> str:
        """Short name for logs, e.g. ``n128w4s3``."""
        return f"n{self.block_n}w{self.num_warps}s{self.num_stages}"


#: bf16 head_dim-128 decode batches of at most this many sequences take the wide launch shape.
SMALL_BATCH = 16


def default_decode_config(head_dim: int, quantized: bool, device: torch.device, num_seqs: int = 0) -> DecodeConfig:
    """The launch shape used when none is given (small tiles, no pipelining under the CPU interpreter).

    bf16 head_dim 128 at up to ``SMALL_BATCH`` sequences takes 128-key steps on 8 warps with two stages:
    on an H100 (Llama-3.2-3B heads, PDL) 7.2-7.9 µs against 9.6-9.8 µs at batch 1 with 200-380 keys, the
    same 61 µs at 32k keys, 3.7-4.5% faster at 4 x 4k, 8 x 8k and 16 x 2k; equal at 64 x 4k and 0.7%
    slower at 256 x 2k, where the 64-key shape stays (``benchmarks/results/h100_lookahead_run9.log``).
    """
    if torch.device(device).type != "cuda":
        return DecodeConfig(16, 4, 1)
    if head_dim > 64 and not quantized:
        return DecodeConfig(128, 8, 2) if 0 < num_seqs <= SMALL_BATCH else DecodeConfig(64, 4, 3)
    return DecodeConfig(128, 4, 3)


def default_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """Default ``num_splits``: the most splits any one sequence may use (each uses only what it needs).

    * small batches (``num_seqs * num_kv_heads * finest <= 8 * SMs``, where ``finest`` =
      ceil(max_context / ``_MIN_KEYS_PER_SPLIT``) is the split count at the finest granularity of 128
      keys): ``finest``. A program then walks at most 128 keys of any context, so a batch-1 decode is one
      short dependent chain (block table, K/V, dot) instead of several in a row, and a sequence of
      ``ctx`` keys still runs only ceil(ctx / 128) programs per head (the others return at once);
    * otherwise the larger of an occupancy rule, about two waves of (sequence, kv head, split) programs,
      ceil(2 * SMs / (num_seqs * num_kv_heads)) capped at ``finest``, and a length rule,
      ceil(max_context / ``_MAX_KEYS_PER_SPLIT``), so that one long context in a batch of short ones is
      not walked serially by one program while the short ones finish early.

    Both capped at ``_MAX_SPLITS`` (64).

    Args:
        num_seqs: decode sequences in the batch.
        num_kv_heads: KV heads of the cache.
        max_context: host-known upper bound of the context (block_tables width * block_size), so the
            choice needs no device sync and is stable across CUDA-graph replays of one shape.
        device: where the kernel runs (its SM count; a nominal 8 off CUDA).

    Returns:
        num_splits in [1, _MAX_SPLITS].
    """
    target = 2 * sm_count(device)
    programs = max(num_seqs * num_kv_heads, 1)
    finest = max(1, math.ceil(max_context / _MIN_KEYS_PER_SPLIT))
    if programs * finest <= 4 * target:  # at most ~8 programs per SM, most returning at once
        return int(min(finest, _MAX_SPLITS))
    occupancy = max(1, min(math.ceil(target / programs), finest))
    length = math.ceil(max_context / _MAX_KEYS_PER_SPLIT)
    return int(max(1, min(max(occupancy, length), _MAX_SPLITS)))


def keys_per_split(max_context: int, num_splits: int, block_n: int) -> int:
    """Slice length shared by a batch: max(_MIN_KEYS_PER_SPLIT, ceil(max_context / num_splits)) -> BLOCK_N."""
    keys = max(_MIN_KEYS_PER_SPLIT, -(-max_context // num_splits))
    return -(-keys // block_n) * block_n


def _launch_config(head_dim: int, quantized: bool, device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {"BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    block_n = 64 if head_dim > 64 and not quantized else 128
    return {"BLOCK_N": block_n, "num_warps": 4, "num_stages": 3}
