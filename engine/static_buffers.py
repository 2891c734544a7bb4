"""Named integer arrays in one device buffer with a host mirror: the static inputs CUDA graphs read.

Fields lie one after another, each on a ``SEGMENT_ALIGN``-byte boundary (so Triton never
sees a new pointer alignment). The host mirror is pinned on CUDA and written in place;
``upload`` copies byte ranges of it to the device without blocking and records an event
that ``wait_for_copy`` waits on before the mirror is rewritten. Nothing is allocated per step.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.step_metadata import SEGMENT_ALIGN

Field = tuple[str, type, tuple[int, ...]]  # name, numpy dtype (int32 / int64), shape


class StaticBuffers:
    """One device buffer holding ``fields``, and its host mirror.

    Args:
        fields: ``(name, numpy dtype, shape)`` in layout order.
        device: where the buffer lives (CUDA for graphs; the CPU works too, for tests).

    Attributes:
        host: numpy views of the mirror by name.
        dev: torch views of the device buffer by name.
        offsets: byte offset of each field in the buffer.
    """

    def __init__(self, fields: tuple[Field, ...], device: torch.device) -> None:
        self.offsets: dict[str, int] = {}
        layout, total = [], 0
        for name, dtype, shape in fields:
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            layout.append((name, total, np.dtype(dtype), shape, nbytes))
            self.offsets[name] = total
            total += -(-nbytes // SEGMENT_ALIGN) * SEGMENT_ALIGN
        pin = device.type == "cuda"
        self._host = torch.zeros(total, dtype=torch.uint8, pin_memory=pin)
        self._dev = torch.zeros(total, dtype=torch.uint8, device=device)
        host_np = self._host.numpy()
        self.host: dict[str, np.ndarray] = {}
        self.dev: dict[str, torch.Tensor] = {}
        for name, off, dtype, shape, nbytes in layout:
            self.host[name] = host_np[off : off + nbytes].view(dtype).reshape(shape)
            tdtype = torch.int64 if dtype == np.int64 else torch.int32
            self.dev[name] = self._dev[off : off + nbytes].view(tdtype).view(shape)
        # Recorded after each copy out of the pinned mirror (CUDA only); waited on before rewriting it.
        self._copied = torch.cuda.Event() if pin else None

    def upload_all(self) -> None:
        """Copy the whole mirror (once, after initialising it), synchronously."""
        self._dev.copy_(self._host)

    def wait_for_copy(self) -> None:
        """Block until the last ``upload`` has read the mirror (call before rewriting it)."""
        if self._copied is not None:
            self._copied.synchronize()  # returns at once when never recorded

    def upload(self, *ranges: tuple[int, int]) -> None:
        """Copy the mirror's byte ranges ``[lo, hi)`` to the device (asynchronously on CUDA)."""
        for lo, hi in ranges:
            self._dev[lo:hi].copy_(self._host[lo:hi], non_blocking=self._copied is not None)
        if self._copied is not None:
            self._copied.record()
