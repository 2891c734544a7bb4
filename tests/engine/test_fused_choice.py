"""engine.fused_choice and the model's fused decode layers (Triton interpreter without a GPU, fake timer)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch

from engine.fused_choice import FusedKernels, choose_fused, default_fused_kernels
from engine.linear import GEMV_MAX_ROWS
from engine.model_runner import ModelRunner
from kernels.gemv_bf16 import GemvConfig
from policies.sequence import Sequence
from policies.types import StepPlan
from tests.engine.test_model import chunked_logits, make_seq, runner

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _timer(table: dict[str, float], calls: list[str] | None = None) -> Callable[[str, Callable[[], object]], float]:
    """Seconds by label (1 s when absent), after one run of the timed function."""

    def timer(label: str, fn: Callable[[], object]) -> float:
        fn()
        if calls is not None:
            calls.append(label)
        return table.get(label, 1.0)

    return timer


def _kernels(**kw: object) -> FusedKernels:
    """The real fused kernels with two candidates of few programs each (the interpreter runs programs one
    by one): whole rows in 16-row blocks, and 8-row blocks with K split in two (not with SwiGLU)."""

    def candidates(n: int, k: int, dev: torch.device, glu: bool) -> list[GemvConfig]:
        return [GemvConfig(16, 64, 4), GemvConfig(8, 32, 2, 1 if glu else 2)]

    return dataclasses.replace(default_fused_kernels(), candidates=candidates, **kw)


def _decoding(r: ModelRunner, n: int) -> list[Sequence]:
    """``n`` sequences with their prompts but the last token in the cache, ready for one decode step."""
    gen = torch.Generator().manual_seed(n)
    seqs = [make_seq(f"s{i}", torch.randint(0, 300, (5 + 3 * i,), generator=gen).tolist(), 6 * i)
            for i in range(n)]
    for s in seqs:
        chunked_logits(r, s, [s.prompt_len - 1])
        s.num_computed = s.prompt_len - 1
    return seqs


def _unfused_only(r: ModelRunner) -> None:
    """Make the unfused layer ops fail, so a passing forward pass took the fused layers."""
    def fail(*args: object) -> None:
        raise AssertionError("the fused decode path must not call the unfused norm")

    r.model.ops = dataclasses.replace(r.model.ops, fused_add_rms_norm=fail)


def test_fused_layers_are_chosen_and_match_the_unfused_decode(tiny_llama):
    r = runner(tiny_llama, dtype="bfloat16", device=str(DEV), attention_backend="triton", enforce_eager=True)
    seqs = _decoding(r, GEMV_MAX_ROWS)
    plan = StepPlan(9, 0.0, decodes=seqs)
    unfused = r.logits(plan)[0]
    calls: list[str] = []
    table = {"chain:unfused": 2e-6, "chain:fused": 1e-6, "chain:unfused:rows=2": 2e-6, "chain:fused:rows=2": 1e-6,
             "chain:unfused:rows=4": 2e-6, "chain:fused:rows=4": 1e-6}
    choice = choose_fused(r.model, DEV, timer=_timer(table, calls), kernels=_kernels())
    assert choice.chosen and r.model.fused_decode() and choice.rows == r.model.fused_rows == GEMV_MAX_ROWS
    assert choice.unfused_us == pytest.approx(1.0) and choice.fused_us == pytest.approx(0.5)  # 2 layers
    assert [t.role for t in choice.roles] == ["qkv", "o", "gate_up", "down"]
    assert all(t.config is not None and t.note == "" for t in choice.roles)
    assert calls[-6:] == ["chain:unfused", "chain:fused", "chain:unfused:rows=2", "chain:fused:rows=2",
                          "chain:unfused:rows=4", "chain:fused:rows=4"]
    assert "-> fused up to 4 rows" in choice.summary()[0]
    _unfused_only(r)
    fused = r.logits(plan)[0]
    assert fused.shape == unfused.shape == (GEMV_MAX_ROWS, 300)
    err = (fused - unfused).abs().max() / unfused.std()
    assert err < 0.05, f"fused decode differs from unfused by {err:.3f} std"  # bf16 rounding order only
    assert (fused.argmax(-1) == unfused.argmax(-1)).all()


def test_more_rows_than_the_gemv_path_take_the_unfused_layers(tiny_llama):
    r = runner(tiny_llama, dtype="bfloat16", device=str(DEV), attention_backend="triton", enforce_eager=True)
    seqs = _decoding(r, GEMV_MAX_ROWS + 1)
    assert choose_fused(r.model, DEV, timer=_timer({"chain:fused": 1e-9}), kernels=_kernels()).chosen
    for layer in r.model.layers:  # fused kernels that would fail if called
        for lin in (layer.qkv, layer.gate_up):
            lin.norm_gemv = lambda *a: pytest.fail("fused kernel called for a large step")
    logits = r.logits(StepPlan(3, 0.0, decodes=seqs))[0]
    assert logits.shape == (GEMV_MAX_ROWS + 1, 300) and torch.isfinite(logits).all()


def test_fused_rows_end_where_the_fused_chain_loses(tiny_llama):
    """Fused faster at 1 and 2 rows, slower at 4: steps of 3-4 tokens take the unfused layers."""
    r = runner(tiny_llama, dtype="bfloat16", device=str(DEV), attention_backend="triton", enforce_eager=True)
    table = {"chain:fused": 1e-9, "chain:fused:rows=2": 1e-9, "chain:fused:rows=4": 2.0}
    choice = choose_fused(r.model, DEV, timer=_timer(table), kernels=_kernels())
    assert choice.chosen and choice.rows == r.model.fused_rows == 2
    assert [m for m, _, _ in choice.by_rows] == [2, 4]
    assert choice.summary()[1].startswith("  by rows (unfused / fused): 2: 500000.0 / 0.0 us, 4: 500000.0 / ")
    fused_calls: list[int] = []
    for layer in r.model.layers:  # gate_up: the qkv GEMV may be its RoPE variant (fused_rope)
        kernel = layer.gate_up.norm_gemv
        layer.gate_up.norm_gemv = lambda x, *a, kernel=kernel: fused_calls.append(x.shape[0]) or kernel(x, *a)
    for n, fused in ((2, True), (3, False)):
        fused_calls.clear()
        logits = r.logits(StepPlan(n, 0.0, decodes=_decoding(r, n)))[0]
        assert torch.isfinite(logits).all()
        assert fused_calls == ([n] * len(r.model.layers) if fused else [])


def test_slower_fused_chain_is_not_chosen(tiny_llama):
    r = runner(tiny_llama, dtype="bfloat16", device=str(DEV), attention_backend="triton", enforce_eager=True)
    choice = choose_fused(r.model, DEV, timer=_timer({"chain:unfused": 1e-6, "chain:fused": 2e-6}),
                          kernels=_kernels())
    assert not choice.chosen and not r.model.fused_decode()
    assert all(lin.norm_gemv is None and lin.residual_gemv is None
               for layer in r.model.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down))
    assert "-> unfused" in choice.summary()[0]


def test_a_role_without_a_passing_config_keeps_the_model_unfused(tiny_llama):
    r = runner(tiny_llama, dtype="bfloat16", device=str(DEV), attention_backend="triton", enforce_eager=True)
    def broken(*args: object, **kw: object) -> torch.Tensor:
        raise RuntimeError("cannot compile here")

    kernels = _kernels(residual_gemv=broken)
    calls: list[str] = []
    choice = choose_fused(r.model, DEV, timer=_timer({"chain:fused": 1e-9}, calls), kernels=kernels)
    assert not choice.chosen and not r.model.fused_decode()
    assert "no passing config for o, down" in choice.note and "chain:fused" not in calls
    o = choice.roles[1]
    assert o.config is None and math.isnan(o.us) and "RuntimeError: cannot compile here" in o.note


def test_quantized_or_fp32_models_are_not_fused(tiny_llama_wide):
    r = runner(tiny_llama_wide, dtype="bfloat16", device=str(DEV), quantization="int8", enforce_eager=True)
    choice = choose_fused(r.model, DEV, timer=_timer({}))
    assert not choice.chosen and "full-precision bf16/fp16" in choice.note
    r = runner(tiny_llama_wide, device=str(DEV), attention_backend="torch", enforce_eager=True)  # float32
    assert not choose_fused(r.model, DEV, timer=_timer({})).chosen


def test_a_failed_chain_timing_leaves_the_model_unfused(tiny_llama):
    r = runner(tiny_llama, dtype="bfloat16", device=str(DEV), attention_backend="triton", enforce_eager=True)

    def timer(label: str, fn: Callable[[], object]) -> float:
        if label == "chain:fused":
            raise RuntimeError("capture failed")
        return 1.0

    with pytest.raises(RuntimeError, match="capture failed"):
        choose_fused(r.model, DEV, timer=timer, kernels=_kernels())
    assert not r.model.fused_decode()


def test_fused_rope_writes_the_cache_in_the_qkv_gemv_and_changes_no_token(tiny_llama):
    """With ``fused_rope`` the fused decode layers run RoPE and the KV write inside the qkv GEMV
    (kernels/gemv_rope.py): the attention backend's own RoPE kernel is never called, the cache holds what it
    would have written, and the logits of this step and of the next one (reading that cache) agree."""
    outs = []
    for fused_rope in (False, True):
        r = runner(tiny_llama, dtype="bfloat16", device=str(DEV), attention_backend="triton", enforce_eager=True)
        assert choose_fused(r.model, DEV, timer=_timer({"chain:fused": 1e-9}), kernels=_kernels()).chosen
        assert all(layer.qkv.norm_rope_gemv is not None for layer in r.model.layers)
        r.model.fused_rope = fused_rope
        (seq,) = _decoding(r, 1)  # the prompt's prefill takes the unfused layers
        if fused_rope:
            r.attention.rope_and_write = lambda *a: pytest.fail("the fused path must not call rope_and_write")
        first = r.logits(StepPlan(9, 0.0, decodes=[seq]))[0]
        cache = r.kv.layer(0)[0].clone()
        seq.emit(0.0, [int(first[0].argmax())])
        seq.num_computed += 1
        second = r.logits(StepPlan(10, 0.0, decodes=[seq]))[0]
        outs.append((first, second, cache))
    for want, got in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=2**-7 * want.float().abs().max().item())
    assert (outs[0][1].argmax(-1) == outs[1][1].argmax(-1)).all()


def test_fused_rope_flag_must_be_a_bool() -> None:
    from engine.config import EngineConfig

    with pytest.raises(ValueError, match="EngineConfig.fused_rope: must be a bool, got 1"):
        EngineConfig("m", fused_rope=1)
