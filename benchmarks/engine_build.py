"""Time one ``ModelRunner`` build (weights, GEMV choice, KV pool, graph capture) and its reserved memory.

    python -m benchmarks.engine_build MODEL_DIR [plain|ngram]

Run it twice per setting: the first build in a fresh machine also compiles the Triton kernels. A
speculative engine (``ngram``) captures every graph size twice (row groups and plain rows).
"""

from __future__ import annotations

import sys
import time

import torch

from engine.config import EngineConfig
from engine.model_runner import ModelRunner


def main(argv: list[str]) -> None:
    """Build the engine of ``argv = [model_dir, plain|ngram]`` and print build seconds and memory."""
    if len(argv) != 2 or argv[1] not in ("plain", "ngram"):
        raise SystemExit("usage: python -m benchmarks.engine_build MODEL_DIR plain|ngram")
    method = None if argv[1] == "plain" else argv[1]
    t0 = time.perf_counter()
    runner = ModelRunner(EngineConfig(model=argv[0], max_model_len=8192, max_num_batched_tokens=65536,
                                      speculative_method=method))
    torch.cuda.synchronize()
    print(f"{argv[1]}: build {time.perf_counter() - t0:.1f} s, num_gpu_blocks {runner.num_gpu_blocks}, "
          f"max_group {runner.max_group}, reserved {torch.cuda.memory_reserved() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main(sys.argv[1:])
