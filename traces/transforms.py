"""Transforms applied to a loaded trace: window, speed-up and length scaling or clipping.

Applied in this order by :meth:`TraceTransforms.apply`:

1. ``skip``: drop the first ``skip`` requests (in arrival order); the arrivals of the rest are
   shifted so the first kept request arrives at 0.
2. ``n``: keep the first ``n`` of the remaining requests.
3. ``rate_scale``: multiply the arrival rate, i.e. divide every arrival time by it.
4. ``len_scale``: multiply prompt and output lengths (rounded half up, at least 1). For a prompt described
   by block hashes the hash block size is scaled too (``ceil(hash_block_size * len_scale)``), so
   the prefix structure (which requests share which blocks) is kept.
5. ``max_in`` / ``max_out``: clip prompt / output lengths (hashes and token ids cut to match).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from policies.types import Request


@dataclass(frozen=True)
class TraceTransforms:
    """Transforms of a trace file (see the module docstring for their order).

    Args:
        skip: requests dropped from the start (>= 0).
        n: requests kept after ``skip``, or None for all.
        rate_scale: arrival-rate multiplier (> 0).
        len_scale: prompt and output length multiplier (> 0).
        max_in: prompt length cap, or None.
        max_out: output length cap, or None.
    """

    skip: int = 0
    n: int | None = None
    rate_scale: float = 1.0
    len_scale: float = 1.0
    max_in: int | None = None
    max_out: int | None = None

    def __post_init__(self) -> None:
        if self.skip < 0:
            raise ValueError(f"skip must be >= 0, got {self.skip}")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        for key in ("rate_scale", "len_scale"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{key} must be a finite number > 0, got {v}")
        for key in ("max_in", "max_out"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ValueError(f"{key} must be >= 1, got {v}")

    @property
    def is_identity(self) -> bool:
        return self == TraceTransforms()

    def apply(self, requests: list[Request]) -> list[Request]:
        """Transform a trace sorted by arrival.

        Returns:
            A new list (the input is not modified).

        Raises:
            ValueError: ``skip`` leaves no request, or ``len_scale`` meets a request with token ids.
        """
        if self.skip >= len(requests):
            raise ValueError(f"skip={self.skip} leaves no request of the trace's {len(requests)}")
        window = requests[self.skip :]
        if self.n is not None:
            window = window[: self.n]
        if self.is_identity:
            return list(window)
        origin = window[0].arrival_s if self.skip > 0 else 0.0
        return [self._one(r, origin) for r in window]

    def _one(self, r: Request, origin: float) -> Request:
        arrival = (r.arrival_s - origin) / self.rate_scale
        prompt_len, output_len = r.prompt_len, r.output_len
        hashes, hsize, token_ids = r.block_hashes, r.hash_block_size, r.prompt_token_ids
        if self.len_scale != 1.0:
            if token_ids is not None:
                raise ValueError(f"request {r.id!r}: len_scale cannot scale a prompt given as token ids")
            prompt_len = max(1, math.floor(prompt_len * self.len_scale + 0.5))
            output_len = max(1, math.floor(output_len * self.len_scale + 0.5))
            if hashes is not None:
                # ceil keeps len(hashes) * hsize >= prompt_len: round(L*s) <= len(hashes) * ceil(hsize*s).
                hsize = max(math.ceil(hsize * self.len_scale), -(-prompt_len // len(hashes)))
        if self.max_in is not None:
            prompt_len = min(prompt_len, self.max_in)
        if self.max_out is not None:
            output_len = min(output_len, self.max_out)
        if hashes is not None:
            hashes = hashes[: -(-prompt_len // hsize)]
        if token_ids is not None:
            token_ids = token_ids[:prompt_len]
        return replace(
            r,
            arrival_s=arrival,
            prompt_len=prompt_len,
            output_len=output_len,
            block_hashes=hashes,
            hash_block_size=hsize,
            prompt_token_ids=token_ids,
        )
