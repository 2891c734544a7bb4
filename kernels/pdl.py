"""Programmatic dependent launch (PDL) for the decode kernels: a kernel may start before the one ahead of
it in the stream has finished, and waits for it only where it needs its results.

On Hopper (compute capability 9.0) and later, a kernel launched with the PDL attribute is scheduled as soon
as every program of the previous kernel has signalled ``griddepcontrol.launch_dependents`` (or exited), and
``griddepcontrol.wait`` then blocks until that previous kernel has completed and its writes are visible. A
decode step is a chain of ~100 short kernels whose launch and ramp-up otherwise leave the GPU idle between
them; with PDL the next kernel is already resident, and a GEMV can load its first weight tile (weights are
never written by the step) before it waits.

Contract for a kernel compiled with ``PDL=True`` (see :func:`pdl_enter`): it calls ``pdl_enter`` before it
reads anything an earlier kernel of the step may write and before it writes anything; only constant inputs
(weights) may be read before. Launched without the attribute, ``griddepcontrol.wait`` returns at once, so
such a kernel is correct either way; a kernel launched with the attribute must be compiled with ``PDL=True``
(:func:`pdl_launch_options` ties the two).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


def pdl_supported(device: torch.device | str) -> bool:
    """Whether ``device`` can run PDL launches: CUDA of compute capability >= 9.0, and a Triton with the
    ``gdc_wait`` intrinsic."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return _cuda_pdl(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _cuda_pdl(index: int) -> bool:
    if not torch.cuda.is_available() or not hasattr(getattr(tl.extra, "cuda", None), "gdc_wait"):
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_launch_options(pdl: bool, device: torch.device) -> dict[str, bool]:
    """Extra launch keywords of a kernel compiled with ``PDL=pdl``.

    Args:
        pdl: launch with programmatic dependent launch.
        device: where the kernel runs.

    Returns:
        ``{"launch_pdl": True}`` or ``{}``.

    Raises:
        ValueError: ``pdl`` on a device that cannot run it (see :func:`pdl_supported`).
    """
    if not pdl:
        return {}
    if not pdl_supported(device):
        raise ValueError(f"pdl=True needs a CUDA device of compute capability >= 9.0, got {device}")
    return {"launch_pdl": True}


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """With ``PDL``: wait until the previous kernel of the stream has completed (its writes visible), then
    let the next kernel be scheduled. A no-op without."""
    pdl_wait(PDL)
    pdl_trigger(PDL)


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """The first half of :func:`pdl_enter`: wait for the previous kernel, without letting the next one be
    scheduled yet (a kernel calling this must call :func:`pdl_trigger` later, or the next one launches at
    its exit)."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_trigger(PDL: tl.constexpr):
    """The second half of :func:`pdl_enter`: let the next kernel be scheduled."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
