"""Load a Llama 3.x checkpoint from a Hugging Face style folder (safetensors shards).

Q, K and V projections are fused into one [Hq*D + 2*Hkv*D, H] weight and the
gate and up projections into one [2I, H] weight at load time, so each layer
runs two input GEMMs instead of five.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from engine.model_config import LlamaSpec, read_llama_spec

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class LayerTensors:
    """One decoder layer's weights, projections fused."""

    input_norm: torch.Tensor
    qkv: torch.Tensor
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


@dataclass
class LlamaTensors:
    """All weights of a Llama model on their device, in the model dtype."""

    embed: torch.Tensor
    layers: list[LayerTensors]
    norm: torch.Tensor
    lm_head: torch.Tensor  # the embedding itself when tied


class _Shards:
    """Maps tensor names to the shard file holding them and reads them."""

    def __init__(self, folder: Path) -> None:
        index = folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({exc})") from exc
            self.where = {name: folder / file for name, file in weight_map.items()}
            for file in sorted(set(self.where.values())):
                if not file.is_file():
                    raise FileNotFoundError(f"{index} names shard {file.name}, which is not in {folder}")
        elif (folder / SINGLE_FILE).is_file():
            with safe_open(str(folder / SINGLE_FILE), framework="pt") as f:
                self.where = {name: folder / SINGLE_FILE for name in f.keys()}  # noqa: SIM118
        else:
            raise FileNotFoundError(f"model folder {folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")
        self._open: dict[Path, object] = {}

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor ``name`` (on the CPU, as stored), checked against ``shape``."""
        file = self.where.get(name)
        if file is None:
            raise ValueError(f"checkpoint is missing tensor {name!r}")
        handle = self._open.get(file)
        if handle is None:
            handle = self._open[file] = safe_open(str(file), framework="pt")
        tensor = handle.get_tensor(name)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{file.name}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {shape} from config.json")
        return tensor


def load_llama(folder: str | Path, dtype: torch.dtype,
               device: torch.device | str) -> tuple[LlamaSpec, LlamaTensors]:
    """Read config.json and the safetensors weights of a Llama model.

    Args:
        folder: the model folder.
        dtype: dtype of the returned weights.
        device: where the weights go.

    Returns:
        ``(spec, tensors)``.

    Raises:
        FileNotFoundError: no config.json or no weight files.
        ValueError: a non-Llama config, a missing tensor or a shape mismatch (named).
    """
    folder = Path(folder)
    spec = read_llama_spec(folder)
    shards = _Shards(folder)
    h, inter, v = spec.hidden_size, spec.intermediate_size, spec.vocab_size
    q, kv = spec.q_size, spec.kv_size

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()

    layers = []
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([shards.get(p + "self_attn.q_proj.weight", (q, h)),
                         shards.get(p + "self_attn.k_proj.weight", (kv, h)),
                         shards.get(p + "self_attn.v_proj.weight", (kv, h))])
        gate_up = torch.cat([shards.get(p + "mlp.gate_proj.weight", (inter, h)),
                             shards.get(p + "mlp.up_proj.weight", (inter, h))])
        layers.append(LayerTensors(
            input_norm=put(shards.get(p + "input_layernorm.weight", (h,))),
            qkv=put(qkv),
            o=put(shards.get(p + "self_attn.o_proj.weight", (h, q))),
            post_norm=put(shards.get(p + "post_attention_layernorm.weight", (h,))),
            gate_up=put(gate_up),
            down=put(shards.get(p + "mlp.down_proj.weight", (h, inter))),
        ))
    embed = put(shards.get("model.embed_tokens.weight", (v, h)))
    if spec.tie_word_embeddings:
        lm_head = embed
    elif shards.has("lm_head.weight"):
        lm_head = put(shards.get("lm_head.weight", (v, h)))
    else:
        raise ValueError(f"{folder}: checkpoint is missing tensor 'lm_head.weight' "
                         "and config.json does not tie word embeddings")
    norm = put(shards.get("model.norm.weight", (h,)))
    return spec, LlamaTensors(embed=embed, layers=layers, norm=norm, lm_head=lm_head)
