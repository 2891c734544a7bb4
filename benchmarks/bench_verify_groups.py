"""Verification rows attended as one group (``group_lens`` of ``kernels.attention_decode``) against one row at a
time, on one GPU (CUDA only; nothing runs at import).

    PYTHONPATH=. python3 -m benchmarks.bench_verify_groups --model MODEL_DIR --out DIR

Writes ``DIR/verify_groups.csv`` (rows as in ``benchmarks.common.row``) and prints each row:

* ``verify_attn``: the decode attention kernel alone (CUDA graphs over rotating caches, so nothing is
  served from L2) for ``B`` decodes verifying ``k`` drafts at context ``C``: the ``B (k + 1)`` rows
  ungrouped and in groups of at most 4 and 8 rows, against a plain decode step of ``B`` rows at the
  longest context (what reading each context once costs) and the copy-bandwidth floor of those bytes;
* ``verify_step``: whole engine loop turns (``StepDriver``: schedule + execute + postprocess) of Llama
  verification steps with the n-gram proposer, per ``EngineConfig.verify_group_rows`` (1, 4, 8), against
  plain decode steps of the same ``B`` and context on the same engine.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import pandas as pd
import torch

from benchmarks.attention_setup import MODELS, Paged, attn_graph_time, kv_bytes, num_copies, safe
from benchmarks.common import measure_copy_bandwidth, row

KERNEL_CASES = [(1, 4, 4096), (16, 4, 1024), (16, 4, 4096), (32, 6, 2048), (64, 3, 1024)]  # (B, k, C)
STEP_CASES = [(1, 4, 1024), (8, 4, 2048), (16, 4, 1024), (32, 4, 2048), (32, 6, 1024)]
GROUP_ROWS = (1, 4, 8)


def kernel_rows(model: str, batch: int, drafts: int, ctx: int, copy_bw: float) -> list[dict]:
    from kernels.attention_decode import paged_decode_attention

    hq, _, d = MODELS[model]
    n = drafts + 1
    longest = ctx + n
    paged = Paged(model, batch, longest, torch.bfloat16, num_copies(kv_bytes(model, batch * longest, torch.bfloat16)))
    row_tables = [t.repeat_interleave(n, dim=0) for t in paged.tables]  # a decode's rows share its table
    lens = (ctx + 1 + torch.arange(n, dtype=torch.int32, device="cuda")).repeat(batch)
    q = torch.randn(batch * n, hq, d, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)

    def groups(g: int) -> torch.Tensor:
        first = [min(g, n - a) if a % g == 0 else 0 for a in range(n)]
        return torch.tensor(first * batch, dtype=torch.int32, device="cuda")

    def timed(g: int) -> float:
        kw = {"group_lens": groups(g), "max_group": g} if g > 1 else {}
        return attn_graph_time([lambda bt=bt: paged_decode_attention(q, paged.k_cache, paged.v_cache, bt, lens,
                                                                     d**-0.5, out=out, pdl=True, **kw)
                                for bt in row_tables])

    plain_lens = torch.full((batch,), longest, dtype=torch.int32, device="cuda")
    plain = attn_graph_time([lambda bt=bt: paged_decode_attention(q[:batch], paged.k_cache, paged.v_cache, bt,
                                                                  plain_lens, d**-0.5, out=out[:batch], pdl=True)
                             for bt in paged.tables])
    ones = torch.ones(batch, dtype=torch.int32, device="cuda")
    plain_grouped = attn_graph_time([lambda bt=bt: paged_decode_attention(
        q[:batch], paged.k_cache, paged.v_cache, bt, plain_lens, d**-0.5, out=out[:batch], pdl=True,
        group_lens=ones, max_group=GROUP_ROWS[1]) for bt in paged.tables])
    floor = kv_bytes(model, batch * longest, torch.bfloat16) / copy_bw * 1e6
    case = f"{model} B={batch} k={drafts} ctx={ctx}"
    rows = [row("verify_attn", f"{case} group<={g}", timed(g) * 1e6, "us", reference=f"plain decode B={batch}",
                ref_value=plain * 1e6, ceiling="bytes / copy_bw", ceiling_value=floor) for g in GROUP_ROWS]
    # A speculative engine's plain decode steps run the grouped compile with groups of one row.
    rows.append(row("plain_attn", f"{model} B={batch} ctx={longest} grouped compile, max_group={GROUP_ROWS[1]}",
                    plain_grouped * 1e6, "us", reference="ungrouped compile", ref_value=plain * 1e6,
                    ceiling="bytes / copy_bw", ceiling_value=floor))
    return rows


def step_rows(model_dir: str) -> list[dict]:
    from engine.config import EngineConfig
    from engine.model_runner import ModelRunner
    from experiments.calibration_driver import StepDriver
    from experiments.engine_run import warm_up

    out: list[dict] = []
    for g in GROUP_ROWS:
        runner = ModelRunner(EngineConfig(model=model_dir, max_model_len=8192, max_num_batched_tokens=8192,
                                          num_gpu_blocks=24000, speculative_method="ngram", verify_group_rows=g))
        warm_up(runner)
        driver = StepDriver(runner)
        for b, k, ctx in STEP_CASES:
            v = driver.verify(b, k, ctx, 3, 9)
            plain = driver.decode(b, ctx, 3, 9)
            r = row("verify_step", f"B={b} k={k} ctx={ctx} verify_group_rows={g}", v.time_s * 1e3, "ms",
                    reference=f"plain decode B={b}", ref_value=plain.time_s * 1e3)
            print(f"[bench_verify_groups] {r['case']:44s} {r['value']:8.3f} ms  plain {r['ref_value']:8.3f} ms",
                  flush=True)
            out.append(r)
        del driver, runner
        gc.collect()
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="Llama checkpoint folder for the engine steps")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--skip-steps", action="store_true", help="only the kernel rows")
    args = ap.parse_args()
    copy_bw = measure_copy_bandwidth()
    rows = [row("env", "copy bandwidth", copy_bw / 1e9, "GB/s", reference=torch.cuda.get_device_name())]
    for model in ("1B", "3B"):
        for b, k, c in KERNEL_CASES:
            safe(rows, "verify_attn", f"{model} B={b} k={k} ctx={c}", "us",
                 lambda model=model, b=b, k=k, c=c: kernel_rows(model, b, k, c, copy_bw))
    if not args.skip_steps:
        rows += step_rows(args.model)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(Path(args.out) / "verify_groups.csv", index=False)


if __name__ == "__main__":
    main()
