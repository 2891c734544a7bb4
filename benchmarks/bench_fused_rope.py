"""RoPE + KV write inside the qkv GEMV (``kernels.gemv_rope``) against its own kernel, at batch-1 decode.

``python -m benchmarks.bench_fused_rope --out DIR [--engine]`` (CUDA only; nothing runs at import):

1. The decode chain of every layer of Llama-3.2-1B and 3B shapes with random bf16 weights, as the engine's
   fused batch-1 path runs it (qkv GEMV with the input norm, RoPE + KV write, paged decode attention over a
   ``--ctx``-token context, o GEMV + residual, gate/up GEMV with the norm and SwiGLU, down GEMV + residual;
   PDL on Hopper), in one CUDA graph per variant: RoPE + KV write as their own kernel (the reference, timed
   first and last; and that kernel triggering the next one after its stores), then inside the qkv GEMV
   with the next kernel triggered early (as every decode kernel does) or after the GEMV's stores. Replay
   time (CUDA events, median) and the final residual's largest difference from the reference's.
2. ``--engine``: the engine's batch-1 decode with ``fused_rope`` off, on, off, on (``benchmarks.decode_ab``,
   lookahead on).

Rows go to ``DIR/fused_rope.csv``; progress lines to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import measure_copy_bandwidth, row, time_cuda
from kernels.attention_decode import paged_decode_attention
from kernels.gemv_bf16 import default_config
from kernels.gemv_fused import gemv_residual, gemv_rms_norm, glu_config
from kernels.gemv_rope import gemv_rms_norm_rope, rope_config
from kernels.pdl import pdl_supported
from kernels.rope import rope_cos_sin
from kernels.rope_kv_write import rope_and_write_kv

BENCH = "fused_rope"
BLOCK = 16
VARIANTS = ("separate", "separate, late trigger", "fused", "fused, late trigger")


def _log(msg: str) -> None:
    print(f"[bench_fused_rope] {msg}", flush=True)


class Chain:
    """Random layers of one model's shapes and the inputs of one batch-1 decode step at ``ctx``."""

    def __init__(self, model: str, ctx: int, pdl: bool) -> None:
        cfg = json.loads(Path(f"sim/models/{model}.json").read_text())
        self.h, self.inter = cfg["hidden_size"], cfg["intermediate_size"]
        self.hq, self.hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.d = cfg.get("head_dim", self.h // self.hq)
        self.layers = cfg["num_hidden_layers"]
        self.eps, self.pdl, dev = cfg["rms_norm_eps"], pdl, torch.device("cuda")
        q_size, kv_size = self.hq * self.d, self.hkv * self.d
        self.q_size, self.kv_size = q_size, kv_size
        g = torch.Generator(device=dev).manual_seed(0)

        def rnd(*shape: int, scale: float = 0.02) -> torch.Tensor:
            return (torch.randn(*shape, generator=g, device=dev) * scale).to(torch.bfloat16)

        self.w = [{"qkv": rnd(q_size + 2 * kv_size, self.h), "o": rnd(self.h, q_size),
                   "gu": rnd(2 * self.inter, self.h), "down": rnd(self.h, self.inter),
                   "nw_in": rnd(self.h, scale=0.1) + 1, "nw_post": rnd(self.h, scale=0.1) + 1}
                  for _ in range(self.layers)]
        nblocks = -(-ctx // BLOCK)
        self.kc = [rnd(nblocks, BLOCK, self.hkv, self.d, scale=1.0) for _ in range(self.layers)]
        self.vc = [rnd(nblocks, BLOCK, self.hkv, self.d, scale=1.0) for _ in range(self.layers)]
        self.tables = torch.arange(nblocks, dtype=torch.int32, device=dev)[None, :]
        self.lens = torch.tensor([ctx], dtype=torch.int32, device=dev)
        self.pos = torch.tensor([ctx - 1], device=dev)
        self.slot = torch.tensor([ctx - 1], dtype=torch.long, device=dev)
        self.cos_sin = rope_cos_sin(self.d, ctx, cfg.get("rope_theta", 500000.0), cfg.get("rope_scaling")).to(dev)
        self.r0 = rnd(1, self.h, scale=1.0)
        self.cfgs = {name: dataclasses.replace(default_config(w.shape[0], w.shape[1], dev), pdl=pdl)
                     for name, w in self.w[0].items() if w.dim() == 2}
        self.cfgs["gu"] = glu_config(self.cfgs["gu"])
        self.cfgs["qkv"] = rope_config(self.cfgs["qkv"])  # the same launch shape for all three variants

    def run(self, variant: str) -> torch.Tensor:
        """One decode step through every layer, RoPE + KV write as ``variant`` says."""
        r = self.r0
        for i, w in enumerate(self.w):
            if variant.startswith("separate"):
                qkv = gemv_rms_norm(r, w["nw_in"], self.eps, w["qkv"], config=self.cfgs["qkv"])
            else:
                qkv = gemv_rms_norm_rope(r, w["nw_in"], self.eps, w["qkv"], self.pos, self.cos_sin, self.kc[i],
                                         self.vc[i], self.slot, self.hq, config=self.cfgs["qkv"],
                                         late_trigger=variant.endswith("late trigger"))
            q = qkv[:, :self.q_size].reshape(1, self.hq, self.d)
            if variant.startswith("separate"):
                k = qkv[:, self.q_size:self.q_size + self.kv_size].reshape(1, self.hkv, self.d)
                v = qkv[:, self.q_size + self.kv_size:].reshape(1, self.hkv, self.d)
                rope_and_write_kv(q, k, v, self.pos, self.cos_sin, self.kc[i], self.vc[i], self.slot, pdl=self.pdl,
                                  late_trigger=variant.endswith("late trigger"))
            attn = paged_decode_attention(q, self.kc[i], self.vc[i], self.tables, self.lens, self.d ** -0.5,
                                          pdl=self.pdl)
            r = gemv_residual(attn.reshape(1, self.q_size), w["o"], r, config=self.cfgs["o"])
            act = gemv_rms_norm(r, w["nw_post"], self.eps, w["gu"], config=self.cfgs["gu"], glu=True)
            r = gemv_residual(act, w["down"], r, config=self.cfgs["down"])
        return r

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for w in self.w for t in w.values())

    def timed(self, variant: str) -> tuple[float, torch.Tensor]:
        """(seconds per graph replay of the step, its output)."""
        self.run(variant)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.run(variant)
        t = time_cuda(graph.replay, iters=100, warmup=10)
        graph.replay()
        torch.cuda.synchronize()
        return t, out.clone()


def kernel_rows(model: str, ctx: int, bw: float) -> list[dict]:
    """Rows of the three variants of one model's chain."""
    pdl = pdl_supported(torch.device("cuda"))
    chain = Chain(model, ctx, pdl)
    floor_us = chain.weight_bytes() / bw * 1e6
    case0 = f"{model} ctx={ctx} {chain.layers} layers"
    base_t, base_out = chain.timed("separate")
    _log(f"{case0}: RoPE + KV write separate {base_t * 1e6:.1f} us per step (layer weights / copy bw "
         f"{floor_us:.1f} us), pdl {pdl}")
    rows = []
    for variant in VARIANTS[1:]:
        try:
            t, out = chain.timed(variant)
        except Exception as e:  # a failed variant is a row, not the end of the run
            _log(f"{case0} {variant} failed: {type(e).__name__}: {str(e)[:300]}")
            rows.append(row(BENCH, f"{case0} {variant}", float("nan"), "us", reference=f"error: {type(e).__name__}"))
            continue
        diff = ((out.float() - base_out.float()).abs().max() / base_out.float().abs().max()).item()
        _log(f"{case0} {variant}: {t * 1e6:.1f} us ({t / base_t - 1:+.1%}), max |diff| / max |ref| {diff:.2e}")
        rows += [row(BENCH, f"{case0} {variant}", t * 1e6, "us", "RoPE + KV write separate", base_t * 1e6,
                     "layer weights / copy bw", floor_us),
                 row(BENCH, f"{case0} {variant} max |diff| / max |ref|", diff, "ratio")]
    end_t, _ = chain.timed("separate")
    _log(f"{case0}: separate again {end_t * 1e6:.1f} us")
    rows.append(row(BENCH, f"{case0} separate", base_t * 1e6, "us", "the same, timed last", end_t * 1e6,
                    "layer weights / copy bw", floor_us))
    del chain
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--ctx", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--models", nargs="+", default=["llama-3.2-1b", "llama-3.2-3b"])
    p.add_argument("--engine", action="store_true", help="then the engine's batch-1 decode A/B")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bw = measure_copy_bandwidth()
    _log(f"copy bandwidth {bw / 1e12:.2f} TB/s on {torch.cuda.get_device_name()}")
    rows = [row(BENCH, "copy bandwidth", bw / 1e9, "GB/s")]
    for model in args.models:
        for ctx in args.ctx:
            rows += kernel_rows(model, ctx, bw)
            pd.DataFrame(rows).to_csv(out / "fused_rope.csv", index=False)
    if args.engine:
        from benchmarks.decode_ab import decode_variants

        flags = ({"fused_rope": False}, {"fused_rope": True}) * 2
        rows += decode_variants(tuple({**v, "decode_lookahead": True} for v in flags))
    pd.DataFrame(rows).to_csv(out / "fused_rope.csv", index=False)


if __name__ == "__main__":
    main()
