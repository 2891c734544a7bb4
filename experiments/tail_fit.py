"""The host tail of a step: the part of its loop turn after its tokens are out (``host_tail_s`` of a profile).

The calibration times each step's whole loop turn, so the profile's tables include the scheduler's
bookkeeping after the step (``Scheduler.postprocess``: committing the prompt blocks a chunk filled to
the prefix cache, booking the new tokens). A real engine's tokens are out before that work, so a
simulator must emit them that much before the step ends; this fits how long it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from experiments.profile_fit import DecodeSample, PrefillSample, nonnegative_lstsq


def fit_host_tail(decodes: Sequence[DecodeSample], prefills: Sequence[PrefillSample]) -> dict[str, float]:
    """The profile's ``host_tail_s``: ``step + per_prefill_token * tokens + per_decode * decodes`` fitted to
    the samples' tails by least squares, every coefficient >= 0.

    Raises:
        ValueError: no sample.
    """
    rows = [(1.0, 0.0, float(d.batch), d.tail_s) for d in decodes] + [
        (1.0, float(p.tokens), 0.0, p.tail_s) for p in prefills]
    if not rows:
        raise ValueError("fit_host_tail needs at least one sample")
    data = np.asarray(rows)
    coef = nonnegative_lstsq(data[:, :3], data[:, 3])
    return {"step": float(coef[0]), "per_prefill_token": float(coef[1]), "per_decode": float(coef[2])}
