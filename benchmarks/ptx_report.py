"""Registers, spills and instruction counts of the decode attention kernel for Hopper, compiled on the CPU.

    python -m benchmarks.ptx_report [--arch 90]

No GPU needed: Triton compiles the partition kernel to PTX for ``sm_<arch>`` and the ``ptxas`` Triton uses
for that architecture assembles it with ``-v``. Prints one line per launch shape (the
shapes ``kernels.decode_launch`` uses for Llama-3.2-1B and -3B heads), with and without row groups.
The host's Triton may differ from the GPU machine's, so the numbers are indicative.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.attention_decode import _decode_partition_kernel

_POINTERS = {"po_ptr": "*fp32", "pm_ptr": "*fp32", "pl_ptr": "*fp32", "bt_ptr": "*i32", "seq_lens_ptr": "*i32",
             "group_ptr": "*i32"}
# (label, head_dim, GQA group, block_n, warps, stages): the default launch shapes of kernels.decode_launch
SHAPES = [("1B", 64, 4, 128, 4, 3), ("3B small batch", 128, 3, 128, 8, 2), ("3B", 128, 3, 64, 4, 3)]


def _ptxas(arch: int) -> str:
    """The ptxas Triton itself assembles ``sm_<arch>`` with (else the newest one it ships)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except (ImportError, AttributeError):
        folder = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        names = sorted(n for n in os.listdir(folder) if n.startswith("ptxas"))
        if not names:
            raise FileNotFoundError(f"no ptxas under {folder}") from None
        return os.path.join(folder, names[-1])  # 'ptxas-blackwell' (the newest) sorts after 'ptxas'


def compile_report(consts: dict, warps: int, stages: int, arch: int) -> str:
    """``ptxas -v``'s resource line and the PTX instruction count of one specialisation."""
    fn = _decode_partition_kernel
    names = fn.arg_names
    types = {n: ("constexpr" if n in consts else _POINTERS.get(n, "*bf16" if n.endswith("_ptr") else "i32"))
             for n in names}
    types["qk_scale"] = "fp32"
    src = ASTSource(fn, types, constexprs={(names.index(k),): v for k, v in consts.items()})
    ptx = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps,
                                                                           "num_stages": stages}).asm["ptx"]
    skip = ("//", ".", "$", "{", "}")  # comments, directives, labels, braces
    count = sum(1 for line in ptx.splitlines() if line.strip() and not line.strip().startswith(skip))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run([_ptxas(arch), f"-arch=sm_{arch}a", "-v", f.name, "-o", os.devnull], capture_output=True,
                         text=True, check=False)
    os.unlink(f.name)
    usage = [m.group(0) for m in re.finditer(r"Used \d+ registers.*", out.stderr)]
    return f"{usage[-1] if usage else out.stderr.strip()[-200:]}; {count} PTX instructions"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (Hopper)")
    args = ap.parse_args()
    for label, d, group, block_n, warps, stages in SHAPES:
        base = {"GROUP": group, "BLOCK_G": 16, "HEAD_DIM": d, "BLOCK_D": d, "BLOCK_N": block_n, "SPLIT": True,
                "QUANT": False, "DOT_DT": tl.bfloat16, "PDL": True}
        for rows in (1, 16 // group):
            consts = dict(base, MAX_ROWS=rows, GROUPED=rows > 1)
            what = f"groups of {rows}" if rows > 1 else "no groups"
            report = compile_report(consts, warps, stages, args.arch)
            print(f"{label:15s} n{block_n}w{warps}s{stages} {what:12s} {report}", flush=True)


if __name__ == "__main__":
    main()
