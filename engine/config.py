"""Engine configuration: what model to load, where, in which precisions, with how much KV memory."""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("bfloat16", "float16", "float32")
KV_CACHE_DTYPES = ("auto", "bf16", "fp8", "int8")
QUANTIZATIONS = (None, "int8", "int4", "w8a8")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
SPECULATIVE_METHODS = (None, "ngram", "draft")
DEFAULT_GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
DEFAULT_GRAPH_TOKEN_SIZES = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


@dataclass(frozen=True)
class EngineConfig:
    """Configuration of the real engine (``ModelRunner``).

    Args:
        model: path of a Hugging Face style folder (config.json + safetensors).
        dtype: activation and weight dtype: 'bfloat16', 'float16' or 'float32'.
        device: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.
        block_size: tokens per KV block (must equal the scheduler's block size).
        num_gpu_blocks: KV blocks on the device; None sizes the pool from free GPU
            memory (CUDA only; required on the CPU).
        num_cpu_blocks: pinned host blocks for swap preemption (0: no swapping).
        gpu_memory_utilization: fraction of the GPU's memory the engine may use in
            all (weights, activations, KV cache) when ``num_gpu_blocks`` is None.
        max_model_len: longest sequence (prompt + output); None: the model's
            ``max_position_embeddings``.
        max_num_batched_tokens: most tokens in one step (the scheduler's token
            budget); sizes the memory-profiling forward pass.
        max_num_seqs: most sequences in one step; caps the CUDA-graph ladder.
        enforce_eager: never capture CUDA graphs.
        cuda_graph_batch_sizes: decode batch sizes captured as CUDA graphs (a
            decode-only step is padded up to the next size; one of more rows replays the
            largest on chunks of its rows).
        cuda_graph_token_sizes: token counts of steps holding a prefill chunk captured
            as CUDA graphs (such a step is padded up to the next count; sizes past the
            first one >= ``max_num_batched_tokens`` are not captured; larger steps,
            and steps of more than ``max_num_seqs`` sequences, run eagerly). Empty:
            those steps always run eagerly.
        kv_cache_dtype: 'auto' (the model dtype), 'bf16', 'fp8' (e4m3 with
            per-token scales) or 'int8' (with per-token scales).
        quantization: weight quantization of the linear layers: None, 'int8' or
            'int4' (weight-only), or 'w8a8'.
        attention_backend: 'torch' (plain PyTorch, also the CPU path), 'triton'
            (kernels/) or 'auto' (triton on CUDA, torch on the CPU).
        seed: seed of the sampler for requests without their own seed.
        small_batch_gemv: on CUDA with full-precision bf16/fp16 weights, time
            ``kernels.gemv_bf16`` against ``F.linear`` at start-up for each kind of
            linear layer and use it for inputs of at most 4 rows where it is faster.
        fused_decode: with ``small_batch_gemv``, also time the fused decode GEMVs (RMSNorm
            inside the qkv and gate_up GEMVs, SwiGLU and the residual adds in their
            epilogues; ``engine.fused_choice``) and run steps of at most 4 tokens through
            them when a layer's chain of them is faster.
        pdl: on CUDA devices of compute capability >= 9.0 (Hopper), launch the decode
            kernels (bf16 and int8/int4 GEMVs, fused RoPE + KV write, decode attention) with programmatic
            dependent launch, so that each starts while the one before it finishes
            (``kernels.pdl``); ignored on other devices.
        decode_lookahead: right after a greedy decode-only step whose sequences all decode again,
            queue their next step on the device before the host books this one, and use it when
            the scheduler plans exactly that step (``engine.lookahead``; hides the host's share of
            small decode steps). Outputs and scheduling are unchanged; a plan that differs
            (arrival, stop token, preemption) costs one wasted decode step on the device. Without
            CUDA graphs the decode steps run eagerly through the same static buffers.
        speculative_method: where the draft tokens of speculative steps come from: None (the engine
            runs no plan with draft tokens), 'ngram' (prompt lookup, ``engine.ngram_proposer``) or
            'draft' (a smaller model, ``draft_model``). How many drafts each decode verifies is the
            scheduler's speculation policy (``policies.speculation``).
        draft_model: Hugging Face style folder of the draft model (same vocabulary), for 'draft'.
        ngram_min, ngram_max: suffix lengths the 'ngram' proposer matches (longest first).
        verify_group_rows: with speculative decoding and the triton backend, up to this many rows of one
            decode (its last token and its drafts) attend together, reading their shared context once
            (``group_lens`` of ``kernels.attention_decode``); 1 reads it once per row. None: as many as
            fill the kernel's 16-row tile with their query heads (4 for Llama-3.2-1B, 5 for 3B), which
            keeps plain decode steps on the tile they use without groups. Results are the same.
        fused_rope: on the fused decode layers (``fused_decode``) with a cache of the model dtype, run RoPE
            and the KV-cache write inside the qkv GEMV's epilogue (``kernels.gemv_rope``) instead of a
            kernel of their own between it and attention (default on: 1-3% faster batch-1 decode on an
            H200, BENCHMARKS.md); quantised caches always take the separate kernel.
        merge_decode_splits: with the triton backend, merge a split decode sequence's partial results
            inside the decode attention kernel (the last of its programs to finish merges them:
            ``merge_counters`` of ``kernels.attention_decode``) instead of in a reduction kernel launched
            after it, one launch fewer a layer. Results are the same within rounding; off by default
            until timed on a GPU (BENCHMARKS.md). Decode row groups (``verify_group_rows``) merge so too.
    """

    model: str
    dtype: str = "bfloat16"
    device: str = "auto"
    block_size: int = 16
    num_gpu_blocks: int | None = None
    num_cpu_blocks: int = 0
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    enforce_eager: bool = False
    cuda_graph_batch_sizes: tuple[int, ...] = DEFAULT_GRAPH_BATCH_SIZES
    cuda_graph_token_sizes: tuple[int, ...] = DEFAULT_GRAPH_TOKEN_SIZES
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    attention_backend: str = "auto"
    seed: int = 0
    small_batch_gemv: bool = True
    fused_decode: bool = True
    pdl: bool = True
    decode_lookahead: bool = False
    speculative_method: str | None = None
    draft_model: str | None = None
    ngram_min: int = 1
    ngram_max: int = 3
    verify_group_rows: int | None = None
    fused_rope: bool = True
    merge_decode_splits: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"EngineConfig.{name}: {why}, got {getattr(self, name)!r}")

        if not isinstance(self.model, str) or not self.model:
            raise bad("model", "must be a non-empty path")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"must be one of {DTYPES}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.block_size < 1:
            raise bad("block_size", "must be >= 1")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks < 1:
            raise bad("num_gpu_blocks", "must be >= 1 or None")
        if self.num_cpu_blocks < 0:
            raise bad("num_cpu_blocks", "must be >= 0")
        if not (0.0 < self.gpu_memory_utilization <= 1.0):
            raise bad("gpu_memory_utilization", "must be in (0, 1]")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise bad("max_model_len", "must be >= 2 or None")
        if self.max_num_batched_tokens < 1:
            raise bad("max_num_batched_tokens", "must be >= 1")
        if self.max_num_seqs < 1:
            raise bad("max_num_seqs", "must be >= 1")
        sizes = self.cuda_graph_batch_sizes
        if any(s < 1 for s in sizes) or list(sizes) != sorted(set(sizes)):
            raise bad("cuda_graph_batch_sizes", "must be strictly increasing positive sizes")
        tokens = self.cuda_graph_token_sizes
        if any(s < 1 for s in tokens) or list(tokens) != sorted(set(tokens)):
            raise bad("cuda_graph_token_sizes", "must be strictly increasing positive token counts")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise bad("kv_cache_dtype", f"must be one of {KV_CACHE_DTYPES}")
        if self.quantization not in QUANTIZATIONS:
            raise bad("quantization", f"must be one of {QUANTIZATIONS}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise bad("attention_backend", f"must be one of {ATTENTION_BACKENDS}")
        if self.speculative_method not in SPECULATIVE_METHODS:
            raise bad("speculative_method", f"must be one of {SPECULATIVE_METHODS}")
        if (self.speculative_method == "draft") != (self.draft_model is not None):
            raise bad("draft_model", "must be given exactly when speculative_method is 'draft'")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise bad("ngram_min", f"must be >= 1 and <= ngram_max ({self.ngram_max})")
        if self.verify_group_rows is not None and not 1 <= self.verify_group_rows <= 32:
            raise bad("verify_group_rows", "must be None or in [1, 32]")
        if not isinstance(self.fused_rope, bool):
            raise bad("fused_rope", "must be a bool")
        if not isinstance(self.merge_decode_splits, bool):
            raise bad("merge_decode_splits", "must be a bool")
        if self.speculative_method is not None and self.decode_lookahead:
            raise bad("decode_lookahead", "cannot be combined with speculative decoding (speculative_method)")

    def graph_batch_sizes(self) -> tuple[int, ...]:
        """The decode batch sizes to capture: ``cuda_graph_batch_sizes`` up to ``max_num_seqs``."""
        return tuple(s for s in self.cuda_graph_batch_sizes if s <= self.max_num_seqs)

    def graph_token_sizes(self) -> tuple[int, ...]:
        """The token counts to capture: ``cuda_graph_token_sizes`` up to the first >= the token budget."""
        out = []
        for t in self.cuda_graph_token_sizes:
            out.append(t)
            if t >= self.max_num_batched_tokens:
                break
        return tuple(out)
