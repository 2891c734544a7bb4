"""The paged KV cache tensors, a pinned host pool for swapping, and their sizing.

All layers live in one tensor ``[num_layers, 2, num_blocks, block_size, Hkv, D]``
(K at index 0, V at 1) so a swap moves a set of blocks of every layer with one
gather and one scatter; per-layer K/V are views into it in the layout of
kernels/attention_decode.py. Quantized caches (fp8 / int8) keep fp32 scales per token and head
in a parallel ``[num_layers, 2, num_blocks, block_size, Hkv]`` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

STORAGE_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn,
                                          "int8": torch.int8}
QMAX: dict[torch.dtype, float] = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def storage_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of cache entries for an ``EngineConfig.kv_cache_dtype``."""
    return model_dtype if kv_cache_dtype == "auto" else STORAGE_DTYPES[kv_cache_dtype]


def raw(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as bytes when its dtype is fp8 (indexed copies of fp8 are not supported everywhere)."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def block_bytes(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                dtype: torch.dtype) -> int:
    """Device bytes of one KV block over all layers (K, V and any scales)."""
    per_token_head = 2 * head_dim * torch.empty((), dtype=dtype).element_size()
    if dtype in QMAX:
        per_token_head += 2 * 4
    return num_layers * block_size * num_kv_heads * per_token_head


class KVCache:
    """Device KV blocks (plus one scratch block) and an optional host pool.

    Args:
        num_layers: decoder layers.
        num_blocks: blocks the scheduler may hand out (ids ``0..num_blocks-1``);
            one more, ``scratch_block``, absorbs the writes of padding tokens.
        block_size: tokens per block.
        num_kv_heads: KV heads.
        head_dim: per-head width.
        dtype: storage dtype (model dtype, bf16, fp8 e4m3 or int8).
        device: device of the cache.
        num_cpu_blocks: host blocks for swap preemption (pinned on CUDA).
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device, num_cpu_blocks: int = 0) -> None:
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.scratch_block = num_blocks
        self.dtype = dtype
        self.quantized = dtype in QMAX
        shape = (num_layers, 2, num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.data = torch.zeros(shape, dtype=dtype, device=device)
        self.scales = (torch.zeros(shape[:-1], dtype=torch.float32, device=device)
                       if self.quantized else None)
        pin = device.type == "cuda"
        host_shape = (num_layers, 2, num_cpu_blocks, block_size, num_kv_heads, head_dim)
        self.host_data = torch.zeros(host_shape, dtype=dtype, pin_memory=pin) if num_cpu_blocks else None
        self.host_scales = (torch.zeros(host_shape[:-1], dtype=torch.float32, pin_memory=pin)
                            if num_cpu_blocks and self.quantized else None)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(k_cache, v_cache, k_scale, v_scale)`` of layer ``i`` (scales None unless quantized)."""
        ks = vs = None
        if self.scales is not None:
            ks, vs = self.scales[i, 0], self.scales[i, 1]
        return self.data[i, 0], self.data[i, 1], ks, vs

    def _host(self, pairs: Sequence[tuple[int, int]], what: str) -> torch.Tensor:
        """The host pool, after checking ``pairs`` against both pools' sizes."""
        if self.host_data is None:
            raise RuntimeError(f"{what} of {len(pairs)} blocks asked but the engine has no host blocks "
                               "(EngineConfig.num_cpu_blocks = 0)")
        n_dev, n_host = self.num_blocks, self.host_data.shape[2]
        src_n, dst_n = (n_dev, n_host) if what == "swap_out" else (n_host, n_dev)
        for src, dst in pairs:
            if not (0 <= src < src_n and 0 <= dst < dst_n):
                raise IndexError(f"{what}: block pair ({src}, {dst}) out of range ({src_n}, {dst_n})")
        return self.host_data

    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy device blocks to host blocks, for ``(device_id, host_id)`` pairs."""
        if not pairs:
            return
        host = self._host(pairs, "swap_out")
        src = torch.tensor([p[0] for p in pairs], device=self.data.device)
        dst = torch.tensor([p[1] for p in pairs])
        raw(host)[:, :, dst] = raw(self.data)[:, :, src].cpu()
        if self.scales is not None and self.host_scales is not None:
            self.host_scales[:, :, dst] = self.scales[:, :, src].cpu()

    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy host blocks to device blocks, for ``(host_id, device_id)`` pairs."""
        if not pairs:
            return
        host = self._host(pairs, "swap_in")
        dev = self.data.device
        src = torch.tensor([p[0] for p in pairs])
        dst = torch.tensor([p[1] for p in pairs], device=dev)
        raw(self.data)[:, :, dst] = raw(host)[:, :, src].to(dev, non_blocking=True)
        if self.scales is not None and self.host_scales is not None:
            self.scales[:, :, dst] = self.host_scales[:, :, src].to(dev, non_blocking=True)

    def nbytes(self) -> int:
        """Device bytes held by the cache."""
        n = self.data.numel() * self.data.element_size()
        return n + (self.scales.numel() * 4 if self.scales is not None else 0)
