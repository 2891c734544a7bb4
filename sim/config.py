"""Configuration of a simulated deployment: model, GPU, cost model and KV pool size."""

from __future__ import annotations

from dataclasses import dataclass

from sim.acceptance import GeometricAcceptance
from sim.cost_model import CostModel
from sim.hardware import get_gpu
from sim.model_spec import ModelSpec
from sim.shipped_profiles import load_cost_model

GIB = 1 << 30


@dataclass(frozen=True)
class SimConfig:
    """What is simulated.

    Args:
        model: a shipped model name (``llama-3.2-1b``, ``llama-3.2-3b``) or a config.json path.
        gpu: ``h100``, ``h200`` or ``a100``.
        cost_model: ``calibrated`` (a profile file: the shipped one for model, GPU and
            dtypes, or ``profile``) or ``roofline`` (analytic).
        profile: path of a profile file for the calibrated model.
        weight_dtype: ``bf16``, ``int8`` or ``int4``.
        kv_cache_dtype: ``bf16``, ``fp8`` or ``int8``.
        gpu_memory_utilization: fraction of GPU memory the engine may use.
        activation_reserve_gib: memory kept for activations, outside the KV pool.
        num_gpu_blocks: KV blocks; derived from memory when None.
        spec_acceptance: with a speculation policy, the per-token probability that a draft token is
            accepted (``sim.acceptance``; the engine's replays report theirs as ``spec_alpha``).
        spec_seed: seed of the simulated acceptance draws.
    """

    model: str = "llama-3.2-1b"
    gpu: str = "h100"
    cost_model: str = "calibrated"
    profile: str | None = None
    weight_dtype: str = "bf16"
    kv_cache_dtype: str = "bf16"
    gpu_memory_utilization: float = 0.9
    activation_reserve_gib: float = 2.0
    num_gpu_blocks: int | None = None
    spec_acceptance: float = 0.6
    spec_seed: int = 0

    def __post_init__(self) -> None:
        if self.cost_model not in ("calibrated", "roofline"):
            raise ValueError(f"cost_model must be 'calibrated' or 'roofline', got {self.cost_model!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.activation_reserve_gib < 0:
            raise ValueError(f"activation_reserve_gib must be >= 0, got {self.activation_reserve_gib}")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks < 1:
            raise ValueError(f"num_gpu_blocks must be >= 1, got {self.num_gpu_blocks}")
        if not 0.0 <= self.spec_acceptance <= 1.0:
            raise ValueError(f"spec_acceptance must be in [0, 1], got {self.spec_acceptance}")

    def kv_blocks(self, block_size: int) -> int:
        """KV blocks that fit: explicit, or (memory * utilisation - weights - reserve) / block bytes.

        Raises:
            ValueError: the weights and reserve leave no room for a single block.
        """
        if self.num_gpu_blocks is not None:
            return self.num_gpu_blocks
        spec = ModelSpec.load(self.model)
        gpu = get_gpu(self.gpu)
        free = (gpu.memory_bytes * self.gpu_memory_utilization - spec.weight_bytes(self.weight_dtype)
                - self.activation_reserve_gib * GIB)
        per_block = spec.kv_bytes_per_token(self.kv_cache_dtype) * block_size
        blocks = int(free // per_block)
        if blocks < 1:
            raise ValueError(
                f"{self.model} on {self.gpu}: weights and activation reserve leave {free / GIB:.2f} GiB, "
                f"no room for one KV block of {per_block} bytes"
            )
        return blocks

    def build_acceptance(self) -> GeometricAcceptance:
        """The simulated acceptance of draft tokens (used when a speculation policy is set)."""
        return GeometricAcceptance(self.spec_acceptance, self.spec_seed)

    def build_cost_model(self, block_size: int) -> CostModel:
        """The configured step-time predictor."""
        return load_cost_model(self.model, self.gpu, kind=self.cost_model, profile=self.profile,
                               weight_dtype=self.weight_dtype, kv_dtype=self.kv_cache_dtype,
                               block_size=block_size)
