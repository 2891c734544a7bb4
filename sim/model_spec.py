"""Shapes of a Llama-architecture model, read from a Hugging Face style ``config.json``.

``ModelSpec`` holds only what the cost models and the engine need to know about
a model's size: layer shapes, head layout, vocabulary, RoPE settings. Shipped
configurations live in ``sim/models/<name>.json`` (public Llama 3.2 numbers).

Storage formats (used by ``weight_bytes`` and by the roofline model):

- Weights (``WEIGHT_FORMATS``): only the linear layers of the decoder blocks
  (q/k/v/o, gate/up/down) are quantised; embeddings, the lm_head and the
  RMSNorm weights stay bf16. ``int8``, ``w8a8`` and ``fp8`` store one byte per
  weight plus one fp32 scale per output channel; ``int4`` stores half a byte per
  weight plus one bf16 scale per group of 128 input channels (symmetric, no
  zero point). ``int8``/``int4`` are weight-only (bf16 tensor-core math);
  ``w8a8`` and ``fp8`` run the GEMM on int8/fp8 tensor cores.
- KV cache (``KV_FORMATS``): bf16/fp16 store 2 bytes per element; int8/fp8 store
  1 byte per element plus one fp32 scale per (token, KV head) for K and another
  for V, i.e. ``2 * num_kv_heads * (head_dim + 4)`` bytes per token per layer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class WeightFormat:
    """How a linear layer's weights are stored and multiplied.

    Args:
        bits: bits per weight.
        group_size: input channels sharing one scale; 0 means one scale per output channel.
        scale_bytes: bytes per scale (0 for unquantised formats).
        compute: tensor-core math the GEMM runs at ('bf16', 'int8' or 'fp8').
    """

    bits: int
    group_size: int
    scale_bytes: int
    compute: str


WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "bf16": WeightFormat(16, 0, 0, "bf16"),
    "fp16": WeightFormat(16, 0, 0, "bf16"),
    "int8": WeightFormat(8, 0, 4, "bf16"),
    "int4": WeightFormat(4, 128, 2, "bf16"),
    "w8a8": WeightFormat(8, 0, 4, "int8"),
    "fp8": WeightFormat(8, 0, 4, "fp8"),
}
# KV cache: (bytes per element, bytes of the per-(token, head) scale of K and of V).
KV_FORMATS: dict[str, tuple[int, int]] = {"bf16": (2, 0), "fp16": (2, 0), "int8": (1, 4), "fp8": (1, 4)}
ACT_BYTES = 2  # activations and unquantised weights are bf16


def weight_format(weight_dtype: str) -> WeightFormat:
    """The ``WeightFormat`` named ``weight_dtype``; ValueError listing the known ones."""
    try:
        return WEIGHT_FORMATS[weight_dtype]
    except KeyError:
        raise ValueError(f"unknown weight dtype {weight_dtype!r}; known: {sorted(WEIGHT_FORMATS)}") from None


def kv_format(kv_dtype: str) -> tuple[int, int]:
    """``(element bytes, scale bytes)`` of the KV dtype; ValueError listing the known ones."""
    try:
        return KV_FORMATS[kv_dtype]
    except KeyError:
        raise ValueError(f"unknown KV cache dtype {kv_dtype!r}; known: {sorted(KV_FORMATS)}") from None


def linear_bytes(in_features: int, out_features: int, weight_dtype: str) -> float:
    """Bytes of one ``in_features -> out_features`` weight matrix, scales included."""
    fmt = weight_format(weight_dtype)
    data = in_features * out_features * fmt.bits / 8
    if fmt.scale_bytes == 0:
        return data
    groups = 1 if fmt.group_size == 0 else math.ceil(in_features / fmt.group_size)
    return data + out_features * groups * fmt.scale_bytes


_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of a Llama-architecture decoder (see ``from_config`` for the keys read).

    ``rope_scaling`` is kept as sorted ``(key, value)`` pairs so the spec stays
    hashable; ``rope_scaling_dict`` gives it back as a dict.
    """

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                    "head_dim", "vocab_size", "max_position_embeddings"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model {self.name!r}: {key} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name!r}: num_attention_heads ({self.num_heads}) must be a "
                             f"multiple of num_key_value_heads ({self.num_kv_heads})")
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise ValueError(f"model {self.name!r}: rms_norm_eps and rope_theta must be > 0")

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_config(cls, config: dict[str, Any], name: str | None = None) -> ModelSpec:
        """Build a spec from a ``config.json`` dict (legacy or transformers 5.x RoPE keys).

        Args:
            config: the parsed config. Required keys: hidden_size, intermediate_size,
                num_hidden_layers, num_attention_heads, vocab_size.
            name: the spec's name (default: config ``_name_or_path`` or ``"custom"``).

        Returns:
            The spec. Raises ValueError naming missing keys or a non-Llama ``model_type``.
        """
        label = name or config.get("_name_or_path") or "custom"
        missing = [k for k in _REQUIRED if k not in config]
        if missing:
            raise ValueError(f"model config {label!r} is missing required keys: {missing}")
        model_type = config.get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(f"model config {label!r}: model_type {model_type!r} is not supported "
                             "(only 'llama')")
        heads = config["num_attention_heads"]
        rope_theta = config.get("rope_theta")
        scaling = config.get("rope_scaling")
        params = config.get("rope_parameters")  # transformers 5.x: theta and scaling in one dict
        if isinstance(params, dict):
            rope_theta = params.get("rope_theta", rope_theta)
            scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        if scaling is not None and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
            scaling = None
        eos = config.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
        return cls(
            name=label,
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab_size=config["vocab_size"],
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=None if scaling is None else tuple(sorted(scaling.items())),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            hidden_act=config.get("hidden_act", "silu"),
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def load(cls, name_or_path: str | Path) -> ModelSpec:
        """Load a shipped spec by name (``llama-3.2-1b``), a ``config.json`` path, or a model folder.

        Raises:
            ValueError: unknown name (the message lists the shipped names), or a bad config.
            FileNotFoundError: a folder without ``config.json``.
        """
        path = Path(name_or_path)
        shipped = MODELS_DIR / f"{name_or_path}.json"
        if shipped.is_file() and path.name == str(name_or_path):
            return cls.from_config(json.loads(shipped.read_text()), name=str(name_or_path))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"model folder {path} has no config.json")
            return cls.from_config(json.loads((path / "config.json").read_text()), name=path.name)
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
            label = path.parent.name if path.name == "config.json" else path.stem
            return cls.from_config(config, name=label)
        raise ValueError(f"unknown model {str(name_or_path)!r}: not a file or folder, and not a shipped "
                         f"model; shipped: {shipped_models()}")

    # ------------------------------------------------------------ derived shapes
    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_linears(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each fused linear of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {"qkv_proj": (h, self.q_dim + 2 * self.kv_dim), "o_proj": (self.q_dim, h),
                "gate_up": (h, 2 * i), "down": (i, h)}

    def linear_bias_params(self, name: str) -> int:
        """Bias parameters of one fused linear (0 unless attention_bias / mlp_bias)."""
        biased = self.attention_bias if name in ("qkv_proj", "o_proj") else self.mlp_bias
        return self.layer_linears()[name][1] if biased else 0

    # -------------------------------------------------------- parameter counts
    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters the lm_head GEMV reads (the embedding matrix itself when tied)."""
        return self.vocab_size * self.hidden_size

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: linears, their biases, two RMSNorm weights."""
        linears = sum(a * b + self.linear_bias_params(n) for n, (a, b) in self.layer_linears().items())
        return linears + 2 * self.hidden_size

    @property
    def total_params(self) -> int:
        """Stored parameters (tied embeddings counted once), incl. the final norm."""
        head = 0 if self.tie_word_embeddings else self.lm_head_params
        return self.embedding_params + self.num_layers * self.layer_params + self.hidden_size + head

    # ------------------------------------------------------------------- bytes
    def layer_weight_bytes(self, weight_dtype: str = "bf16") -> float:
        """Bytes of one decoder layer's weights: linears at ``weight_dtype``, biases and norms bf16."""
        total = 2 * self.hidden_size * ACT_BYTES
        for name, (a, b) in self.layer_linears().items():
            total += linear_bytes(a, b, weight_dtype) + self.linear_bias_params(name) * ACT_BYTES
        return total

    def weight_bytes(self, weight_dtype: str = "bf16") -> float:
        """Stored weight bytes: layers at ``weight_dtype``; embeddings, lm_head, norms bf16."""
        head = 0 if self.tie_word_embeddings else self.lm_head_params
        bf16 = (self.embedding_params + head + self.hidden_size) * ACT_BYTES
        return bf16 + self.num_layers * self.layer_weight_bytes(weight_dtype)

    def kv_bytes_per_token_layer(self, kv_dtype: str = "bf16") -> int:
        """KV cache bytes of one token in one layer (K and V, scales included)."""
        elem, scale = kv_format(kv_dtype)
        return 2 * self.num_kv_heads * (self.head_dim * elem + scale)

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> int:
        """KV cache bytes of one token across all layers (K and V, scales included)."""
        return self.num_layers * self.kv_bytes_per_token_layer(kv_dtype)


def shipped_models() -> list[str]:
    """Names of the configurations shipped in ``sim/models``."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))
