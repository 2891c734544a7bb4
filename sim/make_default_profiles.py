"""Write the shipped roofline-derived profiles to ``sim/profiles``.

Usage: ``python -m sim.make_default_profiles [--out DIR]``. Each profile's
``meta.command`` records this command line. Measured profiles from the
engine's profiler (``servegym calibrate``) live in ``sim/profiles/measured`` and are preferred
where they exist.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from sim.cost_model import RooflineCostModel
from sim.hardware import GPUSpec
from sim.model_spec import ModelSpec
from sim.profile import PROFILE_FORMAT, write_profile
from sim.shipped_profiles import PROFILES_DIR, profile_name

MODELS, GPUS = ("llama-3.2-1b", "llama-3.2-3b"), ("h100", "h200")
DEFAULTS = [(model, gpu, "bf16", "bf16") for model in MODELS for gpu in GPUS]  # (model, gpu, weights, kv)


def _grid(hi: float) -> list[float]:
    """1, 2, 3, 4, 6, 8, 12, ... up to and including ``hi``."""
    out, p = [], 1
    while p <= hi:
        out += [p, p * 3 // 2] if p > 1 else [1]
        p *= 2
    return sorted({float(v) for v in out if v <= hi} | {float(hi)})


def make_roofline_profile(model: ModelSpec | str, gpu: GPUSpec | str, weight_dtype: str = "bf16",
                          kv_dtype: str = "bf16", *, max_tokens: int = 65536, max_samples: int = 4096,
                          decode_ref_context: int = 1024, step_overhead_s: float = 0.0,
                          command: str | None = None) -> dict[str, Any]:
    """A profile whose tables come from ``RooflineCostModel`` (``meta.source = 'roofline'``).

    dense and lm_head include the roofline's breakpoints, so they are exact.
    decode_attention is priced for decodes of ``decode_ref_context`` tokens each
    (at least one decode); prefill_attention for one chunk prefilled from scratch.

    Returns:
        The profile as a dict (pass it to ``write_profile``).
    """
    rcm = RooflineCostModel(model, gpu, weight_dtype, kv_dtype, step_overhead_s=step_overhead_s)
    dense_knots, lm_knots = rcm.knots()
    dense_x = sorted(set(_grid(max_tokens)) | {x for x in dense_knots if x <= max_tokens})
    lm_x = sorted(set(_grid(max_samples)) | {x for x in lm_knots if x <= max_samples})
    ctx_x = _grid(max_tokens * decode_ref_context)
    qs = _grid(max_tokens)
    quantized = weight_dtype not in ("bf16", "fp16")
    return {
        "format": PROFILE_FORMAT,
        "meta": {"model": rcm.model.name, "gpu": rcm.gpu.name, "dtype": "bf16" if quantized else weight_dtype,
                 "kv_cache_dtype": kv_dtype, "quantization": weight_dtype if quantized else None,
                 "source": "roofline", "command": command or " ".join(sys.argv),
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "decode_ref_context": decode_ref_context, "prefill_reference": "one chunk from scratch"},
        "step_overhead_s": step_overhead_s,
        "kv_bytes_per_token": rcm.model.kv_bytes_per_token(kv_dtype),
        "swap_bytes_per_s": rcm.gpu.host_bw,
        "tables": {
            "dense": {"x": dense_x, "time_s": [rcm.dense_time(x) for x in dense_x]},
            "lm_head": {"x": lm_x, "time_s": [rcm.lm_head_time(x) for x in lm_x]},
            "decode_attention": {"x": ctx_x, "time_s": [
                rcm.decode_attention_time(max(1.0, x / decode_ref_context), x) for x in ctx_x]},
            "prefill_attention": {"x": [q * (q + 1) / 2 for q in qs], "time_s": [
                rcm.prefill_attention_time(q, 0, q * (q + 1) / 2) for q in qs]},
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Generate every profile in ``DEFAULTS``; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(PROFILES_DIR), help="output folder (default: sim/profiles)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m sim.make_default_profiles", *(sys.argv[1:] if argv is None else argv)])
    for model, gpu, weights, kv in DEFAULTS:
        profile = make_roofline_profile(model, gpu, weights, kv, command=command)
        path = write_profile(profile, Path(args.out) / profile_name(model, gpu, weights, kv))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
