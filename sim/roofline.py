"""Roofline model of one engine step of a Llama model: FLOPs and bytes per operator.

A step computes ``T`` tokens: prefill chunks (``q`` query tokens over ``ctx``
cached tokens each) and decodes (one token over a context of ``c`` tokens,
the new one included). Every operator's FLOPs and bytes are linear in a few
step features (``FEATURES``), so ``op_costs`` returns each operator as
coefficients (``OpCost``), and the same list drives the tables here and the
analytic ``RooflineCostModel`` in ``sim/cost_model.py``.

Per decoder layer (``count`` = num_layers): attn_norm, qkv_proj, rope, kv_write,
attention_prefill, attention_decode, o_proj, attn_residual, mlp_norm, gate_up,
silu_mul, down, mlp_residual. Per model (``count`` = 1): embedding, final_norm
(on all T tokens) and lm_head (on sampling positions only: one per decode and
one per prefill chunk that ends its sequence).

Conventions and approximations:

- GEMM FLOPs are 2 per multiply-add; weights are read once per step (at the
  weight dtype, scales included, see ``sim/model_spec.py``); activations are bf16.
- Attention FLOPs are 4 * head_dim * num_heads per (query, key) pair (QK^T and
  PV); prefill pairs are causal: ``q * ctx + q * (q + 1) / 2`` per chunk. Each
  sequence's KV (cached context plus, for prefill, the chunk's own tokens, which
  kv_write stored first) is read once at the KV dtype; Q is read and O written.
- Element-wise FLOP counts are rough (norm 4/element, SiLU-and-mul 5, RoPE 3) and
  do not matter: these ops are far below the ridge point. RoPE reads a cos and a
  sin table row (bf16, head_dim each) per token. kv_write reads K, V in bf16 and
  writes them at the KV dtype (quantising costs 3 FLOPs per element).
- lm_head is bf16 whatever the weight dtype, and writes fp32 logits.
- Every op is its own kernel (no fusion): an engine that fuses residual add and
  RMSNorm, or SiLU-and-mul into a GEMM, moves fewer activation bytes.
- An op's time is ``max(FLOPs / attainable compute, bytes / attainable bandwidth)``;
  GEMMs run at their weight format's tensor-core math, everything else at bf16.
  W8A8 activation quantisation kernels are not modelled.

``step_ops`` returns one row per operator kind (not expanded per layer): ``flops``,
``bytes`` and ``time_s`` are for one instance, ``total_*`` multiply by ``count``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sim.hardware import GPUSpec, get_gpu
from sim.model_spec import ACT_BYTES, ModelSpec, linear_bytes, weight_format

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

FEATURES = ("tokens", "prefill_tokens", "decodes", "samples", "prefill_pairs", "prefill_ctx", "decode_ctx")
Terms = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class OpCost:
    """One operator's cost as linear functions of the step features.

    Args:
        name: operator name.
        scope: 'layer' (runs once per decoder layer) or 'model' (once per step).
        kind: 'gemm', 'attention', 'elementwise' or 'gather'.
        compute: tensor-core math the FLOPs run at ('bf16', 'int8', 'fp8').
        trigger: feature that must be > 0 for the op to run at all.
        flops: ``(feature, FLOPs per unit)`` terms.
        bytes_const: bytes moved whenever the op runs (weights).
        bytes: ``(feature, bytes per unit)`` terms.
    """

    name: str
    scope: str
    kind: str
    compute: str
    trigger: str
    flops: Terms
    bytes_const: float
    bytes: Terms

    def runs(self, feats: Mapping[str, float]) -> bool:
        return feats[self.trigger] > 0

    def flops_at(self, feats: Mapping[str, float]) -> float:
        return sum(c * feats[k] for k, c in self.flops) if self.runs(feats) else 0.0

    def bytes_at(self, feats: Mapping[str, float]) -> float:
        return self.bytes_const + sum(c * feats[k] for k, c in self.bytes) if self.runs(feats) else 0.0


def op_costs(model: ModelSpec, weight_dtype: str = "bf16", kv_dtype: str = "bf16") -> list[OpCost]:
    """The step's operators as ``OpCost`` coefficients (see the module docstring)."""
    h, inter, a = model.hidden_size, model.intermediate_size, ACT_BYTES
    qd, kd = model.q_dim, model.kv_dim
    kvb = model.kv_bytes_per_token_layer(kv_dtype)
    quant_flops = 0.0 if kvb == 2 * kd * a else 3.0 * 2 * kd
    attn_flops = 4.0 * model.num_heads * model.head_dim
    gemm_compute = weight_format(weight_dtype).compute
    t = "tokens"

    def gemm(name: str) -> OpCost:
        n_in, n_out = model.layer_linears()[name]
        weights = linear_bytes(n_in, n_out, weight_dtype) + model.linear_bias_params(name) * a
        return OpCost(name, "layer", "gemm", gemm_compute, t, ((t, 2.0 * n_in * n_out),), weights,
                      ((t, (n_in + n_out) * a),))

    def elementwise(name: str, flops: float, per_token: float, const: float = 0.0) -> OpCost:
        return OpCost(name, "layer", "elementwise", "bf16", t, ((t, flops),), const, ((t, per_token),))

    norm = elementwise("attn_norm", 4.0 * h, 2 * h * a, h * a)
    residual = elementwise("attn_residual", 1.0 * h, 3 * h * a)
    layer = [
        norm,
        gemm("qkv_proj"),
        elementwise("rope", 3.0 * (qd + kd), 2 * (qd + kd) * a + 2 * model.head_dim * a),
        elementwise("kv_write", quant_flops, 2 * kd * a + kvb),
        OpCost("attention_prefill", "layer", "attention", "bf16", "prefill_tokens",
               (("prefill_pairs", attn_flops),), 0.0,
               (("prefill_tokens", 2 * qd * a + kvb), ("prefill_ctx", kvb))),
        OpCost("attention_decode", "layer", "attention", "bf16", "decodes",
               (("decode_ctx", attn_flops),), 0.0, (("decodes", 2 * qd * a), ("decode_ctx", kvb))),
        gemm("o_proj"),
        residual,
        replace(norm, name="mlp_norm"),
        gemm("gate_up"),
        elementwise("silu_mul", 5.0 * inter, 3 * inter * a),
        gemm("down"),
        replace(residual, name="mlp_residual"),
    ]
    vocab = model.vocab_size
    return [
        OpCost("embedding", "model", "gather", "bf16", t, (), 0.0, ((t, 2 * h * a),)),
        *layer,
        OpCost("final_norm", "model", "elementwise", "bf16", t, ((t, 4.0 * h),), h * a, ((t, 2 * h * a),)),
        OpCost("lm_head", "model", "gemm", "bf16", "samples", (("samples", 2.0 * h * vocab),),
               float(vocab * h * a), (("samples", h * a + vocab * 4),)),
    ]


def step_features(prefill: Iterable[Sequence[int]] = (), decode_ctx: Iterable[int] = ()) -> dict[str, int]:
    """Step features of a batch.

    Args:
        prefill: ``(q, ctx)`` or ``(q, ctx, samples)`` per chunk; ``samples``
            (default True) says whether the chunk ends its sequence and samples.
        decode_ctx: context length of each decode, the new token included (>= 1).
    """
    f = dict.fromkeys(FEATURES, 0)
    for i, chunk in enumerate(prefill):
        q, ctx = int(chunk[0]), int(chunk[1])
        if q < 1 or ctx < 0:
            raise ValueError(f"prefill chunk {i}: need q >= 1 and ctx >= 0, got q={q}, ctx={ctx}")
        f["prefill_tokens"] += q
        f["prefill_ctx"] += ctx
        f["prefill_pairs"] += q * ctx + q * (q + 1) // 2
        f["samples"] += int(len(chunk) < 3 or bool(chunk[2]))
    for i, c in enumerate(decode_ctx):
        if c < 1:
            raise ValueError(f"decode {i}: context length must be >= 1 (it includes the new token), got {c}")
        f["decodes"] += 1
        f["decode_ctx"] += int(c)
    f["samples"] += f["decodes"]
    f["tokens"] = f["prefill_tokens"] + f["decodes"]
    return f


def op_times(op: OpCost, gpu: GPUSpec, feats: Mapping[str, float]) -> tuple[float, float]:
    """``(compute seconds, memory seconds)`` of one instance of ``op``."""
    flops = op.flops_at(feats)
    compute = flops / gpu.attainable_ops(op.compute) if flops else 0.0
    return compute, op.bytes_at(feats) / gpu.attainable_bw


def _resolve(model: ModelSpec | str, gpu: GPUSpec | str) -> tuple[ModelSpec, GPUSpec]:
    return (ModelSpec.load(model) if isinstance(model, str) else model), get_gpu(gpu)


def step_ops(model: ModelSpec | str, gpu: GPUSpec | str, prefill: Iterable[Sequence[int]] = (),
             decode_ctx: Iterable[int] = (), weight_dtype: str = "bf16", kv_dtype: str = "bf16"
             ) -> pd.DataFrame:
    """Per-operator roofline table of one step (ops that do not run are left out).

    Args:
        model, gpu: specs or their names.
        prefill, decode_ctx: the batch, as in ``step_features``.
        weight_dtype, kv_dtype: storage formats (``sim/model_spec.py``).

    Returns:
        DataFrame with columns op, scope, kind, count, flops, bytes, intensity,
        compute_s, memory_s, time_s, bound, total_flops, total_bytes, total_time_s.
    """
    import pandas as pd

    model, gpu = _resolve(model, gpu)
    feats = step_features(prefill, decode_ctx)
    rows = []
    for op in op_costs(model, weight_dtype, kv_dtype):
        if not op.runs(feats):
            continue
        count = model.num_layers if op.scope == "layer" else 1
        flops, nbytes = op.flops_at(feats), op.bytes_at(feats)
        compute, memory = op_times(op, gpu, feats)
        rows.append({"op": op.name, "scope": op.scope, "kind": op.kind, "count": count, "flops": flops,
                     "bytes": nbytes, "intensity": flops / nbytes, "compute_s": compute, "memory_s": memory,
                     "time_s": max(compute, memory), "bound": "compute" if compute > memory else "memory"})
    df = pd.DataFrame(rows)
    for col in ("flops", "bytes", "time_s"):
        df[f"total_{col}"] = df[col] * df["count"]
    return df


def step_time(model: ModelSpec | str, gpu: GPUSpec | str, prefill: Iterable[Sequence[int]] = (),
              decode_ctx: Iterable[int] = (), weight_dtype: str = "bf16", kv_dtype: str = "bf16") -> float:
    """Roofline time (seconds) of one step: the sum of ``step_ops``'s ``total_time_s``."""
    model, gpu = _resolve(model, gpu)
    feats = step_features(prefill, decode_ctx)
    total = 0.0
    for op in op_costs(model, weight_dtype, kv_dtype):
        if op.runs(feats):
            total += max(op_times(op, gpu, feats)) * (model.num_layers if op.scope == "layer" else 1)
    return total


def analyze(model: ModelSpec | str, gpu: GPUSpec | str, batch: int = 1, context: int = 1024,
            phase: str = "both", weight_dtype: str = "bf16", kv_dtype: str = "bf16") -> pd.DataFrame:
    """Roofline table of a uniform batch, with a ``phase`` column.

    Args:
        batch: number of sequences.
        context: decode: context of each decode (new token included); prefill:
            prompt length of each sequence, prefilled from scratch in one chunk.
        phase: 'decode', 'prefill' or 'both' (the two tables stacked).
    """
    import pandas as pd

    if phase not in ("decode", "prefill", "both"):
        raise ValueError(f"phase must be 'decode', 'prefill' or 'both', got {phase!r}")
    if batch < 1 or context < 1:
        raise ValueError(f"batch and context must be >= 1, got batch={batch}, context={context}")
    frames = []
    for ph in ("prefill", "decode"):
        if phase in (ph, "both"):
            pre = [(context, 0)] * batch if ph == "prefill" else []
            dec = [context] * batch if ph == "decode" else []
            frames.append(step_ops(model, gpu, pre, dec, weight_dtype, kv_dtype).assign(phase=ph))
    return pd.concat(frames, ignore_index=True)


def plot_roofline(df: pd.DataFrame, gpu: GPUSpec | str, path: str | Path) -> None:
    """Log-log roofline plot: attainable ceilings (peak dashed) and one labelled point per op.

    Ops without FLOPs (the embedding gather) have no intensity and are not drawn.
    """
    import numpy as np
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gpu = get_gpu(gpu)
    pts = df[df["flops"] > 0].assign(achieved=lambda d: d["flops"] / d["time_s"])
    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    lo = min(0.1, float(pts["intensity"].min()) / 2) if len(pts) else 0.1
    hi = max(1e4, float(pts["intensity"].max()) * 2) if len(pts) else 1e4
    xs = np.logspace(np.log10(lo), np.log10(hi), 200)
    bw, flops = gpu.attainable_bw, gpu.attainable_bf16_flops
    ax.plot(xs, np.minimum(xs * bw, flops), color="black",
            label=f"attainable ({bw / 1e12:.2f} TB/s, {flops / 1e12:.0f} TFLOP/s)")
    ax.plot(xs, np.minimum(xs * gpu.peak_bw, gpu.peak_bf16_flops), color="gray", linestyle="--",
            label=f"peak ({gpu.peak_bw / 1e12:.2f} TB/s, {gpu.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16)")
    hue = "phase" if "phase" in pts.columns else None
    sns.scatterplot(data=pts, x="intensity", y="achieved", hue=hue, style="kind", s=60, ax=ax)
    labels: dict[tuple, list[str]] = {}  # ops drawn on the same spot share one label
    for row in pts.itertuples():
        spot = (round(float(np.log10(row.intensity)), 1), round(float(np.log10(row.achieved)), 1))
        labels.setdefault((*spot, row.phase if hue else ""), []).append(str(row.op))
    clusters: list[tuple[float, float, list[str]]] = []  # nearby labels share one text block
    for (x, y, phase), names in labels.items():
        text = "/".join(names) + (f" ({phase})" if phase else "")
        near = [c for c in clusters if abs(x - c[0]) < 0.8 and abs(y - c[1]) < 0.4]
        if near:
            near[0][2].append(text)
        else:
            clusters.append((x, y, [text]))
    for x, y, texts in clusters:
        ax.annotate("\n".join(texts), (10**x, 10**y), fontsize=7, xytext=(6, -3), va="top",
                    textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)",
           ylabel="attained FLOP/s", title=f"Roofline on {gpu.name}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_roofline_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``servegym roofline`` options to ``parser``."""
    parser.add_argument("--model", default="llama-3.2-1b", help="shipped model name or config path")
    parser.add_argument("--gpu", default="h100", help="GPU name (h100, h200, a100)")
    parser.add_argument("--batch", type=int, default=1, help="sequences in the batch")
    parser.add_argument("--context", type=int, default=1024, help="decode context / prefill prompt length")
    parser.add_argument("--phase", choices=("decode", "prefill", "both"), default="both")
    parser.add_argument("--weight-dtype", default="bf16", help="bf16, fp16, int8, int4, w8a8, fp8")
    parser.add_argument("--kv-dtype", default="bf16", help="bf16, fp16, int8, fp8")
    parser.add_argument("--out", default=None, help="folder for roofline.csv and roofline.png")


def roofline_command(args: argparse.Namespace) -> int:
    """Print the per-operator roofline table and totals; write CSV and plot under ``--out``."""
    df = analyze(args.model, args.gpu, args.batch, args.context, args.phase, args.weight_dtype, args.kv_dtype)
    show = df.assign(GFLOP=df["flops"] / 1e9, MB=df["bytes"] / 1e6, us=df["time_s"] * 1e6,
                     total_us=df["total_time_s"] * 1e6)
    cols = ["op", "count", "GFLOP", "MB", "intensity", "bound", "us", "total_us"]
    print(f"roofline: {args.model} on {args.gpu}, batch {args.batch}, context {args.context}, "
          f"weights {args.weight_dtype}, KV {args.kv_dtype} (per-instance values; total = x count)")
    for phase, part in show.groupby("phase", sort=False):
        print(f"\n[{phase}]")
        print(part[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        tokens = args.batch * (args.context if phase == "prefill" else 1)
        secs = part["total_time_s"].sum()
        tflop, gb = part["total_flops"].sum() / 1e12, part["total_bytes"].sum() / 1e9
        print(f"total: {tflop:.4g} TFLOP, {gb:.4g} GB, {secs * 1e3:.4g} ms, {tokens / secs:.4g} tokens/s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "roofline.csv", index=False)
        plot_roofline(df, args.gpu, out / "roofline.png")
        print(f"\nwrote {out / 'roofline.csv'} and {out / 'roofline.png'}")
    return 0
