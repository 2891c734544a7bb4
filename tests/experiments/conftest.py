"""A tiny random Llama checkpoint for the engine-backed CLI tests (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported (no GPU here)

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 300,
    "max_position_embeddings": 1024, "tie_word_embeddings": True, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64},
    "initializer_range": 0.1, "bos_token_id": 1, "eos_token_id": 2, "rms_norm_eps": 1e-5,
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from experiments.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(TINY_CONFIG, tmp_path_factory.mktemp("tiny_random"), dtype="fp32", device="cpu")
