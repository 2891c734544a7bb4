"""A linear layer (no bias) in full precision or with quantized weights from kernels/."""

from __future__ import annotations

from collections.abc import Callable

import torch

INT4_GROUP = 128
GEMV_MAX_ROWS = 4  # inputs of at most this many rows may take ``Linear.gemv`` (decode of a few sequences)
#: The row counts above one at which the start-up choices (``engine.gemv_choice``, ``engine.fused_choice``)
#: time the GEMV paths against ``F.linear``: the decode graphs' batch sizes up to ``GEMV_MAX_ROWS``.
GEMV_ROW_COUNTS = (2, 4)

GemvFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(x, norm_weight, eps, weight) -> rms_norm(x) @ weight.T`` (SwiGLU of it for a ``glu_out`` layer).
NormGemvFn = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor], torch.Tensor]
#: ``(x, weight, residual) -> x @ weight.T + residual``.
ResidualGemvFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(x, norm_weight, eps, weight, positions, cos_sin, k_cache, v_cache, slots, num_q_heads) -> qkv`` with
#: q and k rotated and k, v written into the caches (``kernels.gemv_rope.gemv_rms_norm_rope``).
NormRopeGemvFn = Callable[..., torch.Tensor]


class Linear:
    """``y = x @ W.T`` for a weight ``W`` [N, K], optionally quantized at construction.

    Args:
        weight: the full-precision weight [N, K] on its final device.
        quantization: None, 'int8' / 'int4' (weight-only; int4 in groups of
            ``INT4_GROUP`` input channels) or 'w8a8'.
        pdl: launch the int8 / int4 kernels of inputs of at most ``GEMV_MAX_ROWS`` rows with
            programmatic dependent launch (``kernels.pdl``; Hopper only). Full-precision
            layers take it from their GEMV configs instead.

    Attributes:
        gemv: for a full-precision weight, a ``(x, weight) -> x @ weight.T`` kernel used
            for inputs of at most ``gemv_rows`` rows instead of ``F.linear``
            (None: always ``F.linear``; set by ``engine.gemv_choice`` where it is faster).
        gemv_rows: the most rows ``gemv`` takes (at most ``GEMV_MAX_ROWS``; ``engine.gemv_choice``
            lowers it to the row counts where the kernel beat ``F.linear``).
        glu_out: this layer is a fused [gate | up] projection whose output goes through SwiGLU
            (set by the model; the fused :meth:`normed` then returns ``silu(gate) * up``).
        norm_gemv: for a full-precision weight, the decode kernel of :meth:`normed` (RMSNorm of
            the input fused in; None: not available). Set by ``engine.fused_choice``.
        residual_gemv: for a full-precision weight, the decode kernel of :meth:`plus` (residual
            add fused in; None: not available). Set by ``engine.fused_choice``.
        norm_rope_gemv: for a full-precision [q | k | v] weight, :meth:`normed` with RoPE and the KV-cache
            write fused in after it (None: not available). Set by ``engine.fused_choice``.

    Raises:
        ImportError: the kernel module a quantization needs is missing.
        ValueError: a shape the chosen quantization cannot take (from the kernel).
    """

    def __init__(self, weight: torch.Tensor, quantization: str | None = None, pdl: bool = False) -> None:
        self.out_features, self.in_features = weight.shape
        self.quantization = quantization
        self.pdl = pdl and quantization in ("int8", "int4")
        self.gemv: GemvFn | None = None
        self.gemv_rows = GEMV_MAX_ROWS
        self.glu_out = False
        self.norm_gemv: NormGemvFn | None = None
        self.residual_gemv: ResidualGemvFn | None = None
        self.norm_rope_gemv: NormRopeGemvFn | None = None
        self.weight: torch.Tensor | None = None
        self.qweight: object | None = None
        if quantization is None:
            self.weight = weight.contiguous()
            return
        try:
            if quantization in ("int8", "int4"):
                from kernels import quant_linear as mod
            else:
                from kernels import w8a8 as mod
        except ImportError as exc:
            raise ImportError(f"quantization {quantization!r} needs kernels/ ({exc})") from exc
        if quantization == "int8":
            self.qweight, self._fn = mod.quantize_int8(weight.contiguous()), mod.int8_linear
        elif quantization == "int4":
            if self.in_features % INT4_GROUP:
                raise ValueError(f"int4 quantization needs in_features divisible by {INT4_GROUP}, "
                                 f"got a [{self.out_features}, {self.in_features}] weight")
            self.qweight = mod.quantize_int4(weight.contiguous(), group_size=INT4_GROUP)
            self._fn = mod.int4_linear
        else:
            self.qweight, self._fn = mod.quantize_w8a8(weight.contiguous()), mod.w8a8_linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            if self.gemv is not None and 0 < x.shape[0] <= self.gemv_rows:
                return self.gemv(x, self.weight)
            return torch.nn.functional.linear(x, self.weight)
        if self.pdl and 0 < x.shape[0] <= GEMV_MAX_ROWS:
            return self._fn(x.contiguous(), self.qweight, pdl=True)
        return self._fn(x.contiguous(), self.qweight)

    def normed(self, x: torch.Tensor, norm_weight: torch.Tensor, eps: float) -> torch.Tensor:
        """This layer applied to ``rms_norm(x, norm_weight, eps)`` in one kernel (``norm_gemv``).

        Args:
            x: [M, K] residual stream, M <= ``LlamaModel.fused_rows``.
            norm_weight: [K] RMSNorm weight.
            eps: RMSNorm epsilon.

        Returns:
            [M, N], or ``silu(gate) * up`` [M, N / 2] for a ``glu_out`` layer.

        Raises:
            RuntimeError: no ``norm_gemv`` is set (the model only calls this when every layer has one).
        """
        if self.norm_gemv is None or self.weight is None:
            raise RuntimeError("Linear.normed needs a full-precision weight and a norm_gemv kernel")
        return self.norm_gemv(x, norm_weight, eps, self.weight)

    def normed_rope(self, x: torch.Tensor, norm_weight: torch.Tensor, eps: float, positions: torch.Tensor,
                    cos_sin: torch.Tensor, caches: tuple[torch.Tensor, torch.Tensor], slots: torch.Tensor,
                    num_q_heads: int) -> torch.Tensor:
        """:meth:`normed` of a [q | k | v] layer, then RoPE on q and k and the KV-cache write, in one kernel.

        Args:
            x, norm_weight, eps: as for :meth:`normed`.
            positions: [M] token positions; cos_sin: the RoPE table (``kernels.rope``).
            caches: the layer's (k_cache, v_cache) of the model dtype; slots: [M] cache slots (-1: none).
            num_q_heads: query heads.

        Returns:
            [M, N] projection with q and k rotated.

        Raises:
            RuntimeError: no ``norm_rope_gemv`` is set.
        """
        if self.norm_rope_gemv is None or self.weight is None:
            raise RuntimeError("Linear.normed_rope needs a full-precision weight and a norm_rope_gemv kernel")
        return self.norm_rope_gemv(x, norm_weight, eps, self.weight, positions, cos_sin, *caches, slots,
                                   num_q_heads)

    def plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``self(x) + residual`` in one kernel (``residual_gemv``), rounded once.

        Raises:
            RuntimeError: no ``residual_gemv`` is set.
        """
        if self.residual_gemv is None or self.weight is None:
            raise RuntimeError("Linear.plus needs a full-precision weight and a residual_gemv kernel")
        return self.residual_gemv(x, self.weight, residual)

    def weight_bytes(self) -> int:
        """Bytes of the stored weight (and scales), what one full read of the layer costs."""
        if self.weight is not None:
            return self.weight.numel() * self.weight.element_size()
        parts = [getattr(self.qweight, f, None) for f in ("qweight", "packed", "scale", "scales", "zeros")]
        return sum(p.numel() * p.element_size() for p in parts if isinstance(p, torch.Tensor))
