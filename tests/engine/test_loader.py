"""Loader: config parsing (old and new rope keys), sharded checkpoints, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import EngineConfig
from engine.loader import load_llama
from engine.model_config import read_llama_spec


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_spec_from_new_and_old_keys(tiny_llama, tiny_llama_old_keys):
    new, old = read_llama_spec(tiny_llama), read_llama_spec(tiny_llama_old_keys)
    assert new == old
    assert new.rope_theta == 500000.0 and new.rope_scaling["factor"] == 8.0
    assert (new.num_heads, new.num_kv_heads, new.head_dim, new.tie_word_embeddings) == (8, 2, 8, True)
    assert 2 in new.eos_token_ids


def test_fused_weights(tiny_llama):
    spec, t = load_llama(tiny_llama, torch.float32, "cpu")
    raw = load_file(str(tiny_llama / "model.safetensors"))
    q, k, v = (raw[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(t.layers[1].qkv, torch.cat([q, k, v]))
    assert t.layers[0].gate_up.shape == (2 * spec.intermediate_size, spec.hidden_size)
    assert t.lm_head is t.embed


def test_sharded_checkpoint(tiny_llama, tmp_path):
    raw = load_file(str(tiny_llama / "model.safetensors"))
    names = sorted(raw)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: raw[n] for n in part}, str(tmp_path / file))
        weight_map.update({n: file for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(tiny_llama / "config.json", tmp_path / "config.json")
    _, t = load_llama(tmp_path, torch.float32, "cpu")
    assert torch.equal(t.norm, raw["model.norm.weight"])


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_llama(tmp_path, torch.float32, "cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_llama(tmp_path / "nope", torch.float32, "cpu")


def test_non_llama_architecture(tiny_llama, tmp_path):
    folder = copy_model(tiny_llama, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'MistralForCausalLM'.* is not a Llama model"):
        load_llama(folder, torch.float32, "cpu")


def test_unsupported_rope_and_bad_json(tiny_llama, tmp_path):
    folder = copy_model(tiny_llama, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"]["rope_type"] = "yarn"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json: unsupported rope type 'yarn'"):
        read_llama_spec(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_llama_spec(folder)


def test_missing_tensor_and_shape_mismatch(tiny_llama, tmp_path):
    raw = load_file(str(tiny_llama / "model.safetensors"))
    folder = copy_model(tiny_llama, tmp_path / "m")
    del raw["model.layers.1.mlp.up_proj.weight"]
    save_file(raw, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_llama(folder, torch.float32, "cpu")
    raw["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 64)
    save_file(raw, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has "
                                         r"shape \(3, 64\), expected \(128, 64\)"):
        load_llama(folder, torch.float32, "cpu")


def test_no_weight_files(tiny_llama, tmp_path):
    shutil.copy(tiny_llama / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
        load_llama(tmp_path, torch.float32, "cpu")


@pytest.mark.parametrize(("field", "value", "msg"), [
    ("dtype", "fp64", "EngineConfig.dtype"), ("device", "tpu", "EngineConfig.device"),
    ("kv_cache_dtype", "fp4", "EngineConfig.kv_cache_dtype"), ("quantization", "gptq", "quantization"),
    ("gpu_memory_utilization", 1.5, "gpu_memory_utilization"), ("block_size", 0, "block_size"),
    ("cuda_graph_batch_sizes", (4, 2), "strictly increasing"), ("num_gpu_blocks", 0, "num_gpu_blocks"),
])
def test_engine_config_validation(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        EngineConfig("m", **{field: value})
