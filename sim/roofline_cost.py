"""The roofline cost model: ``sim/roofline.py``'s step time, compiled for the simulator's hot loop.

See ``sim.cost_model`` for the cost-model contract; this model prices a plan from the same
aggregates as the calibrated one, with no profile.
"""

from __future__ import annotations

from policies.types import StepPlan
from sim.hardware import GPUSpec, get_gpu
from sim.model_spec import ModelSpec
from sim.profile import PiecewiseLinear
from sim.roofline import OpCost, op_costs, op_times


def _terms(op: OpCost, scale_flops: float, scale_bytes: float) -> tuple[dict[str, float], dict[str, float]]:
    """``op``'s FLOP and byte coefficients, converted to seconds per unit of each feature."""
    return ({k: c * scale_flops for k, c in op.flops}, {k: c * scale_bytes for k, c in op.bytes})


class RooflineCostModel:
    """Analytic cost model equal to ``sim.roofline.step_time`` on the plan's batch.

    Args:
        model, gpu: specs or their names.
        weight_dtype, kv_dtype: storage formats (``sim/model_spec.py``).
        block_size: tokens per KV block (to price swaps).
        step_overhead_s: fixed cost added to every non-empty step.
    """

    prices_by_aggregates = True  # a function of the plan's aggregates (sim.cost_model.CostModel)

    def __init__(self, model: ModelSpec | str, gpu: GPUSpec | str, weight_dtype: str = "bf16",
                 kv_dtype: str = "bf16", block_size: int = 16, step_overhead_s: float = 0.0) -> None:
        if block_size < 1 or step_overhead_s < 0:
            raise ValueError(f"need block_size >= 1 and step_overhead_s >= 0, got {block_size}, "
                             f"{step_overhead_s}")
        self.model = ModelSpec.load(model) if isinstance(model, str) else model
        self.gpu = get_gpu(gpu)
        self.weight_dtype, self.kv_dtype = weight_dtype, kv_dtype
        self.step_overhead_s = step_overhead_s
        self.verify_group_rows = 1  # no grouped verification kernel modelled: each draft row reads its context
        self.swap_block_s = self.model.kv_bytes_per_token(kv_dtype) * block_size / self.gpu.host_bw
        groups: dict[str, list[OpCost]] = {"tokens": [], "samples": []}
        flop_rate, bw = self.gpu.attainable_ops, self.gpu.attainable_bw
        for op in op_costs(self.model, weight_dtype, kv_dtype):
            used = {op.trigger, *(k for k, _ in op.flops), *(k for k, _ in op.bytes)}
            count = self.model.num_layers if op.scope == "layer" else 1
            flops, nbytes = _terms(op, count / flop_rate(op.compute), count / bw)
            if len(used) == 1 and op.trigger in groups:
                groups[op.trigger].append(op)
            elif op.name == "attention_prefill" and used <= {"prefill_tokens", "prefill_ctx",
                                                             "prefill_pairs"}:
                self._pf_pairs = flops.get("prefill_pairs", 0.0)
                self._pf_tokens = nbytes.get("prefill_tokens", 0.0)
                self._pf_ctx = nbytes.get("prefill_ctx", 0.0)
            elif op.name == "attention_decode" and used <= {"decodes", "decode_ctx"}:
                self._dec_ctx_flops = flops.get("decode_ctx", 0.0)
                self._dec_n, self._dec_ctx = nbytes.get("decodes", 0.0), nbytes.get("decode_ctx", 0.0)
            else:  # roofline.py grew an op of a new shape: teach this class about it
                raise NotImplementedError(f"RooflineCostModel cannot compile op {op.name!r} ({used})")
        self._dense = self._convex(groups["tokens"], "tokens")
        self._lm = self._convex(groups["samples"], "samples")

    def _convex(self, ops: list[OpCost], feature: str) -> PiecewiseLinear:
        """Exact sum over ``ops`` of ``count * max(compute, memory)`` as a function of ``feature`` >= 1."""
        knots = {1.0}
        for op in ops:  # breakpoint where the op turns compute-bound: f x / F = (c + b x) / B
            f = sum(c for _, c in op.flops) / self.gpu.attainable_ops(op.compute)
            b = sum(c for _, c in op.bytes) / self.gpu.attainable_bw
            c = op.bytes_const / self.gpu.attainable_bw
            if f > b and c > 0 and c / (f - b) > 1:
                knots.add(c / (f - b))
        xs = sorted(knots)
        xs.append(2 * xs[-1])  # past the last breakpoint every op is linear

        def total(x: float) -> float:
            feats = dict.fromkeys(("tokens", "samples"), 0.0) | {feature: x}
            n = self.model.num_layers
            return sum(max(op_times(op, self.gpu, feats)) * (n if op.scope == "layer" else 1) for op in ops)

        return PiecewiseLinear(xs, [total(x) for x in xs])

    def dense_time(self, tokens: float) -> float:
        """Time of every op but attention and lm_head for ``tokens`` (>= 1) computed tokens."""
        return self._dense(tokens)

    def lm_head_time(self, samples: float) -> float:
        """lm_head time for ``samples`` (>= 1) sampling positions."""
        return self._lm(samples)

    def prefill_attention_time(self, tokens: float, ctx: float, pairs: float) -> float:
        """Prefill attention over all layers: chunk tokens, cached context read, causal pairs."""
        return max(self._pf_pairs * pairs, self._pf_tokens * tokens + self._pf_ctx * ctx)

    def decode_attention_time(self, decodes: float, ctx: float) -> float:
        """Decode attention over all layers: number of decodes and their total context."""
        return max(self._dec_ctx_flops * ctx, self._dec_n * decodes + self._dec_ctx * ctx)

    def knots(self) -> tuple[list[float], list[float]]:
        """Breakpoints of the dense (vs tokens) and lm_head (vs samples) functions."""
        return list(self._dense.xs), list(self._lm.xs)

    def step_time(self, plan: StepPlan) -> float:
        """Predicted duration of ``plan`` in seconds."""
        nd, tp = len(plan.decodes) + plan.num_draft_tokens, plan.num_prefill_tokens
        swaps = len(plan.swap_in) + len(plan.swap_out)
        if nd + tp == 0:
            return self.step_overhead_s + swaps * self.swap_block_s if swaps else 0.0
        total = self.step_overhead_s + self._dense(tp + nd) + self._lm(nd + len(plan.prefills))
        if tp:
            total += max(self._pf_pairs * plan.prefill_attn_pairs,
                         self._pf_tokens * tp + self._pf_ctx * plan.prefill_ctx_tokens)
        if nd:
            ctx = plan.decode_ctx_tokens
            total += max(self._dec_ctx_flops * ctx, self._dec_n * nd + self._dec_ctx * ctx)
        return total + swaps * self.swap_block_s if swaps else total
