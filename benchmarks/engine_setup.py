"""Engine benchmark set-up: random Llama checkpoints of the real shapes, the offline workload and the
``transformers`` baselines on the same weights (CUDA only; nothing runs at import)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    """One progress line of the engine benchmark."""
    print(f"[bench_engine] {msg}", flush=True)


MODELS_DIR = Path(__file__).resolve().parents[1] / "sim" / "models"
PUBLIC_SHAPES = {  # used only if sim/models lacks the config files
    "llama-3.2-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64},
    "llama-3.2-3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128},
}
COMMON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
          "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "tie_word_embeddings": True,
          "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001,
          "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
MAX_MODEL_LEN = 4096
TOKEN_BUDGET = 16384  # one step holds the 8 x 2048 prefill
HF_OFFLINE = (8, 128)  # transformers offline baseline: requests, new tokens each


def hf_config(name: str) -> dict:
    """config.json of a model of the benchmark: the shipped one in sim/models, else the public shapes."""
    path = MODELS_DIR / f"{name}.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {**COMMON, **PUBLIC_SHAPES[name]}
    return {**cfg, "torch_dtype": "bfloat16"}


def write_checkpoint(name: str, folder: Path) -> dict:
    """Random bf16 weights (N(0, 0.02), unit norms) drawn on the GPU, saved as HF Llama tensors."""
    from safetensors.torch import save_file

    cfg = hf_config(name)
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter)})
    gen = torch.Generator(device="cuda").manual_seed(0)
    tensors = {}
    for key, shape in shapes.items():
        if len(shape) == 1:
            tensors[key] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32).mul_(0.02)
            tensors[key] = t.to(torch.bfloat16).cpu()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg))
    return cfg


def offline_requests(n: int, vocab: int, lo: int = 100, hi: int = 1024, seed: int = 0) -> list:
    from policies.types import Request

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, o = rng.randint(lo, hi), rng.randint(lo, hi)
        ids = tuple(rng.randrange(vocab) for _ in range(p))
        out.append(Request(f"r{i}", 0.0, p, o, prompt_token_ids=ids))
    return out


def hf_baselines(folder: Path, requests: list, vocab: int) -> dict[str, float]:
    """transformers (eager) decode tok/s at batch 1 with a static cache, and offline useful tok/s."""
    from transformers import LlamaForCausalLM

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).to("cuda").eval()
    log(f"  transformers model loaded in {time.perf_counter() - t0:.1f}s")
    kw = {"do_sample": False, "pad_token_id": 0, "disable_compile": True}
    try:
        ids = torch.randint(0, vocab, (1, 128), device="cuda")

        def gen(n: int) -> float:
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, cache_implementation="static", **kw)
            torch.cuda.synchronize()
            return time.perf_counter() - t

        gen(16)  # warm-up
        out["decode"] = 48 / (gen(64) - gen(16))
    except Exception as e:  # the engine's figures do not depend on the baseline
        log(f"  transformers decode baseline failed: {type(e).__name__}: {e}")
    try:
        n, new = HF_OFFLINE
        prompts = [list(r.prompt_token_ids) for r in requests[:n]]
        longest = max(map(len, prompts))
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device="cuda")
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, **kw)
        torch.cuda.synchronize()
        out["offline"] = n * new / (time.perf_counter() - t)
    except Exception as e:
        log(f"  transformers offline baseline failed: {type(e).__name__}: {e}")
    return out  # the caller frees the model's memory (gc + empty_cache) once this frame is gone
