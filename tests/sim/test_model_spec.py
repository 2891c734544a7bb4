"""ModelSpec: shipped configs, parameter and byte counts by hand, config variants, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.model_spec import MODELS_DIR, ModelSpec, linear_bytes, shipped_models

# Llama-3.2-1B by hand: h=2048, q=2048, kv=512, I=8192, L=16, V=128256.
EMB_1B = 128256 * 2048  # 262,668,288
LAYER_1B = 2048 * (2048 + 2 * 512) + 2048 * 2048 + 3 * 2048 * 8192 + 2 * 2048  # 60,821,504
TOTAL_1B = EMB_1B + 16 * LAYER_1B + 2048  # tied lm_head counted once, plus the final norm


def test_shipped_models_listed() -> None:
    assert {"llama-3.2-1b", "llama-3.2-3b"} <= set(shipped_models())


def test_llama_1b_shapes_and_params_by_hand() -> None:
    m = ModelSpec.load("llama-3.2-1b")
    assert (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim) == (2048, 16, 32, 8, 64)
    assert m.tie_word_embeddings and m.rope_theta == 500000.0 and m.rms_norm_eps == 1e-5
    assert m.rope_scaling_dict == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert m.eos_token_ids == (128001, 128008, 128009) and m.bos_token_id == 128000
    assert m.embedding_params == EMB_1B == m.lm_head_params
    assert m.layer_params == LAYER_1B == 60_821_504
    assert m.total_params == TOTAL_1B == 1_235_814_400
    assert m.weight_bytes("bf16") == 2 * TOTAL_1B


def test_llama_3b_params_by_hand() -> None:
    m = ModelSpec.load("llama-3.2-3b")
    layer = 3072 * (3072 + 2 * 1024) + 3072 * 3072 + 3 * 3072 * 8192 + 2 * 3072
    assert m.layer_params == layer
    assert m.total_params == 128256 * 3072 + 28 * layer + 3072 == 3_212_749_824


def test_untied_embeddings_store_lm_head() -> None:
    config = json.loads((MODELS_DIR / "llama-3.2-1b.json").read_text()) | {"tie_word_embeddings": False}
    assert ModelSpec.from_config(config).total_params == TOTAL_1B + EMB_1B


def test_quantized_weight_bytes_by_hand() -> None:
    m = ModelSpec.load("llama-3.2-1b")
    # int4: half a byte per weight + one bf16 scale per 128 inputs per output; norms/embedding stay bf16.
    linears = [(2048, 3072), (2048, 2048), (2048, 16384), (8192, 2048)]
    data = sum(a * b for a, b in linears) / 2
    scales = sum(a // 128 * b * 2 for a, b in linears)
    assert m.layer_weight_bytes("int4") == data + scales + 2 * 2048 * 2
    assert m.weight_bytes("int4") == 16 * (data + scales + 2 * 2048 * 2) + (EMB_1B + 2048) * 2
    # int8: one byte per weight + one fp32 scale per output channel.
    assert linear_bytes(2048, 3072, "int8") == 2048 * 3072 + 3072 * 4


def test_kv_bytes_per_token() -> None:
    m1, m3 = ModelSpec.load("llama-3.2-1b"), ModelSpec.load("llama-3.2-3b")
    assert m1.kv_bytes_per_token("bf16") == 16 * 2 * 8 * 64 * 2 == 32768
    # int8/fp8: 1 byte per element + an fp32 scale per (token, head) for K and for V.
    assert m1.kv_bytes_per_token("int8") == m1.kv_bytes_per_token("fp8") == 16 * 2 * 8 * (64 + 4)
    assert m3.kv_bytes_per_token("bf16") == 28 * 2 * 8 * 128 * 2


def test_transformers5_rope_parameters_equal_legacy_keys(tmp_path: Path) -> None:
    legacy = json.loads((MODELS_DIR / "llama-3.2-3b.json").read_text())
    new = {k: v for k, v in legacy.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    new["rope_parameters"] = legacy["rope_scaling"] | {"rope_theta": legacy["rope_theta"]}
    new["dtype"] = "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(new))
    loaded = ModelSpec.load(tmp_path)  # a model folder
    assert loaded.name == tmp_path.name
    assert loaded == ModelSpec.from_config(legacy, name=tmp_path.name)
    assert ModelSpec.load(tmp_path / "config.json") == loaded  # a config path


def test_defaults_for_optional_keys() -> None:
    m = ModelSpec.from_config({"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "vocab_size": 1000})
    assert (m.num_kv_heads, m.head_dim, m.rope_scaling, m.tie_word_embeddings) == (4, 64, None, False)


def test_unknown_name_lists_shipped_models() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'llama-9b'.*llama-3\.2-1b.*llama-3\.2-3b"):
        ModelSpec.load("llama-9b")


def test_missing_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"missing required keys: \['intermediate_size', 'vocab_size'\]"):
        ModelSpec.from_config({"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}, name="x")


def test_bad_configs_rejected(tmp_path: Path) -> None:
    base = json.loads((MODELS_DIR / "llama-3.2-1b.json").read_text())
    with pytest.raises(ValueError, match="model_type 'mistral' is not supported"):
        ModelSpec.from_config(base | {"model_type": "mistral"})
    with pytest.raises(ValueError, match=r"num_attention_heads \(32\) must be a multiple of.*\(6\)"):
        ModelSpec.from_config(base | {"num_key_value_heads": 6})
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        ModelSpec.load(tmp_path)
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        ModelSpec.load(bad)


def test_param_counts_match_transformers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    for name in ("llama-3.2-1b", "llama-3.2-3b"):
        config = transformers.LlamaConfig(**json.loads((MODELS_DIR / f"{name}.json").read_text()))
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(config)
        assert sum(p.numel() for p in model.parameters()) == ModelSpec.load(name).total_params
        # A config written by this transformers version loads to the same shapes.
        assert ModelSpec.from_config(config.to_dict(), name=name) == ModelSpec.load(name)
