"""Write the shipped roofline-derived profiles to ``sim/profiles``.

Usage: ``python -m sim.make_default_profiles [--out DIR]``. Each profile's
``meta.command`` records this command line. Measured profiles from the
engine's profiler replace these files once they exist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.cost_model import PROFILES_DIR, make_roofline_profile, profile_name
from sim.profile import write_profile

MODELS, GPUS = ("llama-3.2-1b", "llama-3.2-3b"), ("h100", "h200")
DEFAULTS = [(model, gpu, "bf16", "bf16") for model in MODELS for gpu in GPUS]  # (model, gpu, weights, kv)


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
