"""L2 prefetch of constant tensors (weights) from inside a kernel, for the idle memory of a decode step.

At batch 1 a decoder layer's attention (RoPE + KV write, then attention over a short context) reads almost
nothing from memory yet takes several microseconds of dependent latency, while the projections after it
(o, then gate/up) are bandwidth bound. A kernel that runs just before that phase (the QKV GEMV) can ask
the memory system to bring the next projections' weights into L2 as its last act; the GEMVs then read
those lines from L2 instead of HBM. Prefetches are hints: they change no value, only where a later load
finds its bytes, so a kernel with prefetch gives the same bits as without.

Two forms (``PrefetchMode``):

- ``"line"``: one ``prefetch.global.L2`` per 128-byte line, spread over every thread of the grid;
- ``"bulk"``: one ``cp.async.bulk.prefetch.L2`` per 4 KiB chunk (Hopper and later), which the copy engine
  works through after the issuing thread has moved on.

Only compiled for CUDA: the CPU interpreter cannot run PTX, and :func:`prefetch_args` drops the ranges there
(which is exact, since prefetches change nothing).
"""

from __future__ import annotations

from typing import Literal

import torch
import triton
import triton.language as tl

PrefetchMode = Literal["line", "bulk"]
MODES: tuple[str, ...] = ("line", "bulk")
#: Most ranges one kernel prefetches.
MAX_RANGES = 3
_LINE_BYTES = 128
_CHUNK_BYTES = 4096


@triton.jit
def _prefetch_range(ptr, nbytes, pid, nprog, STEP: tl.constexpr, BLOCK: tl.constexpr):
    # Chunk c (STEP bytes) of the range is prefetched by program (c // BLOCK) % nprog; ptr points at int8.
    chunks = tl.cdiv(nbytes, STEP)
    offs = tl.arange(0, BLOCK)
    for c0 in range(pid * BLOCK, chunks, nprog * BLOCK):
        c = c0 + offs
        start = tl.where(c < chunks, c, 0).to(tl.int64) * STEP
        addr = ptr + start
        if STEP == 128:
            tl.inline_asm_elementwise("mov.u32 $0, 0;\n\tprefetch.global.L2 [$1];", "=r,l", [addr],
                                      dtype=tl.int32, is_pure=False, pack=1)
        else:
            # the chunk, cut at the range's end (ranges are multiples of 16 bytes, as bulk prefetches need)
            size = tl.minimum(nbytes - start, STEP).to(tl.int32)
            tl.inline_asm_elementwise("mov.u32 $0, 0;\n\tcp.async.bulk.prefetch.L2.global [$1], $2;", "=r,l,r",
                                      [addr, size], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def l2_prefetch(p0, n0, p1, n1, p2, n2, STEP: tl.constexpr):
    """Prefetch up to three byte ranges (``p*`` int8 pointers, ``n*`` byte counts, 0 for none) into L2,
    spread over every program of the launching grid. ``STEP`` (from :func:`prefetch_args`): 0 does
    nothing, 128 one line prefetch per 128 bytes, 4096 one bulk prefetch per 4 KiB."""
    if STEP != 0:
        pid = tl.program_id(0) + tl.program_id(1) * tl.num_programs(0)
        nprog = tl.num_programs(0) * tl.num_programs(1)
        _prefetch_range(p0, n0, pid, nprog, STEP, 128)
        _prefetch_range(p1, n1, pid, nprog, STEP, 128)
        _prefetch_range(p2, n2, pid, nprog, STEP, 128)


def prefetch_args(ranges: tuple[torch.Tensor, ...], mode: str, dummy: torch.Tensor) -> tuple[list, int]:
    """Kernel arguments of :func:`l2_prefetch` for ``ranges`` (contiguous tensors, each a multiple of 16
    bytes), or of none off CUDA.

    Args:
        ranges: at most ``MAX_RANGES`` tensors whose bytes to prefetch (empty: none), on ``dummy``'s device.
        mode: ``"line"`` or ``"bulk"``.
        dummy: any tensor on the kernel's device, passed where a range is unused (never read).

    Returns:
        ``([p0, n0, p1, n1, p2, n2], STEP)``: int8 views (a dummy where unused) and byte counts, and the
        constexpr ``STEP`` of :func:`l2_prefetch` (0 when nothing is prefetched).

    Raises:
        ValueError: an unknown mode, too many ranges, or a range that is not contiguous, not a multiple of
            16 bytes or on another device.
    """
    if not ranges:
        return [dummy, 0] * MAX_RANGES, 0
    if mode not in MODES:
        raise ValueError(f"prefetch mode must be one of {MODES}, got {mode!r}")
    if len(ranges) > MAX_RANGES:
        raise ValueError(f"at most {MAX_RANGES} prefetch ranges, got {len(ranges)}")
    for i, t in enumerate(ranges):
        nbytes = t.numel() * t.element_size()
        if not t.is_contiguous() or nbytes % 16:
            raise ValueError(f"prefetch range {i} must be contiguous and a multiple of 16 bytes, got "
                             f"shape {tuple(t.shape)} ({nbytes} bytes, contiguous={t.is_contiguous()})")
        if t.device != dummy.device:
            raise ValueError(f"prefetch range {i} is on {t.device}, the kernel on {dummy.device}")
    if dummy.device.type != "cuda":
        return [dummy, 0] * MAX_RANGES, 0
    args: list = []
    for t in ranges:
        args += [t.view(-1).view(torch.int8), t.numel() * t.element_size()]
    args += [args[0], 0] * (MAX_RANGES - len(ranges))
    return args, chunk_bytes(mode)


def chunk_bytes(mode: str) -> int:
    """Bytes one prefetch instruction covers in ``mode``."""
    return _LINE_BYTES if mode == "line" else _CHUNK_BYTES

