"""Timed verification and decode steps outside the calibration grid (one GPU, whole loop turns).

    PYTHONPATH=. python3 benchmarks/verify_steps.py MODEL_DIR > log

Three sets, each a trimmed mean of whole steps (``StepDriver``: schedule + execute + postprocess):

1. verification steps of ``B`` decodes verifying 6 drafts, 224 to 336 rows (past the largest decode
   graph, 256, from 259 rows on);
2. plain decode steps of 256 and 320 sequences;
3. steps where only some decodes draft (every ``n``-th one), the mix the adaptive policy produces,
   which the calibration grid does not time (3 warm-up steps, then the mean of 9 without the lowest
   and the highest); plus a torch profile of a 336-row step.
"""

import sys
from dataclasses import dataclass

import torch

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from experiments.calibration_driver import StepDriver
from experiments.engine_run import warm_up
from experiments.profile_fit import typical
from policies.speculation import SpeculationPolicy


@dataclass(frozen=True)
class EveryNth(SpeculationPolicy):
    """Drafts for every ``every``-th decode only."""

    every: int = 4

    def draft_lens(self, decodes, view):
        return [self.num_draft_tokens if i % self.every == 0 else 0 for i in range(len(decodes))]


def main(model: str) -> None:
    runner = ModelRunner(EngineConfig(model=model, max_model_len=8192, max_num_batched_tokens=65536,
                                      speculative_method="ngram"))
    warm_up(runner)
    driver = StepDriver(runner)
    for b, k in ((32, 6), (40, 6), (48, 6), (37, 6)):
        v = driver.verify(b, k, 39, 3, 7)
        print(f"verify B={b} k={k} rows={v.rows}: {v.time_s * 1e3:.3f} ms", flush=True)
    for b in (256, 320):
        s = driver.decode(b, 39, 3, 7)
        print(f"decode B={b}: {s.time_s * 1e3:.3f} ms", flush=True)
    for b, k, every in ((16, 2, 4), (16, 2, 1), (16, 0, 1), (32, 2, 4), (8, 3, 2), (32, 2, 1)):
        spec = EveryNth(num_draft_tokens=max(k, 1), every=every) if k else None
        sched = driver.all_decoding(b, 1024, 65536, b, 12, spec)
        times = []
        for _ in range(12):
            plan, dt, _ = driver.step(sched)
            times.append(dt)
        print(f"SHAPE B={b} k={k} every={every} ctx=1024: rows={plan.num_decode_rows} drafts={plan.num_draft_tokens} "
              f"decode_ctx={plan.decode_ctx_tokens} draft_ctx={plan.draft_ctx_tokens} "
              f"mean_ms={typical(times[3:], trim=0.12) * 1e3:.3f}", flush=True)  # drops 1 of 9 at each end
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        driver.verify(48, 6, 39, 0, 4)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main(sys.argv[1])
