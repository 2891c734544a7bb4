"""The scheduler's memory-side configuration: the KV pool, prefix caching and preemption."""

from __future__ import annotations

from dataclasses import dataclass

from policies.eviction import make_eviction_policy
from policies.preemption import VICTIM_POLICIES


@dataclass(frozen=True)
class SchedulerConfig:
    """Memory-side configuration of the scheduler.

    Args:
        num_gpu_blocks: device KV blocks.
        block_size: tokens per KV block.
        num_cpu_blocks: host blocks for swap preemption (0 disables swapping).
        enable_prefix_caching: reuse identical full prompt blocks across requests.
        preemption_mode: 'recompute' (drop KV, prefill again) or 'swap' (move KV to host).
        victim: victim choice, a key of ``policies.preemption.VICTIM_POLICIES``.
        eviction: eviction order of cached blocks, a key of ``policies.eviction.EVICTION_POLICIES``.
        verify_group_rows: rows of one decode's verification (its last token and its drafts) that the
            executor attends together, reading their shared context once (the engine's
            ``ModelRunner.max_group``, a calibrated profile's ``verify_group_rows``); sets the context
            ``StepPlan.draft_ctx_tokens`` counts. None: the simulator takes its cost model's, else 1.
    """

    num_gpu_blocks: int
    block_size: int = 16
    num_cpu_blocks: int = 0
    enable_prefix_caching: bool = True
    preemption_mode: str = "recompute"
    victim: str = "lifo"
    eviction: str = "lru"
    verify_group_rows: int | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.num_gpu_blocks < 1:
            raise ValueError(f"num_gpu_blocks must be >= 1, got {self.num_gpu_blocks}")
        if self.num_cpu_blocks < 0:
            raise ValueError(f"num_cpu_blocks must be >= 0, got {self.num_cpu_blocks}")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}")
        if self.preemption_mode == "swap" and self.num_cpu_blocks == 0:
            raise ValueError("preemption_mode 'swap' needs num_cpu_blocks > 0")
        if self.victim not in VICTIM_POLICIES:
            raise ValueError(f"unknown victim policy {self.victim!r}; choose one of {sorted(VICTIM_POLICIES)}")
        make_eviction_policy(self.eviction)  # raises on an unknown name
        if self.verify_group_rows is not None and self.verify_group_rows < 1:
            raise ValueError(f"verify_group_rows must be >= 1 or None, got {self.verify_group_rows}")
