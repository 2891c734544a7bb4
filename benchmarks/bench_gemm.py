"""GPU benchmark of the linear-layer and fused elementwise kernels (CUDA only; nothing runs at import).

* Batch-1 GEMV on the Llama-3.2 1B / 3B layer shapes: INT4 (group 128, asymmetric), INT8 weight-only and the
  bf16 GEMV kernel, each against bf16 ``F.linear`` and against the bandwidth floor of the bytes it must read
  (weights + scales + zeros + x + out, divided by the measured device-copy bandwidth).
* W8A8 GEMM at prefill sizes (M = 2048, 8192) in TOPS, against bf16 ``F.linear`` TFLOPS and the measured bf16
  matmul peak.
* RMSNorm, fused add + RMSNorm and SiLU-and-mul in GB/s against eager PyTorch and the copy bandwidth.

Times come from CUDA graphs of many calls (no Python launch overhead, which the engine also removes with
graphs), rotating over enough weight copies that the weights cannot sit in L2 between calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import graph_time, measure_copy_bandwidth, measure_matmul_peak, row
from kernels.activation import silu_and_mul, silu_and_mul_ref
from kernels.gemv_bf16 import gemv_bf16
from kernels.norm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref
from kernels.pdl import pdl_supported
from kernels.quant_linear import (
    Int4Weight,
    Int8Weight,
    int4_linear,
    int4_linear_ref,
    int8_linear,
    int8_linear_ref,
    quantize_int4,
    quantize_int8,
)
from kernels.w8a8 import quantize_w8a8, w8a8_linear

# name -> (hidden, intermediate, q heads, kv heads, head dim, vocab)
_MODELS = {"1B": (2048, 8192, 32, 8, 64, 128256), "3B": (3072, 8192, 24, 8, 128, 128256)}
_ROTATE_BYTES = 160 << 20  # > 3x an H100's 50 MB L2


def _layers(model: str) -> list[tuple[str, int, int]]:
    hidden, inter, hq, hkv, d, vocab = _MODELS[model]
    return [("qkv", (hq + 2 * hkv) * d, hidden), ("o", hidden, hq * d), ("gate_up", 2 * inter, hidden),
            ("down", hidden, inter), ("lm_head", vocab, hidden)]


def _graph_time(calls: list[Callable[[], object]]) -> float:
    return graph_time(calls, iters=20, warmup=3)


def _safe(rows: list[dict], bench: str, case: str, unit: str, fn: Callable[[], dict]) -> None:
    try:
        r = fn()
    except Exception as e:  # one failing case must not abort the rest
        print(f"[bench_gemm] {bench} {case} FAILED: {e!r}", flush=True)
        r = row(bench, case, float("nan"), unit)
    else:
        print(f"[bench_gemm] {bench:12s} {case:40s} {r['value']:10.2f} {unit:6s} ref {r['ref_value']:10.2f} "
              f"ceiling {r['ceiling_value']:10.2f}", flush=True)
    rows.append(r)


def _nbytes(*ts: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _copies(nbytes: int) -> int:
    return max(1, math.ceil(_ROTATE_BYTES / max(nbytes, 1)))


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()


def _gemv_cases(rows: list[dict], model: str, layer: str, n: int, k: int, bw: float) -> None:
    case = f"{model}/{layer} N={n} K={k} M=1"
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
    ws = [w] + [w.clone() for _ in range(_copies(_nbytes(w)) - 1)]
    t_ref = _graph_time([lambda wi=wi: F.linear(x, wi) for wi in ws])
    io = _nbytes(x, out)

    def bf16_case() -> dict:
        if _rel_err(gemv_bf16(x, w), F.linear(x, w)) > 1e-2:
            raise RuntimeError("gemv_bf16 disagrees with F.linear")
        t = _graph_time([lambda wi=wi: gemv_bf16(x, wi, out=out) for wi in ws])
        return row("gemv_bf16", case, t * 1e6, "us", "bf16 F.linear", t_ref * 1e6, "bf16-bytes floor",
                   (_nbytes(w) + io) / bw * 1e6)

    def int4_case(pdl: bool, tag: str) -> dict:
        q = quantize_int4(w, 128)
        if _rel_err(int4_linear(x, q), int4_linear_ref(x, q)) > 1e-2:
            raise RuntimeError("int4_linear disagrees with int4_linear_ref")
        size = _nbytes(q.packed, q.scales, q.zeros)
        qs = [q] + [Int4Weight(q.packed.clone(), q.scales.clone(), q.zeros.clone(), 128)
                    for _ in range(_copies(size) - 1)]
        t = _graph_time([lambda qi=qi: int4_linear(x, qi, out=out, pdl=pdl) for qi in qs])
        return row(f"gemv_int4{tag}", case, t * 1e6, "us", "bf16 F.linear", t_ref * 1e6, "quantised-bytes floor",
                   (size + io) / bw * 1e6)

    def int8_case(pdl: bool, tag: str) -> dict:
        q = quantize_int8(w)
        if _rel_err(int8_linear(x, q), int8_linear_ref(x, q)) > 1e-2:
            raise RuntimeError("int8_linear disagrees with int8_linear_ref")
        size = _nbytes(q.qweight, q.scale)
        qs = [q] + [Int8Weight(q.qweight.clone(), q.scale.clone()) for _ in range(_copies(size) - 1)]
        t = _graph_time([lambda qi=qi: int8_linear(x, qi, out=out, pdl=pdl) for qi in qs])
        return row(f"gemv_int8{tag}", case, t * 1e6, "us", "bf16 F.linear", t_ref * 1e6, "quantised-bytes floor",
                   (size + io) / bw * 1e6)

    # As the engine's decode graphs launch them: with programmatic dependent launch on Hopper (each GEMV of
    # the back-to-back chain starts while the one before drains), and without it everywhere.
    for pdl in (False, True) if pdl_supported(x.device) else (False,):
        tag = "_pdl" if pdl else ""
        _safe(rows, f"gemv_int4{tag}", case, "us", lambda p=pdl, t=tag: int4_case(p, t))
        _safe(rows, f"gemv_int8{tag}", case, "us", lambda p=pdl, t=tag: int8_case(p, t))
    _safe(rows, "gemv_bf16", case, "us", bf16_case)


def _w8a8_case(model: str, layer: str, m: int, n: int, k: int, peak: float) -> dict:
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    q = quantize_w8a8(w)
    if _rel_err(w8a8_linear(x, q), F.linear(x, w)) > 3e-2:
        raise RuntimeError("w8a8_linear disagrees with F.linear")
    flops = 2.0 * m * n * k
    t = _graph_time([lambda: w8a8_linear(x, q)])
    t_ref = _graph_time([lambda: F.linear(x, w)])
    return row("w8a8_gemm", f"{model}/{layer} M={m} N={n} K={k} (incl. act quant)", flops / t / 1e12, "TOPS",
               "bf16 F.linear TFLOPS", flops / t_ref / 1e12, "bf16 matmul peak TFLOPS", peak / 1e12)


def _elementwise_cases(rows: list[dict], bw: float, quick: bool) -> None:
    t_rows = 16384
    for h in (2048,) if quick else (2048, 3072):
        x = torch.randn(t_rows, h, device="cuda", dtype=torch.bfloat16)
        res = torch.randn_like(x)
        wt = torch.ones(h, device="cuda", dtype=torch.bfloat16)

        def norm_case(h: int = h, x: torch.Tensor = x, wt: torch.Tensor = wt) -> dict:
            nbytes = 2 * _nbytes(x)
            t = _graph_time([lambda: rms_norm(x, wt, 1e-5)])
            t_ref = _graph_time([lambda: rms_norm_ref(x, wt, 1e-5)])
            return row("rms_norm", f"T={t_rows} H={h}", nbytes / t / 1e9, "GB/s", "eager PyTorch GB/s",
                       nbytes / t_ref / 1e9, "copy bandwidth GB/s", bw / 1e9)

        def add_norm_case(h: int = h, x: torch.Tensor = x, res: torch.Tensor = res,
                          wt: torch.Tensor = wt) -> dict:
            nbytes = 4 * _nbytes(x)
            t = _graph_time([lambda: fused_add_rms_norm(x, res, wt, 1e-5)])
            t_ref = _graph_time([lambda: fused_add_rms_norm_ref(x, res, wt, 1e-5)])
            return row("fused_add_rms_norm", f"T={t_rows} H={h}", nbytes / t / 1e9, "GB/s",
                       "eager PyTorch GB/s", nbytes / t_ref / 1e9, "copy bandwidth GB/s", bw / 1e9)

        _safe(rows, "rms_norm", f"T={t_rows} H={h}", "GB/s", norm_case)
        _safe(rows, "fused_add_rms_norm", f"T={t_rows} H={h}", "GB/s", add_norm_case)

    def silu_case() -> dict:
        gu = torch.randn(8192, 2 * 8192, device="cuda", dtype=torch.bfloat16)
        nbytes = _nbytes(gu) * 3 // 2
        t = _graph_time([lambda: silu_and_mul(gu)])
        t_ref = _graph_time([lambda: silu_and_mul_ref(gu)])
        return row("silu_and_mul", "T=8192 I=8192", nbytes / t / 1e9, "GB/s", "eager PyTorch GB/s",
                   nbytes / t_ref / 1e9, "copy bandwidth GB/s", bw / 1e9)

    _safe(rows, "silu_and_mul", "T=8192 I=8192", "GB/s", silu_case)


def run(quick: bool = False) -> list[dict]:
    """Run every case; a failing case records a NaN row and the error is printed.

    Args:
        quick: only the 1B model's shapes and fewer prefill cases.

    Returns:
        Rows of benchmarks.common.row.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("bench_gemm needs a CUDA device")
    torch.manual_seed(0)
    rows: list[dict] = []
    bw = measure_copy_bandwidth()
    peak = measure_matmul_peak()
    rows.append(row("gemm_env", "device copy bandwidth", bw / 1e9, "GB/s"))
    rows.append(row("gemm_env", "bf16 matmul peak", peak / 1e12, "TFLOPS"))
    print(f"[bench_gemm] copy bandwidth {bw / 1e9:.0f} GB/s, bf16 matmul peak {peak / 1e12:.0f} TFLOPS")
    models = ("1B",) if quick else ("1B", "3B")
    for model in models:
        for layer, n, k in _layers(model):
            try:
                _gemv_cases(rows, model, layer, n, k, bw)
            except Exception as e:  # e.g. the F.linear reference itself
                print(f"[bench_gemm] gemv {model}/{layer} FAILED: {e!r}", flush=True)
                for bench in ("gemv_int4", "gemv_int8", "gemv_bf16"):
                    rows.append(row(bench, f"{model}/{layer} N={n} K={k} M=1", float("nan"), "us"))
            torch.cuda.empty_cache()
    for model in models:
        for layer, n, k in _layers(model)[:4]:
            if quick and layer != "gate_up":
                continue
            for m in (2048, 8192):
                case = f"{model}/{layer} M={m} N={n} K={k} (incl. act quant)"
                _safe(rows, "w8a8_gemm", case, "TOPS",
                      lambda m=m, n=n, k=k, layer=layer, model=model: _w8a8_case(model, layer, m, n, k, peak))
        torch.cuda.empty_cache()
    _elementwise_cases(rows, bw, quick)
    return rows
