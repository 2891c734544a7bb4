"""Engine A/B at batch-1 decode: the same benchmark once per value of one engine flag, in one process
(``python -m benchmarks.bench_engine --decode-ab FLAG=V1,V2 [--model NAME] [--set FLAG=V ...]``)."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_engine import _decode_case
from benchmarks.common import measure_copy_bandwidth
from benchmarks.engine_setup import MAX_MODEL_LEN, TOKEN_BUDGET, log, write_checkpoint


def decode_variants(variants: tuple[dict, ...], model: str = "llama-3.2-1b") -> list[dict]:
    """The batch-1 decode once per variant of the engine's flags (e.g. ``{"pdl": False}``), in one process
    and in the given order: each flag's effect against a reference measured on the same machine. The
    first engine of a process is the fair one for host time (a later one's graph launches are slower on
    the host, whichever variant it is); the graph replay time is not affected."""
    from engine import LLM

    bw = measure_copy_bandwidth()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_variants_") as tmp:
        folder = Path(tmp)
        write_checkpoint(model, folder)
        for flags in variants:
            llm = LLM(str(folder), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, token_budget=TOKEN_BUDGET,
                      gpu_memory_utilization=0.85, **flags)
            size = model.rsplit("-", 1)[-1].upper()
            tag = f"{size} " + " ".join(f"{k}={v}" for k, v in flags.items())
            fused = llm.runner.fused_choice is not None and llm.runner.fused_choice.chosen
            log(f"{tag}: fused decode layers {fused}, pdl {llm.runner.pdl}")
            rows += _decode_case(llm, tag, bw, {}, profile_kernels=size == "1B")
            del llm
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def _value(text: str) -> object:
    """A flag value: true/false -> bool, none -> None, an int or float, else the text."""
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_variants(args: list[str]) -> tuple[tuple[dict, ...], str]:
    """``FLAG=V1,V2 [--model NAME] [--set FLAG=V ...]`` -> one flags dict per value (true/false become
    bools, none None, numbers int or float), each holding the ``--set`` flags too."""
    model, fixed = "llama-3.2-1b", {}
    usage = "usage: python -m benchmarks.bench_engine --decode-ab FLAG=V1,V2 [--model NAME] [--set FLAG=V ...]"
    while "--model" in args or "--set" in args:
        i = args.index("--model") if "--model" in args else args.index("--set")
        if i + 1 >= len(args) or (args[i] == "--set" and "=" not in args[i + 1]):
            raise SystemExit(usage)
        if args[i] == "--model":
            model = args[i + 1]
        else:
            flag, value = args[i + 1].split("=", 1)
            fixed[flag] = _value(value)
        args = args[:i] + args[i + 2:]
    if len(args) != 1 or "=" not in args[0]:
        raise SystemExit(usage)
    flag, values = args[0].split("=", 1)
    return tuple({**fixed, flag: _value(v)} for v in values.split(",")), model
