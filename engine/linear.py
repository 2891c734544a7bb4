"""A linear layer (no bias) in full precision or with quantized weights from kernels/."""

from __future__ import annotations

from collections.abc import Callable

import torch

INT4_GROUP = 128
GEMV_MAX_ROWS = 4  # inputs of at most this many rows may take ``Linear.gemv`` (decode of a few sequences)

GemvFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ActFn = Callable[[torch.Tensor], torch.Tensor]


class Linear:
    """``y = x @ W.T`` for a weight ``W`` [N, K], optionally quantized at construction.

    Args:
        weight: the full-precision weight [N, K] on its final device.
        quantization: None, 'int8' / 'int4' (weight-only; int4 in groups of
            ``INT4_GROUP`` input channels) or 'w8a8'.

    Attributes:
        gemv: for a full-precision weight, a ``(x, weight) -> x @ weight.T`` kernel used
            for inputs of at most ``GEMV_MAX_ROWS`` rows instead of ``F.linear``
            (None: always ``F.linear``; set by ``engine.gemv_choice`` where it is faster).
        swiglu_gemv: for a full-precision weight [N, I], a ``(gate_up, weight) ->
            (silu(gate) * up) @ weight.T`` kernel taking the [M, 2I] gate_up output directly, used
            by :meth:`silu_mul` for at most ``GEMV_MAX_ROWS`` rows (None: activation, then this
            layer; set by ``engine.gemv_choice`` where the fused kernel is faster).

    Raises:
        ImportError: the kernel module a quantization needs is missing.
        ValueError: a shape the chosen quantization cannot take (from the kernel).
    """

    def __init__(self, weight: torch.Tensor, quantization: str | None = None) -> None:
        self.out_features, self.in_features = weight.shape
        self.quantization = quantization
        self.gemv: GemvFn | None = None
        self.swiglu_gemv: GemvFn | None = None
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
            if self.gemv is not None and 0 < x.shape[0] <= GEMV_MAX_ROWS:
                return self.gemv(x, self.weight)
            return torch.nn.functional.linear(x, self.weight)
        return self._fn(x.contiguous(), self.qweight)

    def silu_mul(self, gate_up: torch.Tensor, silu_and_mul: ActFn) -> torch.Tensor:
        """This layer applied to the SwiGLU of a fused gate/up output: ``self(silu_and_mul(gate_up))``.

        Args:
            gate_up: [M, 2I] output of the gate/up projection (this layer's weight is [N, I]).
            silu_and_mul: the activation ``[M, 2I] -> [M, I]`` used when the fused kernel is not.

        Returns:
            [M, N] output, through ``swiglu_gemv`` in one kernel when it is set and M is small.
        """
        if self.swiglu_gemv is not None and self.weight is not None and 0 < gate_up.shape[0] <= GEMV_MAX_ROWS:
            return self.swiglu_gemv(gate_up, self.weight)
        return self(silu_and_mul(gate_up))

    def weight_bytes(self) -> int:
        """Bytes of the stored weight (and scales), what one full read of the layer costs."""
        if self.weight is not None:
            return self.weight.numel() * self.weight.element_size()
        parts = [getattr(self.qweight, f, None) for f in ("qweight", "packed", "scale", "scales", "zeros")]
        return sum(p.numel() * p.element_size() for p in parts if isinstance(p, torch.Tensor))
