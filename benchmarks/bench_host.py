"""Host-side work of an engine step, on the CPU (no GPU needed): decode staging and n-gram proposals.

    python -m benchmarks.bench_host

Prints one line per case: the mean of 50 calls, beside its reference measured in the same run.

* ``stage``: ``DecodeInputs.stage`` of plain decode rows whose tables the rows already hold (steady
  decoding), against writing every table (a fresh ``DecodeInputs`` per call: what every step paid before
  the staged tables were remembered);
* ``stage verify``: 24 decodes x 5 verification rows in groups of 4 (leaders' tables only), against
  ungrouped staging that writes every row's table;
* ``ngram``: the first proposal of new sequences (indexing their prompts), per sequence, against a
  proposal of the same sequences one token later.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch

from engine.decode_inputs import DecodeInputs
from engine.ngram_proposer import NgramConfig, NgramProposer
from engine.step_metadata import DecodeRows
from policies.sequence import Sequence
from policies.types import Request, StepPlan

CPU = torch.device("cpu")


def mean_ms(fn: Callable[[], object], n: int = 50) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def decoding(batch: int, lo: int, hi: int, rng: random.Random, tokens: bool = False) -> list[Sequence]:
    """``batch`` sequences of ``lo``..``hi`` tokens, each with its own blocks (16 tokens each)."""
    out = []
    for i in range(batch):
        n = rng.randint(lo, hi)
        ids = tuple(rng.randrange(128000) for _ in range(n)) if tokens else (1,) * n
        s = Sequence(Request(f"r{i}", 0.0, n, 200, prompt_token_ids=ids))
        s.block_table = list(range(i * 200, i * 200 + (n + 8) // 16 + 1))
        s.num_computed = n
        out.append(s)
    return out


def main() -> None:
    rng = random.Random(0)
    for batch in (24, 128, 256):
        seqs = decoding(batch, 500, 2000, rng)
        steady = DecodeInputs(256, 512, 16, 0, CPU)
        t_steady = mean_ms(lambda seqs=seqs, inputs=steady: inputs.stage(seqs, len(seqs)))
        t_cold = mean_ms(lambda seqs=seqs: DecodeInputs(256, 512, 16, 0, CPU).stage(seqs, len(seqs)))
        t_alloc = mean_ms(lambda: DecodeInputs(256, 512, 16, 0, CPU))
        print(f"stage {batch:3d} rows, steady: {t_steady:.3f} ms; every table written: {t_cold - t_alloc:.3f} ms "
              f"(fresh buffers {t_cold:.3f} minus their allocation {t_alloc:.3f})", flush=True)
    seqs = decoding(24, 800, 2500, rng)
    rows = DecodeRows.of(seqs, [[5] * 4] * len(seqs))
    grouped, plain = DecodeInputs(256, 512, 16, 0, CPU, max_group=4), DecodeInputs(256, 512, 16, 0, CPU)
    t_grouped = mean_ms(lambda: grouped.stage(rows, 128))
    t_all = mean_ms(lambda: DecodeInputs(256, 512, 16, 0, CPU).stage(rows, 128)) - mean_ms(
        lambda: DecodeInputs(256, 512, 16, 0, CPU))
    t_plain = mean_ms(lambda: plain.stage(rows, 128))
    print(f"stage verify 24 x 5 rows: groups of 4, steady {t_grouped:.3f} ms; ungrouped steady {t_plain:.3f} ms; "
          f"every row's table written {t_all:.3f} ms", flush=True)
    news = decoding(50, 1155, 1155, rng, tokens=True)
    plan = StepPlan(0, 0.0, decodes=news)
    plan.draft_lens = [4] * len(news)
    proposer = NgramProposer(NgramConfig())
    t = time.perf_counter()
    proposer.propose(plan)
    first = (time.perf_counter() - t) * 1e3 / len(news)
    for s in news:
        s.output_ids.append(7)
    t = time.perf_counter()
    proposer.propose(plan)
    later = (time.perf_counter() - t) * 1e3 / len(news)
    print(f"ngram first proposal (1155-token prompt): {first:.3f} ms / seq; one token later {later:.4f} ms / seq")


if __name__ == "__main__":
    main()
