"""GPU specifications for the roofline model and the analytic cost model.

Sources of the numbers (dense tensor-core math, no sparsity):

- ``h100``: H100 SXM5 80GB. Peaks from NVIDIA's H100 datasheet: bf16 989.4 TFLOP/s,
  int8/fp8 1979 TOP/s, HBM3 3.35 TB/s. Attainable bandwidth 2.97 TB/s is a
  device-to-device copy measured on this project's H100 (counting read + write
  bytes). Attainable bf16 matmul is 0.75 x peak, a placeholder until the
  engine's profiler measures it. Host link: PCIe Gen5 x16 (64 GB/s per direction
  raw); 55 GB/s is a typical pinned-memory copy rate (estimate, not measured here).
- ``h200``: H200 SXM 141GB. Same tensor cores as H100 SXM (989.4 / 1979), HBM3e
  4.8 TB/s (datasheet). Attainable bandwidth is the peak scaled by H100's measured
  copy efficiency (2.97 / 3.35) and matmul by 0.75: estimates, not measured.
  Host link as H100.
- ``a100``: A100 SXM4 80GB. Datasheet: bf16 312 TFLOP/s, int8 624 TOP/s, no fp8,
  HBM2e 2.039 TB/s. Attainable values scaled as for H200 (estimates). Host link:
  PCIe Gen4 x16 (32 GB/s raw), 25 GB/s pinned-copy estimate.

``memory_bytes`` is the total that ``nvidia-smi`` reports (MiB x 2**20).
"""

from __future__ import annotations

from dataclasses import dataclass

_H100_COPY_EFFICIENCY = 2.97e12 / 3.35e12  # measured copy / datasheet peak on H100 SXM
_MATMUL_EFFICIENCY = 0.75  # placeholder until measured


@dataclass(frozen=True)
class GPUSpec:
    """Peak and attainable rates of one GPU (all rates per second, bytes in B).

    Args:
        name: short name (``h100``).
        memory_bytes: device memory.
        peak_bf16_flops: dense bf16 tensor-core FLOP/s.
        peak_int8_ops: dense int8 tensor-core OP/s.
        peak_fp8_ops: dense fp8 tensor-core OP/s; 0 when the GPU has no fp8 tensor cores.
        peak_bw: datasheet memory bandwidth.
        attainable_bw: bandwidth a large device copy reaches.
        attainable_bf16_flops: FLOP/s a large bf16 GEMM reaches.
        host_bw: host<->device copy bandwidth per direction (pinned memory).
        source: where the numbers come from.
    """

    name: str
    memory_bytes: int
    peak_bf16_flops: float
    peak_int8_ops: float
    peak_fp8_ops: float
    peak_bw: float
    attainable_bw: float
    attainable_bf16_flops: float
    host_bw: float
    source: str = ""

    def __post_init__(self) -> None:
        for key in ("memory_bytes", "peak_bf16_flops", "peak_int8_ops", "peak_bw", "attainable_bw",
                    "attainable_bf16_flops", "host_bw"):
            if not getattr(self, key) > 0:
                raise ValueError(f"GPU {self.name!r}: {key} must be > 0, got {getattr(self, key)!r}")
        if self.peak_fp8_ops < 0:
            raise ValueError(f"GPU {self.name!r}: peak_fp8_ops must be >= 0 (0 = no fp8)")
        if self.attainable_bw > self.peak_bw or self.attainable_bf16_flops > self.peak_bf16_flops:
            raise ValueError(f"GPU {self.name!r}: attainable rates cannot exceed the peaks")

    def peak_ops(self, compute: str) -> float:
        """Peak dense tensor-core rate for ``compute`` in {'bf16', 'fp16', 'int8', 'fp8'}."""
        peaks = {"bf16": self.peak_bf16_flops, "fp16": self.peak_bf16_flops,
                 "int8": self.peak_int8_ops, "fp8": self.peak_fp8_ops}
        if compute not in peaks:
            raise ValueError(f"unknown compute type {compute!r}; known: {sorted(peaks)}")
        if peaks[compute] == 0:
            raise ValueError(f"GPU {self.name!r} has no {compute} tensor cores")
        return peaks[compute]

    def attainable_ops(self, compute: str = "bf16") -> float:
        """Attainable GEMM rate: the peak for ``compute`` scaled by the bf16 matmul efficiency."""
        return self.peak_ops(compute) * (self.attainable_bf16_flops / self.peak_bf16_flops)

    def ridge_point(self, compute: str = "bf16") -> float:
        """Arithmetic intensity (FLOP/byte) where the attainable compute and memory roofs meet."""
        return self.attainable_ops(compute) / self.attainable_bw


def _scaled(name: str, memory_mib: int, bf16: float, int8: float, fp8: float, bw: float,
            host_bw: float, source: str) -> GPUSpec:
    return GPUSpec(name, memory_mib * 2**20, bf16, int8, fp8, bw, bw * _H100_COPY_EFFICIENCY,
                   bf16 * _MATMUL_EFFICIENCY, host_bw, source)


GPUS: dict[str, GPUSpec] = {
    "h100": GPUSpec("h100", 81559 * 2**20, 989.4e12, 1979e12, 1979e12, 3.35e12, 2.97e12,
                    989.4e12 * _MATMUL_EFFICIENCY, 55e9,
                    "H100 SXM5 80GB datasheet; copy bandwidth measured; matmul 0.75 x peak (placeholder)"),
    "h200": _scaled("h200", 143771, 989.4e12, 1979e12, 1979e12, 4.8e12, 55e9,
                    "H200 SXM 141GB datasheet; attainable rates scaled from H100 (estimates)"),
    "a100": _scaled("a100", 81920, 312e12, 624e12, 0.0, 2.039e12, 25e9,
                    "A100 SXM4 80GB datasheet; attainable rates scaled from H100 (estimates)"),
}


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """The shipped ``GPUSpec`` named ``name`` (case-insensitive); a GPUSpec is returned as is.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if isinstance(name, GPUSpec):
        return name
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown GPU {name!r}; known: {sorted(GPUS)}") from None
