"""GPU benchmark of the paged attention / KV-cache kernels (CUDA only; nothing runs at import).

* Correctness on the GPU first ("attention_check" rows): every kernel against its PyTorch reference,
  including the hardware fp32 -> fp8 cast of write_kv that the CPU interpreter cannot check.
  value = max |out - ref| / max |ref| (write_kv: max error / quantisation bound), ref_value = tolerance.
* Decode attention, Llama-3.2 1B (32 q / 8 kv heads, head_dim 64) and 3B (24 / 8 / 128), batch 1..256,
  context 512..32k: achieved K/V bytes/s against the measured device-copy bandwidth, and time against
  SDPA on pre-gathered contiguous K/V (the gather is not timed).
* Decode with bf16 vs fp8 vs int8 KV: time, with the bf16 kernel's time as reference.
* Decode launch shapes (``kernels.decode_launch.DecodeConfig``) on three long-context shapes against the
  default shape, and the default launched with programmatic dependent launch against without.
* Prefill attention (causal, no prefix: 8 x 2048 and 1 x 8192; plus one chunk over a cached prefix):
  TFLOP/s against the measured bf16 matmul peak and SDPA's flash backend.

Times come from CUDA graphs of many calls (no Python launch overhead; the engine graphs decode too), each
call reading a different copy of the data when one copy would fit in L2. A failing case is recorded as a
row with value NaN and its error in ``reference``, and the run goes on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.attention_setup import (
    BLOCK,
    DTYPES,
    MODELS,
    Paged,
    attn_graph_time,
    kv_bytes,
    num_copies,
    rand_cache,
    safe,
)
from benchmarks.bench_decode_launch import config_rows, mixed_rows, split_rows
from benchmarks.common import measure_copy_bandwidth, measure_matmul_peak, row, time_cuda
from kernels.attention_decode import paged_decode_attention, paged_decode_attention_ref
from kernels.attention_prefill import paged_prefill_attention, paged_prefill_attention_ref
from kernels.kv_write import write_kv
from kernels.rope import apply_rope_, apply_rope_ref, rope_cos_sin

_TOL = 2e-2  # bf16 q.k and P.v products with fp32 accumulation, bf16 output


def _sdpa_decode_time(model: str, batch: int, ctx: int) -> tuple[float, str]:
    hq, hkv, d = MODELS[model]
    copies = num_copies(kv_bytes(model, batch * ctx, torch.bfloat16))
    q = torch.randn(batch, hq, 1, d, device="cuda", dtype=torch.bfloat16)
    kv = [(torch.randn(batch, hkv, ctx, d, device="cuda", dtype=torch.bfloat16),
           torch.randn(batch, hkv, ctx, d, device="cuda", dtype=torch.bfloat16)) for _ in range(copies)]
    try:
        t = attn_graph_time([lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True) for k, v in kv])
        return t, "sdpa (enable_gqa, contiguous KV)"
    except Exception:  # SDPA without GQA support: give it K/V expanded to all q heads (reads more bytes)
        kv = [(k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)) for k, v in kv[:4]]
        t = attn_graph_time([lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v) for k, v in kv])
        return t, "sdpa (KV expanded to Hq)"


def _decode_time(model: str, batch: int, ctx: int, dtype: torch.dtype, merge: bool = False) -> float:
    """Graph time of the decode kernel; ``merge``: split sequences merged in the partition kernel
    (``merge_counters``), checked against the reduction kernel's output first."""
    hq, hkv, d = MODELS[model]
    paged = Paged(model, batch, ctx, dtype, num_copies(kv_bytes(model, batch * ctx, dtype)))
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    counters = torch.zeros(batch * hkv, dtype=torch.int32, device="cuda") if merge else None
    if merge:
        args = (q, paged.k_cache, paged.v_cache, paged.tables[0], paged.seq_lens, d**-0.5, paged.k_scale,
                paged.v_scale)
        want = paged_decode_attention(*args)
        got = paged_decode_attention(*args, merge_counters=counters)
        if not torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2) or counters.any():
            raise AssertionError(f"merged decode attention differs from the reduction kernel's ({model} B={batch} "
                                 f"ctx={ctx}): max diff {(got.float() - want.float()).abs().max().item():.3g}")
    return attn_graph_time([
        lambda bt=bt: paged_decode_attention(q, paged.k_cache, paged.v_cache, bt, paged.seq_lens, d**-0.5,
                                             paged.k_scale, paged.v_scale, out=out, merge_counters=counters)
        for bt in paged.tables])


def _decode_rows(model: str, batch: int, ctx: int, copy_bw: float, bf16_times: dict) -> list[dict]:
    t = _decode_time(model, batch, ctx, torch.bfloat16)
    bf16_times[(model, batch, ctx)] = t
    ref_t, ref_name = _sdpa_decode_time(model, batch, ctx)
    case = f"{model} bf16 B={batch} ctx={ctx}"
    gbs = kv_bytes(model, batch * ctx, torch.bfloat16) / t / 1e9
    merged = _decode_time(model, batch, ctx, torch.bfloat16, merge=True)
    return [row("decode_bw", case, gbs, "GB/s", ceiling="copy_bw", ceiling_value=copy_bw / 1e9),
            row("decode_time", case, t * 1e6, "us", reference=ref_name, ref_value=ref_t * 1e6),
            row("decode_merged_time", case, merged * 1e6, "us", reference="the same kernel + reduction kernel",
                ref_value=t * 1e6),
            row("decode_merged_bw", case, kv_bytes(model, batch * ctx, torch.bfloat16) / merged / 1e9, "GB/s",
                ceiling="copy_bw", ceiling_value=copy_bw / 1e9)]


def _quant_rows(model: str, batch: int, ctx: int, name: str, copy_bw: float, bf16_times: dict) -> list[dict]:
    dtype = DTYPES[name]
    t = _decode_time(model, batch, ctx, dtype)
    if (model, batch, ctx) not in bf16_times:
        bf16_times[(model, batch, ctx)] = _decode_time(model, batch, ctx, torch.bfloat16)
    case = f"{model} {name} B={batch} ctx={ctx}"
    gbs = kv_bytes(model, batch * ctx, dtype) / t / 1e9
    return [row("decode_kv_dtype", case, t * 1e6, "us", reference="bf16 KV kernel",
                ref_value=bf16_times[(model, batch, ctx)] * 1e6),
            row("decode_bw", case, gbs, "GB/s", ceiling="copy_bw", ceiling_value=copy_bw / 1e9)]


def _prefill_rows(model: str, batch: int, new: int, ctx: int, dtype: torch.dtype, peak: float) -> list[dict]:
    hq, hkv, d = MODELS[model]
    paged = Paged(model, batch, ctx, dtype, 1)
    q = torch.randn(batch * new, hq, d, device="cuda", dtype=torch.bfloat16)
    cu = torch.arange(0, batch + 1, device="cuda", dtype=torch.int32) * new
    pairs = batch * sum(p + 1 for p in range(ctx - new, ctx))  # causal query-key pairs
    flops = 4 * d * hq * pairs
    t = time_cuda(lambda: paged_prefill_attention(q, paged.k_cache, paged.v_cache, paged.tables[0], cu,
                                                  paged.seq_lens, d**-0.5, paged.k_scale, paged.v_scale),
                  iters=10, warmup=2)
    ref_name, ref_tf = "", float("nan")
    if new == ctx and dtype == torch.bfloat16:
        qs = q.view(batch, new, hq, d).transpose(1, 2).contiguous()
        ks = torch.randn(batch, hkv, ctx, d, device="cuda", dtype=torch.bfloat16)
        vs = torch.randn_like(ks)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            try:
                rt = time_cuda(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True),
                               iters=10, warmup=2)
                ref_name = "sdpa flash (enable_gqa)"
            except Exception:
                ke, ve = ks.repeat_interleave(hq // hkv, 1), vs.repeat_interleave(hq // hkv, 1)
                rt = time_cuda(lambda: F.scaled_dot_product_attention(qs, ke, ve, is_causal=True),
                               iters=10, warmup=2)
                ref_name = "sdpa flash (KV expanded)"
        ref_tf = flops / rt / 1e12
    name = {v: k for k, v in DTYPES.items()}[dtype]
    case = f"{model} {name} {batch}x{new}" + ("" if new == ctx else f" on ctx {ctx}")
    return [row("prefill_tflops", case, flops / t / 1e12, "TFLOP/s", reference=ref_name, ref_value=ref_tf,
                ceiling="bf16 matmul peak", ceiling_value=peak / 1e12)]


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def _check_rows(model: str, name: str, prefill: bool) -> list[dict]:
    """Mixed-length batch: decode (split and unsplit) and optionally prefill against the references."""
    hq, hkv, d = MODELS[model]
    dtype = DTYPES[name]
    lens = [1, 17, 300, 1000]
    paged = Paged(model, len(lens), max(lens), dtype, 1)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    args = (paged.k_cache, paged.v_cache, paged.tables[0])
    q = torch.randn(len(lens), hq, d, device="cuda", dtype=torch.bfloat16)
    ref = paged_decode_attention_ref(q, *args, seq_lens, d**-0.5, paged.k_scale, paged.v_scale)
    rows = []
    for splits in ((None, 1) if dtype == torch.bfloat16 else (3,)):
        out = torch.full_like(q, float("nan"))
        paged_decode_attention(q, *args, seq_lens, d**-0.5, paged.k_scale, paged.v_scale, splits, out=out)
        rows.append(row("attention_check", f"decode {model} {name} splits={splits}", _rel_err(out, ref),
                        "max_rel", reference="tolerance", ref_value=_TOL))
    if prefill:
        new = [1, 17, 77, 1000]
        qp = torch.randn(sum(new), hq, d, device="cuda", dtype=torch.bfloat16)
        cu = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
        pargs = (qp, *args, cu, seq_lens, d**-0.5, paged.k_scale, paged.v_scale)
        out = torch.full_like(qp, float("nan"))
        paged_prefill_attention(*pargs, out=out)
        rows.append(row("attention_check", f"prefill {model} {name}", _rel_err(out, paged_prefill_attention_ref(
            *pargs)), "max_rel", reference="tolerance", ref_value=_TOL))
    return rows


def _kv_write_rows(head_dim: int) -> list[dict]:
    """write_kv on the GPU: dequantised error / bound (<= 1 passes; the bound as in tests/kernels)."""
    rows = []
    x = torch.randn(37, 8, head_dim, device="cuda") * torch.logspace(-3, 2, 37, device="cuda")[:, None, None]
    x = x.to(torch.bfloat16)
    slots = torch.randperm(64, device="cuda")[:37]
    for name, dtype in DTYPES.items():
        kc, ks = rand_cache((4, BLOCK, 8, head_dim), dtype)
        vc, vs = rand_cache((4, BLOCK, 8, head_dim), dtype)
        write_kv(x, x, kc, vc, slots, ks, vs)
        codes = kc.view(-1, 8, head_dim)[slots].float()
        if ks is None:
            ratio = float((codes - x.float()).abs().max())  # bf16 store is exact
        else:
            scale = ks.view(-1, 8)[slots][..., None]
            bound = scale * 0.5 * (1 + 1e-5) if dtype == torch.int8 else x.float().abs() * 2**-4 + scale * 2**-10
            ratio = float(((codes * scale - x.float()).abs() / bound).max())
        rows.append(row("attention_check", f"write_kv {name} D={head_dim}", ratio, "err/bound",
                        reference="pass if <=", ref_value=1.0 if ks is not None else 0.0))
    return rows


def _rope_rows() -> list[dict]:
    rows = []
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    for model, (hq, hkv, d) in MODELS.items():
        cos_sin = rope_cos_sin(d, 131072, 500000.0, scaling, device="cuda")
        qkv = torch.randn(4096, hq + 2 * hkv, d, device="cuda", dtype=torch.bfloat16)
        pos = torch.randint(0, 131072, (4096,), device="cuda")
        ref = qkv.clone()
        apply_rope_(qkv[:, :hq], qkv[:, hq:hq + hkv], pos, cos_sin)
        apply_rope_ref(ref[:, :hq], ref[:, hq:hq + hkv], pos, cos_sin)
        rows.append(row("attention_check", f"rope {model}", _rel_err(qkv, ref), "max_rel",
                        reference="tolerance", ref_value=2**-7))
        t = time_cuda(lambda c=cos_sin, x=qkv, p=pos, hq=hq, hkv=hkv: apply_rope_(x[:, :hq], x[:, hq:hq + hkv], p, c))
        nbytes = 2 * 4096 * (hq + hkv) * d * 2
        rows.append(row("rope_bw", f"{model} T=4096", nbytes / t / 1e9, "GB/s"))
    return rows


def run(quick: bool = False) -> list[dict]:
    """Run the attention benchmarks (CUDA required). ``quick`` runs a tiny subset."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench_attention needs a CUDA device")
    torch.manual_seed(0)
    rows: list[dict] = []
    copy_bw, peak = measure_copy_bandwidth(), measure_matmul_peak()
    print(f"[bench_attention] copy bandwidth {copy_bw / 1e9:.0f} GB/s, bf16 matmul peak {peak / 1e12:.0f} TFLOP/s",
          flush=True)
    models = ["1B"] if quick else ["1B", "3B"]
    for model in models:
        for name in (["bf16", "int8"] if quick else list(DTYPES)):
            safe(rows, "attention_check", f"{model} {name}", "max_rel",
                  lambda m=model, n=name: _check_rows(m, n, prefill=m == "1B" or n == "bf16"))
    for d in (64,) if quick else (64, 128):
        safe(rows, "attention_check", f"write_kv D={d}", "err/bound", lambda d=d: _kv_write_rows(d))
    if not quick:
        safe(rows, "attention_check", "rope", "max_rel", _rope_rows)

    decode_cases = [(8, 2048), (1, 32768)] if quick else [
        (1, 512), (1, 4096), (1, 32768), (8, 8192), (32, 2048), (64, 4096), (256, 512), (256, 2048)]
    bf16_times: dict = {}
    for model in models:
        for batch, ctx in decode_cases:
            safe(rows, "decode", f"{model} bf16 B={batch} ctx={ctx}", "us",
                  lambda m=model, b=batch, c=ctx: _decode_rows(m, b, c, copy_bw, bf16_times))
    for model in models:
        safe(rows, "decode_mixed", f"{model} B=64 mixed contexts", "us", lambda m=model: mixed_rows(m, copy_bw))
    for model, batch, ctx in (("1B", 1, 32768), ("1B", 8, 8192), ("3B", 1, 32768)):
        safe(rows, "decode_config", f"{model} B={batch} ctx={ctx}", "us",
              lambda m=model, b=batch, c=ctx: config_rows(m, b, c, copy_bw))
    for ctx, table in ((256, 8192), (32768, 32768)):
        safe(rows, "decode_splits", f"1B B=1 ctx={ctx}", "us", lambda c=ctx, t=table: split_rows("1B", c, t, copy_bw))
    quant_cases = [(1, 32768)] if quick else [(1, 32768), (16, 8192), (64, 4096)]
    for model in models:
        for batch, ctx in quant_cases:
            for name in ("fp8", "int8"):
                safe(rows, "decode_kv_dtype", f"{model} {name} B={batch} ctx={ctx}", "us",
                      lambda m=model, b=batch, c=ctx, n=name: _quant_rows(m, b, c, n, copy_bw, bf16_times))

    prefill_cases = [(1, 2048, 2048)] if quick else [(8, 2048, 2048), (1, 8192, 8192), (1, 2048, 8192)]
    for model in models:
        for batch, new, ctx in prefill_cases:
            safe(rows, "prefill_tflops", f"{model} bf16 {batch}x{new}", "TFLOP/s",
                  lambda m=model, b=batch, n=new, c=ctx: _prefill_rows(m, b, n, c, torch.bfloat16, peak))
    if not quick:
        for name in ("fp8", "int8"):
            safe(rows, "prefill_tflops", f"1B {name} 8x2048", "TFLOP/s",
                  lambda n=name: _prefill_rows("1B", 8, 2048, 2048, DTYPES[n], peak))
    return rows
