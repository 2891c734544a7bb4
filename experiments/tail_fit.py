"""The host tail of a step: the part of its loop turn after its tokens are out (``host_tail_s`` of a profile).

The calibration times each step's whole loop turn, so the profile's tables include the scheduler's
bookkeeping after the step (``Scheduler.postprocess``: committing the prompt blocks a chunk filled to
the prefix cache, booking the new tokens). A real engine's tokens are out before that work, so a
simulator must emit them that much before the step ends; this fits how long it is.

Only steps whose bookkeeping is a replay's are fitted. A calibration prefill sample's request has one
output token, so it finishes in the timed step and the scheduler frees its blocks there; behind a
cached prefix of ``C`` tokens that freeing costs time in ``C`` (an H200: 150-270 us at ``C = 4096``
against 20-50 us without a prefix), which a replay's prefill steps, whose requests go on decoding, do
not pay. Fitting those samples too raised the per-step term to 48 us where the decode samples' own
tails are 11-33 us. So the per-step and per-decode terms come from the decode samples, and the
per-prefill-token term from the fresh-prompt prefill samples (no cached prefix) beyond that step term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from experiments.profile_fit import DecodeSample, PrefillSample, nonnegative_lstsq


def fit_host_tail(decodes: Sequence[DecodeSample], prefills: Sequence[PrefillSample]) -> dict[str, float]:
    """The profile's ``host_tail_s``: ``step + per_prefill_token * tokens + per_decode * decodes``.

    Args:
        decodes: decode-only samples; their tails fit ``step + per_decode * batch``.
        prefills: prefill-only samples; those without a cached prefix (all of them if every one has
            a prefix) fit ``per_prefill_token * tokens`` to their tails minus ``step`` (both terms
            together when there is no decode sample).

    Returns:
        ``{"step", "per_prefill_token", "per_decode"}`` in seconds, each fitted by least squares and
        >= 0.

    Raises:
        ValueError: no sample.
    """
    if not decodes and not prefills:
        raise ValueError("fit_host_tail needs at least one sample")
    fresh = [p for p in prefills if p.context == 0] or list(prefills)
    tokens = np.array([float(p.tokens) for p in fresh])
    tails = np.array([p.tail_s for p in fresh])
    if not decodes:
        step, per_token = nonnegative_lstsq(np.column_stack([np.ones_like(tokens), tokens]), tails)
        return {"step": float(step), "per_prefill_token": float(per_token), "per_decode": 0.0}
    rows = np.array([(1.0, float(d.batch)) for d in decodes])
    step, per_decode = nonnegative_lstsq(rows, np.array([d.tail_s for d in decodes]))
    per_token = nonnegative_lstsq(tokens[:, None], tails - step)[0] if fresh else 0.0
    return {"step": float(step), "per_prefill_token": float(per_token), "per_decode": float(per_decode)}
