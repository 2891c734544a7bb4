"""Read a Llama 3.x ``config.json`` into a small, validated shape description."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LLAMA_ARCHITECTURES = ("LlamaForCausalLM",)
ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class LlamaSpec:
    """The shapes and constants of a Llama model.

    Args:
        hidden_size: model width.
        intermediate_size: MLP width.
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA).
        head_dim: per-head width.
        vocab_size: vocabulary size.
        rms_norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base.
        rope_scaling: Llama 3 scaling (``rope_type`` 'llama3' and the ``ROPE_KEYS``) or None.
        max_position_embeddings: longest supported context.
        tie_word_embeddings: the LM head reuses the embedding matrix.
        eos_token_ids: end-of-sequence token ids named in the config files.
        bos_token_id: beginning-of-sequence id, if named.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "vocab_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads ({self.num_heads}) is not a multiple of "
                             f"num_key_value_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, float] | None]:
    """RoPE base and scaling from either the transformers 5.x or the older keys."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = params["rope_theta"]
        scaling: dict[str, Any] | None = params
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = cfg.get("rope_scaling")
    if scaling is None:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"unsupported rope type {kind!r} (only 'default' and 'llama3')")
    missing = [k for k in ROPE_KEYS if k not in scaling]
    if missing:
        raise ValueError(f"llama3 rope scaling lacks {missing}")
    return float(theta), {"rope_type": "llama3", **{k: float(scaling[k]) for k in ROPE_KEYS}}


def read_llama_spec(folder: str | Path) -> LlamaSpec:
    """Parse ``folder/config.json`` (and ``generation_config.json`` for EOS ids).

    Args:
        folder: a Hugging Face style model folder.

    Returns:
        The model's ``LlamaSpec``.

    Raises:
        FileNotFoundError: no folder or no config.json in it.
        ValueError: not a Llama model, or a malformed / unsupported config.
    """
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and not any(a in LLAMA_ARCHITECTURES for a in archs):
        raise ValueError(f"{path}: architecture {archs or cfg.get('model_type')!r} is not a Llama model "
                         f"(expected one of {LLAMA_ARCHITECTURES})")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError(f"{path}: attention_bias / mlp_bias are not supported (Llama 3 has no biases)")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{path}: hidden_act {act!r} is not supported (only 'silu')")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        theta, scaling = _rope(cfg)
        eos = _ids(cfg.get("eos_token_id"))
        gen_path = folder / "generation_config.json"
        if gen_path.is_file():
            eos = tuple(dict.fromkeys(eos + _ids(json.loads(gen_path.read_text()).get("eos_token_id"))))
        return LlamaSpec(
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab_size=int(cfg["vocab_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_token_ids=eos,
            bos_token_id=cfg.get("bos_token_id"),
        )
    except KeyError as exc:
        raise ValueError(f"{path}: missing key {exc.args[0]!r}") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
