"""Choose the fused decode GEMVs of ``kernels.gemv_fused`` for a model, and whether it runs them.

Each layer role has one fused kernel: qkv = RMSNorm + GEMV, o = GEMV + residual add, gate_up = RMSNorm +
GEMV + SwiGLU, down = GEMV + residual add. Per role every candidate launch config is checked on layer 0
against the unfused composition and timed as ``engine.gemv_choice`` times the plain GEMVs (a CUDA graph of
one pass over every layer, one input row). Then a layer's chain minus attention is timed both ways over
all layers: the unfused chain the model runs otherwise (fused add + RMSNorm kernels, the GEMVs chosen by
``engine.gemv_choice``, the activation: seven launches) and the fused one (four). The fused kernels are set
on the layers (``Linear.norm_gemv`` / ``Linear.residual_gemv``, which turn on
``LlamaModel.fused_decode``) only when every role has a passing config and the fused chain is faster.
Both chains are then timed at each of ``engine.linear.GEMV_ROW_COUNTS`` rows, and ``LlamaModel.fused_rows``
keeps the step sizes up to the first count where the fused chain lost.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine.gemv_choice import GEMV_DTYPES, Timer, graph_seconds, rows_text, time_configs, times_text, widest_rows

if TYPE_CHECKING:
    from engine.model import LlamaModel
    from kernels.gemv_bf16 import GemvConfig

#: (layer attribute, its norm weight attribute or None for a residual GEMV, SwiGLU epilogue).
ROLES = (("qkv", "input_norm", False), ("o", None, False), ("gate_up", "post_norm", True), ("down", None, False))


@dataclass(frozen=True)
class FusedKernels:
    """The kernels timed: ``norm_gemv(x, norm_weight, eps, w, config=, glu=)``,
    ``residual_gemv(x, w, residual, config=)`` and ``candidates(n, k, device, glu)``; and, not timed, the qkv
    role's variant with RoPE and the KV write fused in (``norm_rope_gemv(..., config=)``, set on the layers
    with the qkv config; None: none)."""

    norm_gemv: Callable[..., torch.Tensor]
    residual_gemv: Callable[..., torch.Tensor]
    candidates: Callable[[int, int, torch.device, bool], Sequence[GemvConfig]]
    norm_rope_gemv: Callable[..., torch.Tensor] | None = None


def default_fused_kernels(pdl: bool = False) -> FusedKernels:
    """The Triton kernels of ``kernels.gemv_fused`` (``pdl``: candidates launched with PDL; ImportError when
    they are missing)."""
    from kernels.gemv_fused import fused_candidates, gemv_residual, gemv_rms_norm
    from kernels.gemv_rope import gemv_rms_norm_rope

    return FusedKernels(gemv_rms_norm, gemv_residual, functools.partial(fused_candidates, pdl=pdl),
                        gemv_rms_norm_rope)


@dataclass(frozen=True)
class RoleTiming:
    """The fastest fused config of one role (times in microseconds per layer, in a graph).

    Args:
        role: 'qkv', 'o', 'gate_up' or 'down'.
        shape: weight shape ``(N, K)``.
        us: the fastest passing config's time (NaN: all failed).
        config: that config (None: all failed).
        candidates: ``(config label, us)`` of every candidate, NaN where it failed.
        note: the failures.
    """

    role: str
    shape: tuple[int, int]
    us: float
    config: GemvConfig | None
    candidates: tuple[tuple[str, float], ...]
    note: str = ""


@dataclass(frozen=True)
class FusedChoice:
    """Whether the model runs its fused decode layers, and why.

    Args:
        roles: per role, the fastest fused config.
        unfused_us: one layer's chain (minus attention) the unfused way, per layer.
        fused_us: the same chain through the fused kernels (NaN: not timed).
        chosen: whether the layers now carry the fused kernels.
        note: why not, when not.
        rows: the most tokens a step may have to take the fused layers (``LlamaModel.fused_rows``;
            0 when not chosen).
        by_rows: ``(rows, unfused us, fused us)`` per layer at each row count timed above one.
    """

    roles: tuple[RoleTiming, ...] = ()
    unfused_us: float = math.nan
    fused_us: float = math.nan
    chosen: bool = False
    note: str = ""
    rows: int = 0
    by_rows: tuple[tuple[int, float, float], ...] = ()

    def summary(self) -> list[str]:
        """Log lines: the verdict, then each role's config and candidates."""
        verdict = f"fused up to {self.rows} rows" if self.chosen else "unfused"
        lines = [f"fused decode layer chain {self.fused_us:.1f} us vs unfused {self.unfused_us:.1f} us per "
                 f"layer -> {verdict} {self.note}".rstrip()]
        if self.by_rows:
            lines.append("  by rows (unfused / fused): " + rows_text(self.by_rows))
        for r in self.roles:
            label = r.config.label if r.config is not None else "-"
            lines.append(f"  {r.role:8s} {r.shape}: {r.us:.1f} us [{label}]; candidates: "
                         f"{times_text(r.candidates)} {r.note}".rstrip())
        return lines


def _reset(model: LlamaModel) -> None:
    for layer in model.layers:
        for attr, _, _ in ROLES:
            lin = getattr(layer, attr)
            lin.norm_gemv = lin.residual_gemv = lin.norm_rope_gemv = None


def choose_fused(model: LlamaModel, device: torch.device, reps: int = 5, timer: Timer | None = None,
                 kernels: FusedKernels | None = None, pdl: bool = False) -> FusedChoice:
    """Time the fused decode kernels of ``model``'s layers; set them where the fused chain wins.

    Args:
        model: the model (full-precision bf16/fp16 linear layers; else nothing is chosen).
        device: its CUDA device.
        reps: timed graph replays per candidate (default timer).
        timer: ``(label, fn) -> seconds`` per call of ``fn`` (default: a CUDA graph of ``fn``); labels
            are ``'<role>:fused:<config>'``, ``'chain:unfused'`` and ``'chain:fused'``.
        kernels: the kernels to time (default: ``default_fused_kernels(pdl)``).
        pdl: with the default kernels, launch the candidates with programmatic dependent launch.

    Returns:
        The choice (also when nothing was chosen, with the reason in ``note``).

    Raises:
        Whatever a chain's timing raises; the layers are then left without fused kernels.
    """
    _reset(model)
    lins = [getattr(layer, attr) for layer in model.layers for attr, _, _ in ROLES]
    if not lins or any(lin.weight is None or lin.weight.dtype not in GEMV_DTYPES for lin in lins):
        return FusedChoice(note="(needs full-precision bf16/fp16 linear layers)")
    if kernels is None:
        try:
            kernels = default_fused_kernels(pdl)
        except ImportError as exc:
            return FusedChoice(note=f"(no kernel: {exc})")
    timer = timer or (lambda label, fn: graph_seconds(fn, reps))
    ctx = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with ctx:
            return _choose(model, device, timer, kernels)
    except Exception:
        _reset(model)
        raise


def _choose(model: LlamaModel, device: torch.device, timer: Timer, kernels: FusedKernels) -> FusedChoice:
    layers, ops, eps = model.layers, model.ops, model.spec.rms_norm_eps
    first = layers[0]
    dtype = first.qkv.weight.dtype
    hidden, q_size, inter = first.o.out_features, first.o.in_features, first.down.in_features
    g = torch.Generator(device=device).manual_seed(0)
    r0, attn0, act0 = (torch.randn(1, n, generator=g, device=device).to(dtype) for n in (hidden, q_size, inter))
    fns: dict[str, Callable[..., torch.Tensor]] = {}
    roles: list[RoleTiming] = []
    for attr, norm_attr, glu in ROLES:
        w = [getattr(layer, attr).weight for layer in layers]
        n, k = w[0].shape
        if norm_attr is not None:
            nw = [getattr(layer, norm_attr) for layer in layers]
            make = functools.partial(_norm_fn, kernels.norm_gemv, glu)

            def args(i: int, nw: list = nw, w: list = w) -> tuple:
                return r0, nw[i], eps, w[i]

            ref = F.linear(ops.rms_norm(r0, nw[0], eps), w[0])
            ref = ops.silu_and_mul(ref) if glu else ref
        else:
            x = attn0 if attr == "o" else act0
            make = functools.partial(_residual_fn, kernels.residual_gemv)

            def args(i: int, x: torch.Tensor = x, w: list = w) -> tuple:
                return x, w[i], r0

            ref = F.linear(x, w[0]) + r0
        best = time_configs(f"{attr}:fused", kernels.candidates(n, k, device, glu), make, args, len(layers), ref,
                            timer)
        roles.append(RoleTiming(attr, (n, k), best.us, best.config, best.times, "; ".join(best.errors)))
        if best.config is not None:
            fns[attr] = make(best.config)
    count = len(layers)

    def unfused(r0: torch.Tensor, attn0: torch.Tensor) -> None:
        h, residual = r0, r0
        for layer in layers:
            x, residual = ops.fused_add_rms_norm(h, residual, layer.input_norm, eps)
            layer.qkv(x)
            x, residual = ops.fused_add_rms_norm(layer.o(attn0), residual, layer.post_norm, eps)
            h = layer.down(ops.silu_and_mul(layer.gate_up(x)))

    def fused(r: torch.Tensor, attn0: torch.Tensor) -> None:
        for layer in layers:
            fns["qkv"](r, layer.input_norm, eps, layer.qkv.weight)
            r = fns["o"](attn0, layer.o.weight, r)
            r = fns["down"](fns["gate_up"](r, layer.post_norm, eps, layer.gate_up.weight), layer.down.weight, r)

    t_unfused = timer("chain:unfused", lambda: unfused(r0, attn0)) / count * 1e6
    missing = [r.role for r in roles if r.config is None]
    if missing:
        return FusedChoice(tuple(roles), t_unfused, note=f"(no passing config for {', '.join(missing)})")
    t_fused = timer("chain:fused", lambda: fused(r0, attn0)) / count * 1e6
    if not t_fused < t_unfused:
        return FusedChoice(tuple(roles), t_unfused, t_fused)

    def time_pair(m: int) -> tuple[float, float]:
        r, attn = (torch.randn(m, n, generator=g, device=device).to(dtype) for n in (hidden, q_size))
        return (timer(f"chain:unfused:rows={m}", lambda: unfused(r, attn)) / count,
                timer(f"chain:fused:rows={m}", lambda: fused(r, attn)) / count)

    rows, by_rows = widest_rows(time_pair)
    rope = (functools.partial(kernels.norm_rope_gemv, config=roles[0].config)
            if kernels.norm_rope_gemv is not None else None)
    for layer in layers:
        layer.qkv.norm_gemv, layer.gate_up.norm_gemv = fns["qkv"], fns["gate_up"]
        layer.o.residual_gemv, layer.down.residual_gemv = fns["o"], fns["down"]
        layer.qkv.norm_rope_gemv = rope
    model.fused_rows = rows
    return FusedChoice(tuple(roles), t_unfused, t_fused, True, rows=rows, by_rows=by_rows)


def _norm_fn(kernel: Callable[..., torch.Tensor], glu: bool, config: GemvConfig) -> Callable[..., torch.Tensor]:
    return functools.partial(kernel, config=config, glu=glu)


def _residual_fn(kernel: Callable[..., torch.Tensor], config: GemvConfig) -> Callable[..., torch.Tensor]:
    return functools.partial(kernel, config=config)
