"""Batch-1 (up to 16 rows) GEMV for bf16/fp16 weights, tuned to stream the weight at copy bandwidth.

cuBLAS picks GEMV kernels that reach ~3/4 of the bandwidth floor on decode shapes; this kernel launches many
programs over N (a few rows each) so every SM streams its own slice of the weight with 16-byte loads, and
reuses each loaded weight tile for every row of x. A fused QKV or gate_up projection is the same call with
the concatenated weight (a larger N).

The launch shape is a :class:`GemvConfig`: rows per program, elements per tile, warps, and an optional
split of K over several programs (fp32 partials summed in a fixed order by a second small kernel, so the
result is deterministic and the pair of launches is CUDA-graph safe). Small decode shapes are latency
bound, so the best shape depends on the layer: :func:`candidate_configs` lists a few to time
(``engine.gemv_choice`` does). The kernel body (``kernels._gemv_kernel``) also runs the fused variants
of ``kernels.gemv_fused`` (RMSNorm before, SwiGLU or a residual add after).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton

from kernels._gemv_kernel import launch_gemv
from kernels._gemv_util import (
    SKINNY_MAX_M,
    check_activation,
    check_same_device,
    num_sms,
    pick_block_n,
    pow2_at_most,
    prepare_out,
)
from kernels._util import check_int_fields, is_pow2

_TILE_ELEMS = 4096  # weight elements the default config loads per program and loop step (8 KiB of bf16)
_WIDE_TILE = 8192  # the larger tiles of the other candidates (16 KiB of bf16)
MAX_TILE_ELEMS = 16384  # block_n * block_k cap (registers: the M == 1 path keeps an fp32 tile accumulator)
MAX_ELEMS_PER_THREAD = 64  # block_n * block_k / (32 * num_warps) cap, beyond which registers spill
MAX_SPLIT_K = 16


@dataclass(frozen=True)
class GemvConfig:
    """Launch shape of the GEMV kernels.

    Args:
        block_n: weight rows per program (power of two, 1..64).
        block_k: elements of each row loaded per loop step (power of two, 16..8192); one tile is
            ``block_n * block_k`` elements (at most ``MAX_TILE_ELEMS``).
        num_warps: warps per program (1, 2, 4, 8 or 16); at most ``MAX_ELEMS_PER_THREAD`` tile
            elements per thread.
        split_k: programs sharing one row block along K (1..16). Above 1 each writes fp32 partial
            sums that a second kernel adds in split order (deterministic).
        pdl: launch with programmatic dependent launch (``kernels.pdl``; CUDA compute capability
            >= 9.0 only): the kernel loads its first weight tile while the previous kernel finishes.

    Raises:
        ValueError: a field out of range, naming it.
    """

    block_n: int = 8
    block_k: int = 512
    num_warps: int = 4
    split_k: int = 1
    pdl: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pdl, bool):
            raise ValueError(f"GemvConfig.pdl must be a bool, got {self.pdl!r}")
        check_int_fields(self, ("block_n", "block_k", "num_warps", "split_k"))
        if not (is_pow2(self.block_n) and self.block_n <= 64):
            raise ValueError(f"GemvConfig.block_n must be a power of two in [1, 64], got {self.block_n}")
        if not (is_pow2(self.block_k) and 16 <= self.block_k <= 8192):
            raise ValueError(f"GemvConfig.block_k must be a power of two in [16, 8192], got {self.block_k}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"GemvConfig.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if not 1 <= self.split_k <= MAX_SPLIT_K:
            raise ValueError(f"GemvConfig.split_k must be in [1, {MAX_SPLIT_K}], got {self.split_k}")
        tile = self.block_n * self.block_k
        if tile > MAX_TILE_ELEMS:
            raise ValueError(f"GemvConfig tile block_n * block_k = {tile} elements exceeds {MAX_TILE_ELEMS}")
        per_thread = tile // (32 * self.num_warps)
        if per_thread > MAX_ELEMS_PER_THREAD:
            raise ValueError(f"GemvConfig tile of {tile} elements is {per_thread} per thread with num_warps="
                             f"{self.num_warps}; at most {MAX_ELEMS_PER_THREAD} (use more warps or a smaller "
                             "tile)")

    @property
    def label(self) -> str:
        """Short name for logs, e.g. ``n8k512w4``, ``n16k1024w8s4`` or (with PDL) ``n8k512w4p``."""
        split = f"s{self.split_k}" if self.split_k > 1 else ""
        return f"n{self.block_n}k{self.block_k}w{self.num_warps}{split}{'p' if self.pdl else ''}"


def _rows_for(n: int, programs: int, max_block: int) -> int:
    """Largest power-of-two row block <= max_block that still gives ``programs`` programs over n rows."""
    block = pow2_at_most(max_block, 64)
    while block > 1 and triton.cdiv(n, block) < programs:
        block //= 2
    return block


def _tile(block_n: int, tile_elems: int, k_cap: int, num_warps: int, split_k: int = 1) -> GemvConfig:
    """Config of ``block_n`` rows and about ``tile_elems`` elements per tile, block_k <= k_cap (a power of
    two)."""
    return GemvConfig(block_n, max(16, pow2_at_most(tile_elems // block_n, k_cap)), num_warps, split_k)


def default_config(n: int, k: int, device: torch.device) -> GemvConfig:
    """The launch shape used when no config is given: 8 KiB tiles, rows chosen by ``pick_block_n``."""
    return _tile(pick_block_n(n, torch.device(device)), _TILE_ELEMS, triton.next_power_of_2(k), 4)


def resolve_config(config: GemvConfig | None, n: int, k: int, device: torch.device) -> GemvConfig:
    """``config``, or the :func:`default_config` of a weight [n, k] when None (ValueError: not a config)."""
    if config is None:
        return default_config(n, k, device)
    if not isinstance(config, GemvConfig):
        raise ValueError(f"config must be a GemvConfig or None, got {type(config).__name__}")
    return config


def candidate_configs(n: int, k: int, device: torch.device, pdl: bool = False) -> list[GemvConfig]:
    """A few launch shapes worth timing for a weight [n, k] (the default first, at most 6, no repeats).

    Besides the default: 16 KiB tiles on 8 warps (more bytes in flight per program); whole rows in one
    tile (two for K > 4096) with enough programs for ~4 per SM, and the same with half the rows per
    program; and for K >= 4096 a split over K (2 or 4 ways) for shapes with few rows.

    Args:
        n: weight rows (output features).
        k: weight columns (input features).
        device: the device (its SM count sizes the grids; a nominal 132 off CUDA).
        pdl: give every config ``pdl=True``.

    Returns:
        Distinct valid configs.
    """
    device = torch.device(device)
    sms = num_sms(device)
    k_pow2 = max(16, triton.next_power_of_2(k))
    out = [default_config(n, k, device), _tile(_rows_for(n, 2 * sms, 16), _WIDE_TILE, k_pow2, 8)]
    if k_pow2 <= 2 * 4096:
        block_k = k_pow2 if k_pow2 <= 4096 else k_pow2 // 2
        rows = _rows_for(n, 4 * sms, max(1, _WIDE_TILE // block_k))
        out.append(GemvConfig(rows, block_k, 8 if rows * block_k >= _WIDE_TILE else 4))
        if rows > 1:
            out.append(GemvConfig(rows // 2, block_k, 4))
    if k >= 4096:
        split = min(4, k // 2048)
        rows = _rows_for(n, triton.cdiv(4 * sms, split), 16)
        out.append(_tile(rows, _WIDE_TILE, triton.next_power_of_2(triton.cdiv(k, split)), 8, split))
    if pdl:
        out = [replace(c, pdl=True) for c in out]
    return list(dict.fromkeys(out))


def check_weight(w: torch.Tensor, name: str = "w") -> tuple[int, int]:
    """Raise ValueError unless ``w`` is a 2-D bf16/fp16 [N, K] tensor with contiguous rows; returns (N, K)."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [N, K] tensor, got {getattr(w, 'shape', type(w).__name__)}")
    if w.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"{name} must be bfloat16 or float16, got {w.dtype}")
    if w.stride(1) != 1:
        raise ValueError(f"{name} must have contiguous rows")
    return int(w.shape[0]), int(w.shape[1])


def check_rows(x: torch.Tensor, w: torch.Tensor, k: int, fn: str) -> None:
    """Raise ValueError unless ``x`` is a [M, k] activation of w's dtype with 1 <= M <= ``SKINNY_MAX_M``
    (``fn`` names the kernel in the message)."""
    check_activation(x, k)
    if x.dtype != w.dtype:
        raise ValueError(f"x must have w's dtype {w.dtype}, got {x.dtype}")
    if x.shape[0] > SKINNY_MAX_M:
        raise ValueError(f"x has M={x.shape[0]} rows; {fn} takes at most {SKINNY_MAX_M} (use F.linear)")


def gemv_bf16(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None,
              config: GemvConfig | None = None) -> torch.Tensor:
    """y = x @ w.T for a few rows of x (decode), fp32 accumulation.

    Args:
        x: [M, K] activations, 1 <= M <= 16, same dtype as w (rows contiguous).
        w: [N, K] bf16 or fp16 weight (rows contiguous).
        out: optional [M, N] output buffer of x.dtype.
        config: launch shape (None: :func:`default_config` of the shape).

    Returns:
        [M, N] tensor of x.dtype.
    """
    n, k = check_weight(w)
    check_rows(x, w, k, "gemv_bf16")
    check_same_device(("x", x), ("w", w))
    return launch_gemv(x, w, prepare_out(x, n, out), resolve_config(config, n, k, x.device))


def gemv_bf16_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference of :func:`gemv_bf16` (fp32 matmul)."""
    return (x.float() @ w.float().T).to(x.dtype)
