"""Roofline model: hand arithmetic, scaling of bounds, tables, plot and CLI handler."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from sim import roofline
from sim.model_spec import ModelSpec

W_1B = 2 * (16 * 60_821_504 + 128256 * 2048 + 2048)  # bf16 layer weights + tied lm_head + final norm


def test_llama_1b_decode_batch1_reads_weights_once() -> None:
    df = roofline.step_ops("llama-3.2-1b", "h100", decode_ctx=[1])
    assert W_1B == 2_471_628_800
    weights = df["total_bytes"].sum()
    assert W_1B < weights < W_1B * 1.002  # plus a few MB of activations
    t = roofline.step_time("llama-3.2-1b", "h100", decode_ctx=[1])
    assert t == pytest.approx(df["total_time_s"].sum())
    assert t == pytest.approx(W_1B / 2.97e12, rel=2e-3)
    assert 0.83e-3 < t < 0.835e-3
    assert set(df["bound"]) == {"memory"}
    row = df.set_index("op").loc["lm_head"]
    assert row["count"] == 1 and row["bytes"] > 128256 * 2048 * 2


def test_gemm_flops_by_hand() -> None:
    df = roofline.step_ops("llama-3.2-1b", "h100", prefill=[(100, 0)], decode_ctx=[5, 7]).set_index("op")
    t = 102
    assert df.loc["qkv_proj", "flops"] == 2 * 2048 * 3072 * t
    assert df.loc["down", "flops"] == 2 * 8192 * 2048 * t
    assert df.loc["qkv_proj", "count"] == 16
    assert df.loc["lm_head", "flops"] == 2 * 2048 * 128256 * 3  # one chunk + two decodes sample
    # attention: 4 * heads * head_dim per pair; causal pairs of a 100-token chunk; decodes read 12 tokens.
    assert df.loc["attention_prefill", "flops"] == 4 * 32 * 64 * (100 * 101 // 2)
    assert df.loc["attention_decode", "flops"] == 4 * 32 * 64 * 12
    assert df.loc["attention_decode", "bytes"] == 2 * 2048 * 2 * 2 + 12 * 2048  # Q in, O out, KV of 12 tokens


def test_step_features_match_scheduler_pairs() -> None:
    f = roofline.step_features([(4, 3), (2, 0, False)], [10])
    assert f["prefill_pairs"] == 4 * 3 + 4 * 5 // 2 + 3
    assert (f["tokens"], f["samples"], f["prefill_ctx"], f["decode_ctx"]) == (7, 2, 3, 10)
    with pytest.raises(ValueError, match="prefill chunk 1: need q >= 1"):
        roofline.step_features([(4, 3), (0, 0)])
    with pytest.raises(ValueError, match="decode 0: context length must be >= 1"):
        roofline.step_features([], [0])


def test_prefill_compute_bound_and_decode_memory_bound() -> None:
    big = roofline.step_ops("llama-3.2-3b", "h100", prefill=[(8192, 0)]).set_index("op")
    for op in ("qkv_proj", "o_proj", "gate_up", "down", "attention_prefill"):
        assert big.loc[op, "bound"] == "compute", op
    small = roofline.step_ops("llama-3.2-3b", "h100", decode_ctx=[4096]).set_index("op")
    assert (small["bound"] == "memory").all()
    assert big.loc["gate_up", "intensity"] > 200 > 10 > small.loc["gate_up", "intensity"]


def test_step_time_scaling() -> None:
    step = lambda **kw: roofline.step_time("llama-3.2-1b", "h100", **kw)  # noqa: E731
    # Memory-bound decodes: 8x the batch costs far less than 8x the time.
    assert step(decode_ctx=[128] * 8) < 1.2 * step(decode_ctx=[128])
    # Compute-bound prefill: twice the sequences about doubles the time; one twice as long costs more
    # (quadratic attention).
    assert step(prefill=[(2048, 0)] * 8) / step(prefill=[(2048, 0)] * 4) == pytest.approx(2.0, rel=0.05)
    assert step(prefill=[(16384, 0)]) > step(prefill=[(2048, 0)] * 8) * 1.2
    # Longer contexts read more KV; quantized weights and KV read fewer bytes.
    assert step(decode_ctx=[65536]) > step(decode_ctx=[1]) + 65535 * 32768 / 2.97e12 * 0.99
    by_dtype = [roofline.step_time("llama-3.2-1b", "h100", decode_ctx=[1], weight_dtype=w)
                for w in ("bf16", "int8", "int4")]
    assert by_dtype[0] > by_dtype[1] > by_dtype[2]
    kv = [roofline.step_ops("llama-3.2-1b", "h100", decode_ctx=[4096], kv_dtype=k).set_index("op")
          .loc["attention_decode", "bytes"] for k in ("bf16", "int8")]
    assert kv[1] < 0.6 * kv[0]


def test_analyze_phases() -> None:
    df = roofline.analyze(ModelSpec.load("llama-3.2-1b"), "h200", batch=4, context=256, phase="both")
    assert set(df["phase"]) == {"prefill", "decode"}
    assert "attention_decode" not in set(df[df["phase"] == "prefill"]["op"])
    assert roofline.analyze("llama-3.2-1b", "h200", 4, 256, "decode")["phase"].eq("decode").all()
    with pytest.raises(ValueError, match="phase must be"):
        roofline.analyze("llama-3.2-1b", "h100", phase="train")


def test_cli_handler_writes_csv_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    roofline.add_roofline_args(parser)
    args = parser.parse_args(["--model", "llama-3.2-1b", "--gpu", "h100", "--batch", "2", "--context", "64",
                              "--phase", "both", "--out", str(tmp_path / "rl")])
    assert roofline.roofline_command(args) == 0
    out = capsys.readouterr().out
    assert "[decode]" in out and "[prefill]" in out and "qkv_proj" in out and "tokens/s" in out
    csv = pd.read_csv(tmp_path / "rl" / "roofline.csv")
    assert {"op", "count", "flops", "bytes", "intensity", "bound", "time_s", "phase"} <= set(csv.columns)
    png = (tmp_path / "rl" / "roofline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_handler_without_out_prints_only(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(model="llama-3.2-3b", gpu="a100", batch=1, context=10, phase="decode",
                              weight_dtype="int4", kv_dtype="fp8", out=None)
    assert roofline.roofline_command(args) == 0
    out = capsys.readouterr().out
    assert "[decode]" in out and "[prefill]" not in out and "wrote" not in out
