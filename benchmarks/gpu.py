"""The one GPU benchmark: checks and times kernels and the engine in one device call.

    python -m benchmarks.gpu --out "$OUT" [--sections attention gemm engine spec] [--quick]

Writes OUT/results.csv (one row per figure, each beside its reference and
ceiling measured in the same run) and prints progress; every section is
wrapped so one failure is recorded, never hides the rest.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import measure_copy_bandwidth, measure_matmul_peak, row

SECTIONS = ("attention", "gemm", "engine", "spec")


def environment() -> list[dict]:
    props = torch.cuda.get_device_properties(0)
    import triton

    print(f"device {props.name}, {props.total_memory / 2**30:.1f} GiB, SMs {props.multi_processor_count}; "
          f"torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}", flush=True)
    bw = measure_copy_bandwidth()
    peak = measure_matmul_peak()
    print(f"device-copy bandwidth {bw / 1e12:.3f} TB/s, bf16 matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    return [row("ceiling", "device-copy bandwidth (1 GiB, read+write)", bw / 1e12, "TB/s"),
            row("ceiling", "bf16 matmul 8192^3", peak / 1e12, "TFLOP/s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = environment()
    for name in args.sections:
        t0 = time.perf_counter()
        print(f"=== {name}", flush=True)
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            rows += module.run(quick=args.quick)
        except Exception as err:  # noqa: BLE001 - record and go on
            traceback.print_exc()
            rows.append(row(name, "section failed", float("nan"), "", reference=f"{type(err).__name__}: {err}"))
        print(f"=== {name} took {time.perf_counter() - t0:.0f} s", flush=True)
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_colwidth", 60):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
