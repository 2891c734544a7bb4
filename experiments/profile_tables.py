"""The fitted part of a measured profile, from its timed samples: what ``servegym calibrate`` writes after
timing, and what ``servegym refit`` recomputes from the samples a profile keeps in its ``meta``.

    servegym refit --profile PROFILE.json --out NEW.json [--only TABLE ...]

A refit re-runs the current fit (``experiments.profile_fit``, ``experiments.tail_fit``) on the profile's own
measurements, so a profile calibrated before a change of the fit gains it without GPU time; the engine
fields (KV bytes per token, swap rate, graph sizes, grouped verification rows) and the meta are kept.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from experiments.profile_fit import (
    DecodeSample,
    MixedSample,
    PrefillSample,
    VerifySample,
    decode_steps_table,
    fit_mixed_decode,
    fit_profile,
    fit_verify,
)
from experiments.tail_fit import fit_host_tail
from sim.cost_model import CalibratedCostModel
from sim.profile import read_profile, validate_profile, write_profile

#: the top-level fields a fit writes (a refit drops them first)
FITTED_FIELDS = ("step_overhead_s", "tables", "host_tail_s", "speculative_overhead_s", "decode_steps",
                 "decode_steps_cold")


def add_fitted_fields(profile: dict[str, Any], decodes: Sequence[DecodeSample], cold: Sequence[DecodeSample],
                      prefills: Sequence[PrefillSample], mixed: Sequence[MixedSample],
                      verify: Sequence[VerifySample], block_size: int) -> dict[str, Any]:
    """Fill ``profile`` (its meta and engine fields already set) with the fitted fields, and validate it.

    Args:
        profile: the profile being written; gains ``FITTED_FIELDS`` (and ``meta.mixed_extra_s``).
        decodes, cold: decode-only samples, served and (with the decode lookahead) cold.
        prefills, mixed, verify: prefill-only, chunk-beside-decodes and verification samples.
        block_size: tokens per KV block of the engine.

    Returns:
        ``profile``.
    """
    fitted = fit_profile(decodes, prefills)
    profile["meta"]["mixed_extra_s"] = fitted.mixed_extra_s
    profile["step_overhead_s"] = fitted.step_overhead_s
    profile["tables"] = {name: {"x": xs, "time_s": ys} for name, (xs, ys) in fitted.tables.items()}
    # the tables' part after a step's tokens are out (the simulator emits the tokens before it)
    profile["host_tail_s"] = fit_host_tail(decodes, prefills)
    if mixed:  # decodes beside a chunk: their cost beyond the tables above, by the model that uses them
        base = CalibratedCostModel(profile, block_size, "<calibration>")
        xs, ys = fit_mixed_decode(mixed, lambda m: base.shape_time(m.tokens, 1, m.batch, m.ctx_tokens, m.pairs))
        profile["tables"]["mixed_decode"] = {"x": xs, "time_s": ys}
    if verify:  # verification steps: priced as their rows with the decodes' own attention, plus the fit
        base = CalibratedCostModel(profile, block_size, "<calibration>")
        (xs, ys), overhead = fit_verify(verify, lambda v: base.shape_time(0, 0, v.rows, v.ctx_tokens, 0))
        profile["tables"]["draft_attention"] = {"x": xs, "time_s": ys}
        profile["speculative_overhead_s"] = overhead
    # Last, so that the fits above price their base steps by the tables, as the simulator prices those steps.
    profile["decode_steps"] = decode_steps_table(decodes)
    if cold:  # the steps no looked-ahead step serves (sim/lookahead.py says which)
        profile["decode_steps_cold"] = decode_steps_table(cold)
    validate_profile(profile, "<calibration>")
    return profile


def _samples(meta: dict[str, Any], key: str, cls: type, source: str) -> list:
    rows = meta.get(key) or []
    try:
        return [cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}) for row in rows]
    except TypeError as e:
        raise ValueError(f"{source}: meta.{key} has a malformed sample ({e})") from None


def refit(profile: dict[str, Any], block_size: int = 16, source: str = "<profile>",
          only: Sequence[str] = ()) -> dict[str, Any]:
    """A copy of a measured ``profile`` with its fitted fields recomputed from its ``meta`` samples.

    Args:
        only: table names: recompute just these tables (added or replaced) and keep every other field.

    Raises:
        ValueError: not a measured profile, its meta lacks the decode or prefill samples, or ``only`` names a
            table the fit does not write.
    """
    meta = profile.get("meta") or {}
    if meta.get("source") != "measured" or not meta.get("decode_samples") or not meta.get("prefill_samples"):
        raise ValueError(f"{source}: only a measured profile with meta.decode_samples and meta.prefill_samples "
                         "can be refitted")
    out = {k: v for k, v in profile.items() if k not in FITTED_FIELDS}
    out["meta"] = dict(meta)
    fitted = add_fitted_fields(out, _samples(meta, "decode_samples", DecodeSample, source),
                               _samples(meta, "cold_decode_samples", DecodeSample, source),
                               _samples(meta, "prefill_samples", PrefillSample, source),
                               _samples(meta, "mixed_samples", MixedSample, source),
                               _samples(meta, "verify_samples", VerifySample, source), block_size)
    if not only:
        return fitted
    unknown = sorted(set(only) - set(fitted["tables"]))
    if unknown:
        raise ValueError(f"{source}: the fit writes no table {unknown}; it writes {sorted(fitted['tables'])}")
    kept = {**profile, "meta": dict(meta), "tables": dict(profile["tables"])}
    kept["tables"].update({name: fitted["tables"][name] for name in only})
    validate_profile(kept, source)
    return kept


def add_refit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="a measured profile (servegym calibrate)")
    p.add_argument("--out", required=True, help="where the refitted profile goes (may be the same file)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block of the calibrated engine")
    p.add_argument("--only", nargs="+", default=(), metavar="TABLE",
                   help="recompute just these tables (e.g. prefill_context), keeping every other field")


def cmd_refit(ns: argparse.Namespace) -> int:
    """``servegym refit``."""
    new = refit(read_profile(ns.profile), ns.block_size, ns.profile, ns.only)
    new["meta"]["refit"] = "servegym refit" + (f" --only {' '.join(ns.only)}" if ns.only else "")
    print(f"wrote {write_profile(new, ns.out)}")
    return 0
