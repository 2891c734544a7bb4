"""Random-weight Llama checkpoints in the Hugging Face layout, fast enough for a 1B model on a GPU.

``servegym random-checkpoint --config sim/models/llama-3.2-1b.json --out DIR`` writes
``DIR/config.json`` (the given config, with ``torch_dtype`` set) and ``DIR/model.safetensors``.
Tensors are drawn directly on the target device with a seeded generator, scaled like the
transformers initialisation (normal with std ``initializer_range`` for embeddings and
projections, ones for the RMSNorm weights), so activations stay in a sane range. Embeddings
are tied when the config says so (no ``lm_head.weight`` is written).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}
DEFAULT_STD = 0.02


def tensor_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor of a Llama checkpoint described by ``cfg`` (a config.json)."""
    where = "config"
    try:
        h, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        layers, heads, vocab = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"]), int(cfg["vocab_size"])
    except KeyError as err:
        raise ValueError(f"{where}: missing key {err.args[0]!r}") from None
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    q, kv = heads * head_dim, kv_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                   p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                   p + "mlp.down_proj.weight": (h, inter)}
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, h)
    return shapes


def write_random_checkpoint(config: str | Path | dict[str, Any], out: str | Path, dtype: str = "bf16",
                            device: str = "auto", seed: int = 0) -> Path:
    """Write a random-weight checkpoint.

    Args:
        config: a config.json path, or its parsed contents.
        out: the output folder (created).
        dtype: ``bf16``, ``fp16`` or ``fp32`` (long names accepted).
        device: where the tensors are drawn ('auto': CUDA when available, 'cpu', 'cuda', 'cuda:N').
        seed: generator seed (same seed, same weights on the same device).

    Returns:
        The output folder.

    Raises:
        FileNotFoundError: no config file. ValueError: a bad dtype or a config lacking shapes.
    """
    import torch
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if isinstance(config, dict):
        cfg = dict(config)
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (--config)")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    shapes = tensor_shapes(cfg)
    torch_dtype = getattr(torch, DTYPES[dtype])
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} but CUDA is not available")
    std = float(cfg.get("initializer_range", DEFAULT_STD))
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if len(shape) == 1:  # RMSNorm weights start at one
            t = torch.ones(shape, dtype=torch_dtype, device=dev)
        else:
            t = torch.randn(shape, generator=gen, dtype=torch_dtype, device=dev).mul_(std)
        tensors[name] = t.cpu().contiguous()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    cfg["torch_dtype"] = DTYPES[dtype]
    cfg.setdefault("architectures", ["LlamaForCausalLM"])
    cfg.setdefault("model_type", "llama")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def cmd_random_checkpoint(ns: argparse.Namespace) -> int:
    """``servegym random-checkpoint``."""
    t0 = time.perf_counter()
    folder = write_random_checkpoint(ns.config, ns.out, ns.dtype, ns.device, ns.seed)
    size = (folder / "model.safetensors").stat().st_size
    print(f"wrote {folder}/config.json and model.safetensors ({size / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t0:.1f}s")
    return 0


def add_random_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a Llama config.json (e.g. sim/models/llama-3.2-1b.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="bf16", help="bf16, fp16 or fp32")
    p.add_argument("--device", default="auto", help="where to draw the weights: auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
