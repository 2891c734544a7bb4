"""The Llama forward pass over one packed varlen batch (all tokens of a step, no padding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention import AttentionBackend
from engine.layers import LayerOps
from engine.linear import GEMV_MAX_ROWS, Linear
from engine.loader import LlamaTensors
from engine.model_config import LlamaSpec
from engine.step_metadata import StepMetadata
from kernels.rope_tables import rope_cos_sin  # plain PyTorch: no Triton import


@dataclass
class DecoderLayer:
    """One decoder layer's weights, linear layers possibly quantized."""

    input_norm: torch.Tensor
    qkv: Linear
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


class LlamaModel:
    """Llama 3.x decoder with a pluggable attention backend and elementwise ops.

    Args:
        spec: the model's shapes.
        tensors: loaded weights (consumed: linear weights may be replaced by quantized ones).
        ops: elementwise op implementations (torch or Triton).
        max_positions: size of the RoPE table (the engine's max_model_len).
        quantization: weight quantization of the decoder's linear layers.
        pdl: launch the quantized decode GEMVs with programmatic dependent launch (see ``Linear``).

    Attributes:
        fused_rows: steps of at most this many tokens take the fused decode layers when every layer
            has them (``GEMV_MAX_ROWS``; ``engine.fused_choice`` lowers it to the row counts where the
            fused chain was timed faster).
        fused_rope: on the fused decode path, layers whose qkv has a ``norm_rope_gemv`` run RoPE and the
            KV-cache write inside that GEMV when the attention backend's cache takes it
            (``AttentionBackend.plain_cache``); else the backend's ``rope_and_write`` (``EngineConfig.fused_rope``).
    """

    def __init__(self, spec: LlamaSpec, tensors: LlamaTensors, ops: LayerOps, max_positions: int,
                 quantization: str | None = None, pdl: bool = False) -> None:
        self.spec = spec
        self.ops = ops
        self.fused_rows = GEMV_MAX_ROWS
        self.fused_rope = False
        self.embed = tensors.embed
        self.norm = tensors.norm
        self.lm_head = tensors.lm_head
        self.lm_head_linear = Linear(tensors.lm_head)  # never quantized; shares the (possibly tied) weight
        self.layers: list[DecoderLayer] = []
        for t in tensors.layers:
            self.layers.append(DecoderLayer(
                t.input_norm, Linear(t.qkv, quantization, pdl), Linear(t.o, quantization, pdl),
                t.post_norm, Linear(t.gate_up, quantization, pdl), Linear(t.down, quantization, pdl)))
            self.layers[-1].gate_up.glu_out = True
            t.qkv = t.o = t.gate_up = t.down = None  # type: ignore[assignment]  # free full-precision copies
        cos_sin = rope_cos_sin(spec.head_dim, max_positions, spec.rope_theta, spec.rope_scaling)
        self.cos_sin = cos_sin.to(self.embed.device)

    def weight_bytes(self) -> int:
        """Bytes of weights a decode step reads (embedding rows excluded, LM head included)."""
        n = self.lm_head.numel() * self.lm_head.element_size() + self.norm.numel() * self.norm.element_size()
        for layer in self.layers:
            n += sum(lin.weight_bytes() for lin in (layer.qkv, layer.o, layer.gate_up, layer.down))
            n += 2 * layer.input_norm.numel() * layer.input_norm.element_size()
        return n

    def fused_decode(self) -> bool:
        """Whether steps of at most ``fused_rows`` tokens take the fused decode layers: every layer's
        qkv and gate_up have a ``norm_gemv`` and its o and down a ``residual_gemv``."""
        return bool(self.layers) and all(
            layer.qkv.norm_gemv is not None and layer.gate_up.norm_gemv is not None
            and layer.o.residual_gemv is not None and layer.down.residual_gemv is not None
            for layer in self.layers)

    def _attend(self, i: int, qkv: torch.Tensor, positions: torch.Tensor, attention: AttentionBackend,
                meta: StepMetadata) -> torch.Tensor:
        """Layer ``i``'s attention over the packed ``qkv`` [T, q + 2 kv]: RoPE on the views into qkv, k/v
        into the cache (one kernel on the Triton backend), then attention; returns [T, q_size]."""
        spec = self.spec
        q_size, kv_size = spec.q_size, spec.kv_size
        q = qkv[:, :q_size].reshape(-1, spec.num_heads, spec.head_dim)
        k = qkv[:, q_size : q_size + kv_size].reshape(-1, spec.num_kv_heads, spec.head_dim)
        v = qkv[:, q_size + kv_size :].reshape(-1, spec.num_kv_heads, spec.head_dim)
        attention.rope_and_write(i, q, k, v, positions, self.cos_sin, meta)
        return attention.attend(i, q, meta).reshape(-1, q_size)

    def _fused_attend(self, i: int, layer: DecoderLayer, r: torch.Tensor, positions: torch.Tensor,
                      attention: AttentionBackend, meta: StepMetadata) -> torch.Tensor:
        """Layer ``i``'s attention on the fused path from the residual stream ``r``: the qkv GEMV with the
        input norm (with ``fused_rope``, also RoPE and the KV write), then attention; returns [T, q_size]."""
        spec, eps = self.spec, self.spec.rms_norm_eps
        caches = attention.plain_cache(i) if self.fused_rope and layer.qkv.norm_rope_gemv is not None else None
        if caches is None:
            return self._attend(i, layer.qkv.normed(r, layer.input_norm, eps), positions, attention, meta)
        qkv = layer.qkv.normed_rope(r, layer.input_norm, eps, positions, self.cos_sin, caches, meta.slot_mapping,
                                    spec.num_heads)
        q = qkv[:, :spec.q_size].reshape(-1, spec.num_heads, spec.head_dim)
        return attention.attend(i, q, meta).reshape(-1, spec.q_size)

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionBackend,
                      meta: StepMetadata) -> torch.Tensor:
        """Final normalised hidden states [T, H] of the packed tokens."""
        ops, eps = self.ops, self.spec.rms_norm_eps
        h = self.embed[input_ids]
        if input_ids.shape[0] <= self.fused_rows and self.fused_decode():
            # The residual stream r is what the o and down projections return (residual added in their
            # epilogue); the norms run inside the qkv and gate_up GEMVs, SwiGLU in gate_up's epilogue.
            r = h
            for i, layer in enumerate(self.layers):
                r = layer.o.plus(self._fused_attend(i, layer, r, positions, attention, meta), r)
                r = layer.down.plus(layer.gate_up.normed(r, layer.post_norm, eps), r)
            return ops.rms_norm(r, self.norm, eps)
        residual: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            if residual is None:
                residual = h
                x = ops.rms_norm(h, layer.input_norm, eps)
            else:
                x, residual = ops.fused_add_rms_norm(h, residual, layer.input_norm, eps)
            h = layer.o(self._attend(i, layer.qkv(x), positions, attention, meta))
            x, residual = ops.fused_add_rms_norm(h, residual, layer.post_norm, eps)
            h = layer.down(ops.silu_and_mul(layer.gate_up(x)))
        assert residual is not None
        out, _ = ops.fused_add_rms_norm(h, residual, self.norm, eps)
        return out

    def linears(self) -> dict[str, list[Linear]]:
        """The linear layers by kind ('qkv', 'o', 'gate_up', 'down', 'lm_head'), one entry per layer."""
        kinds = ("qkv", "o", "gate_up", "down")
        out = {k: [getattr(layer, k) for layer in self.layers] for k in kinds}
        out["lm_head"] = [self.lm_head_linear]
        return out

    def logits(self, hidden: torch.Tensor, fp32: bool = True) -> torch.Tensor:
        """Logits [N, V] of the given rows of hidden states (fp32, or the model dtype)."""
        out = self.lm_head_linear(hidden)
        return out.float() if fp32 else out

    def forward(self, meta: StepMetadata, attention: AttentionBackend, fp32: bool = True) -> torch.Tensor:
        """Logits [N, V] of the step's sampling rows (``meta.logits_indices``; None: every row).

        Args:
            meta: the step.
            attention: the attention backend.
            fp32: return fp32 logits (else the model dtype: exact, as fp32 logits are
                the model-dtype ones converted).
        """
        hidden = self.hidden_states(meta.input_ids, meta.positions, attention, meta)
        if meta.logits_indices is not None:
            hidden = hidden[meta.logits_indices]
        return self.logits(hidden, fp32)
