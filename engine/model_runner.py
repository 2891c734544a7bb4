"""The engine's executor: ``ModelRunner.execute(plan) -> StepResult`` on a real model.

Per step: swaps (out, then in), metadata (one host-to-device copy), the forward
pass, sampling, and one synchronisation when the sampled ids come back to the
host; the step's duration is that wall time. Steps that fit a captured CUDA
graph (decode-only steps: of at most the largest captured batch, or more rows, which replay
it on chunks of them; steps holding prefill chunks of at most the largest captured token count
and ``max_num_seqs`` sequences) take the graph path: their inputs are written into static pinned
buffers (one copy), one graph runs the whole step including the greedy argmax,
and all-greedy steps read those ids back directly. With ``EngineConfig.decode_lookahead``
a greedy decode step is followed on the device by the step the scheduler is expected to
plan next (``engine.lookahead``).
"""

from __future__ import annotations

import time
import warnings

import torch

from engine.attention import TorchAttention, TritonAttention, verify_group_rows
from engine.config import EngineConfig
from engine.cuda_graphs import DecodeGraphs, MixedGraphs, PoolHandle
from engine.decode_inputs import DecodeInputs
from engine.devices import TORCH_DTYPES, pdl_available, resolve_device
from engine.fused_choice import FusedChoice, choose_fused
from engine.gemv_choice import GEMV_DTYPES, GemvTiming, choose_gemv
from engine.kv_cache import KVCache, storage_dtype
from engine.kv_sizing import blocks_in_free_memory, draft_reserve, profile_plan
from engine.layers import torch_ops, triton_ops
from engine.loader import load_llama
from engine.lookahead import DecodeLookahead, IdsReadback
from engine.mixed_inputs import MixedInputs
from engine.model import LlamaModel
from engine.sampler import Sampler, greedy_ids
from engine.spec_decode import SpeculativeExecutor, make_speculative
from engine.step_metadata import DecodeRows, MetadataBuilder, StepMetadata
from policies.sequence import Sequence
from policies.types import StepPlan, StepResult


class ModelRunner:
    """Loads the model, owns the KV cache, and executes step plans.

    Args:
        config: the engine configuration.

    Attributes:
        spec: the model's shapes (``LlamaSpec``).
        num_gpu_blocks: KV blocks the scheduler may use (ids ``0..num_gpu_blocks-1``).
        max_model_len: longest sequence the engine accepts.
        graphs: captured decode-only graphs, or None (eager).
        mixed_graphs: captured graphs of steps holding prefill chunks, or None (eager).
        gemv_timings: the start-up choice between ``F.linear`` and ``gemv_bf16`` per
            kind of linear layer (empty when not made).
        fused_choice: the start-up choice of the fused decode layers (None when not made).
        pdl: whether the decode kernels are launched with programmatic dependent launch
            (``EngineConfig.pdl`` on a device that supports it).
        lookahead: the decode lookahead (``EngineConfig.decode_lookahead``), or None.
        speculative: runs the plans that verify draft tokens (``EngineConfig.speculative_method``), or None.
        last_launch_s: host seconds from the start of the last graph-path ``execute``
            until its graph was launched (benchmarks).
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = TORCH_DTYPES[config.dtype]
        backend = config.attention_backend
        if backend == "auto":
            backend = "triton" if self.device.type == "cuda" else "torch"
        self.backend = backend
        self.pdl = config.pdl and backend == "triton" and pdl_available(self.device)  # False off CUDA
        ops = triton_ops() if backend == "triton" else torch_ops()
        spec, tensors = load_llama(config.model, self.dtype, self.device)
        self.spec = spec
        self.max_model_len = config.max_model_len or spec.max_position_embeddings
        if self.max_model_len > spec.max_position_embeddings:
            raise ValueError(f"EngineConfig.max_model_len {self.max_model_len} exceeds the model's "
                             f"max_position_embeddings {spec.max_position_embeddings}")
        self.model = LlamaModel(spec, tensors, ops, self.max_model_len, config.quantization, pdl=self.pdl)
        self.model.fused_rope = config.fused_rope
        self.kv_dtype = storage_dtype(config.kv_cache_dtype, self.dtype)
        # Verification rows of one decode attend as one group (triton decode kernel) when speculating.
        self.max_group = (verify_group_rows(config.verify_group_rows, spec.num_heads, spec.num_kv_heads)
                          if config.speculative_method and backend == "triton" else 1)
        if backend == "triton" and self.kv_dtype == torch.float32:
            raise ValueError("EngineConfig: attention_backend 'triton' needs a bf16/fp16 model dtype or an fp8/int8 "
                             "kv_cache_dtype (its kernels read no fp32 KV cache); use attention_backend='torch' "
                             "for float32")
        self.block_size = config.block_size
        self.max_blocks_per_seq = -(-self.max_model_len // self.block_size)
        self.num_gpu_blocks = config.num_gpu_blocks or self._profile_num_blocks()
        self.kv = KVCache(spec.num_layers, self.num_gpu_blocks, self.block_size, spec.num_kv_heads,
                          spec.head_dim, self.kv_dtype, self.device, config.num_cpu_blocks)
        self.attention = self._attention(self.kv)
        self.builder = MetadataBuilder(self.block_size, self.kv.scratch_block, self.device, self.max_group)
        self.sampler = Sampler(self.device, config.seed)
        self.graphs: DecodeGraphs | None = None
        self.mixed_graphs: MixedGraphs | None = None
        self.gemv_timings: list[GemvTiming] = []
        self.fused_choice: FusedChoice | None = None
        self.last_launch_s = 0.0
        self.lookahead: DecodeLookahead | None = None
        if self.device.type == "cuda" and backend == "triton":
            if config.small_batch_gemv and config.quantization is None and self.dtype in GEMV_DTYPES:
                try:
                    self.gemv_timings = choose_gemv(self.model.linears(), self.device, pdl=self.pdl)
                except Exception as exc:  # a failed timing only costs the optimisation (choose_gemv reset the layers)
                    warnings.warn(f"GEMV choice failed, using F.linear everywhere: {exc!r}", stacklevel=2)
                if config.fused_decode:
                    try:
                        self.fused_choice = choose_fused(self.model, self.device, pdl=self.pdl)
                    except Exception as exc:  # choose_fused left the layers unfused
                        warnings.warn(f"fused decode choice failed, decoding unfused: {exc!r}", stacklevel=2)
            if not config.enforce_eager:
                self._capture_graphs()
        if config.decode_lookahead:
            self._start_lookahead()
        self.speculative: SpeculativeExecutor | None = (make_speculative(self) if config.speculative_method
                                                        is not None else None)

    def _graph_forward(self, meta: StepMetadata) -> torch.Tensor:
        """The forward pass the step graphs run (logits in the model dtype)."""
        return self.model.forward(meta, self.attention, fp32=False)

    def _decode_graphs(self, sizes: tuple[int, ...], pool: PoolHandle | None, eager: bool) -> DecodeGraphs:
        """Decode graphs of ``sizes`` over fresh static inputs (the lookahead's advance when configured)."""
        # The decode kernel picks its split count from the block-table width (host
        # side), so captured graphs of a fixed width replay with fixed splits.
        inputs = DecodeInputs(sizes[-1], self.max_blocks_per_seq, self.block_size, self.kv.scratch_block,
                              self.device, self.max_group)
        return DecodeGraphs(self._graph_forward, sizes, inputs, self.device, pool,
                            advance=self.config.decode_lookahead, eager=eager)

    def _capture_graphs(self) -> None:
        """Mixed-step graphs (largest first), then decode graphs, all in one memory pool."""
        cfg = self.config
        pool = None
        tokens = cfg.graph_token_sizes()
        if tokens:
            mixed = MixedInputs(tokens[-1], cfg.max_num_seqs, cfg.max_num_seqs, self.max_blocks_per_seq,
                                self.block_size, self.kv.scratch_block, self.device, self.max_group)
            self.mixed_graphs = MixedGraphs(self._graph_forward, tokens, mixed, self.device)
            pool = self.mixed_graphs.pool
        sizes = cfg.graph_batch_sizes()
        if sizes:
            self.graphs = self._decode_graphs(sizes, pool, eager=False)

    def _start_lookahead(self) -> None:
        """The decode lookahead, over the captured decode graphs or, without them, eager ones."""
        cfg = self.config
        if self.graphs is None:
            sizes = cfg.graph_batch_sizes() or (cfg.max_num_seqs,)
            self.graphs = self._decode_graphs(sizes, None, eager=True)
        readback = IdsReadback(self.graphs.sizes[-1], self.device)
        self.lookahead = DecodeLookahead(self.graphs, readback, self.block_size)

    def choice_summary(self) -> list[str]:
        """Log lines of the start-up kernel choices (``gemv_timings``, ``fused_choice``); empty when none ran."""
        lines = [line for g in self.gemv_timings for line in g.summary()]
        return lines + (self.fused_choice.summary() if self.fused_choice is not None else [])

    def _attention(self, kv: KVCache) -> TorchAttention | TritonAttention:
        s = self.spec
        if self.backend == "triton":
            cfg = self.config
            # a step's decode rows are among its scheduled tokens; graphs pad to at most max_num_seqs rows
            rows = max(cfg.max_num_batched_tokens, cfg.max_num_seqs)
            return TritonAttention(kv, s.num_heads, s.num_kv_heads, s.head_dim, pdl=self.pdl, max_group=self.max_group,
                                   merge_rows=rows if cfg.merge_decode_splits else 0)
        return TorchAttention(kv, s.num_heads, s.num_kv_heads, s.head_dim)

    # ---------------------------------------------------------------- sizing
    def profile_plan(self, tokens: int) -> tuple[StepPlan, int]:
        """``engine.kv_sizing.profile_plan`` at this runner's ``max_model_len`` and block size."""
        return profile_plan(tokens, self.max_model_len, self.block_size)

    def _profile_num_blocks(self) -> int:
        if self.device.type != "cuda":
            raise ValueError("EngineConfig.num_gpu_blocks must be given on the CPU "
                             "(the KV pool is sized from free memory only on CUDA)")
        extra, reserve = draft_reserve(self.config, self.kv_dtype, self.dtype)
        return blocks_in_free_memory(self.config, self.spec, self.max_model_len, self.kv_dtype, self.device,
                                     lambda meta, kv: self.model.forward(meta, self._attention(kv)), extra, reserve)

    # --------------------------------------------------------------- execute
    def _swap(self, plan: StepPlan) -> None:
        if plan.swap_out:
            self.kv.swap_out(plan.swap_out)
        if plan.swap_in:
            self.kv.swap_in(plan.swap_in)

    def _graph_size(self, plan: StepPlan) -> int | None:
        """The captured size ``plan`` replays at (decode rows or token count), or None (eager)."""
        if not plan.prefills:  # past the largest decode graph, ``DecodeGraphs.run`` replays it on chunks of rows
            if self.graphs is None or not plan.decodes:
                return None
            return self.graphs.size_for(plan.num_decode_rows) or self.graphs.sizes[-1]
        return self.mixed_graphs.size_for(plan) if self.mixed_graphs is not None else None

    def uses_graph(self, plan: StepPlan) -> bool:
        """Whether ``plan`` runs as a captured graph (decode-only or mixed)."""
        return self._graph_size(plan) is not None

    def _replay(self, plan: StepPlan, size: int, rows: DecodeRows | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, list[Sequence]]:
        """Swaps of ``plan``, then the replay of its graph of ``size`` (``_graph_size(plan)``).

        Args:
            rows: the plan's decode rows (default: one per decode).

        Returns:
            Logits [n, V] in the model dtype, greedy ids [n], the n sampling sequences (decode rows first).
        """
        if self.lookahead is not None:
            self.lookahead.drop()
        self._swap(plan)
        if not plan.prefills:
            assert self.graphs is not None
            logits, ids = self.graphs.run(rows if rows is not None else plan.decodes)
            return logits, ids, rows.seqs if rows is not None else list(plan.decodes)
        assert self.mixed_graphs is not None
        return self.mixed_graphs.run(plan, size, rows)

    def prepare(self, plan: StepPlan, rows: DecodeRows | None = None) -> StepMetadata:
        """Swaps of ``plan``, then its metadata for an eager forward pass (decode rows: ``rows``)."""
        if self.lookahead is not None:
            self.lookahead.drop()
        self._swap(plan)
        return self.builder.build(plan, rows=rows)

    def run_rows(self, plan: StepPlan, rows: DecodeRows,
                 ) -> tuple[torch.Tensor, torch.Tensor, list[Sequence], int]:
        """The forward pass of ``plan`` with ``rows`` as its decode rows (speculative verification), through
        a captured graph when one fits.

        Returns:
            Logits [n, V] (model dtype from a graph, fp32 eager), greedy ids [n] on the device, the n rows'
            sequences, and the index of the first decode row (its rows are consecutive; the prefill
            chunks that sample fill the other rows).
        """
        size = self._graph_size(plan)
        if size is not None:
            logits, ids, seqs = self._replay(plan, size, rows)
            return logits, ids, seqs, 0
        meta = self.prepare(plan, rows)
        logits = self.model.forward(meta, self.attention)
        return logits, greedy_ids(logits), meta.sampling_seqs, len(meta.sampling_seqs) - len(rows)

    def logits(self, plan: StepPlan, all_rows: bool = False) -> tuple[torch.Tensor, list[Sequence]]:
        """Run ``plan``'s forward pass.

        Args:
            plan: the step.
            all_rows: return the logits of every token of the step (prefill tokens
                in plan order, then decodes; eager), not only the sampling rows.

        Returns:
            fp32 logits [N, V] of the sampling sequences, and those sequences in row order.
        """
        size = None if all_rows else self._graph_size(plan)
        if size is not None:
            logits, _, seqs = self._replay(plan, size)
            return logits.float(), seqs
        meta = self.prepare(plan)
        if all_rows:
            meta.logits_indices = None
        if meta.num_tokens == 0:
            return torch.empty(0, self.spec.vocab_size, device=self.device), []
        return self.model.forward(meta, self.attention), meta.sampling_seqs

    def execute(self, plan: StepPlan) -> StepResult:
        """Run one step of the contract.

        Returns:
            The sampled token per sampling sequence, and the step's measured wall time.
        """
        if plan.num_draft_tokens:
            if self.speculative is None:
                raise ValueError(f"step {plan.step_id} verifies {plan.num_draft_tokens} draft tokens but the engine "
                                 "has no proposer (EngineConfig.speculative_method is None)")
            return self.speculative.execute(plan)
        start = time.perf_counter()
        ahead = self.lookahead
        if ahead is not None and (ticket := ahead.take(plan)) is not None:  # already on the GPU
            assert self.graphs is not None
            self.last_launch_s = 0.0
            ahead.launch_after(plan, self.graphs.size_for(len(plan.decodes)))
            tokens = ahead.readback.wait(ticket)
            new = {s.seq_id: [t] for s, t in zip(plan.decodes, tokens, strict=True)}
            return StepResult(time.perf_counter() - start, new)
        size = self._graph_size(plan)
        if size is not None:
            logits, ids, seqs = self._replay(plan, size)
            self.last_launch_s = time.perf_counter() - start
            params = [s.request.sampling for s in seqs]
            if all(p.temperature == 0.0 for p in params):
                if ahead is not None and not plan.prefills and len(plan.decodes) <= size:  # not chunked
                    ticket = ahead.readback.start(ids)
                    ahead.launch_after(plan, size)
                    tokens = ahead.readback.wait(ticket)
                else:
                    tokens = ids.tolist()  # the step's one synchronisation
            else:
                tokens = self.sampler.sample(logits.float(), params, [s.num_generated for s in seqs]).tolist()
            if not seqs:  # a chunk in the middle of a prompt: nothing to read back, wait for the step
                torch.cuda.synchronize(self.device)
            new = {s.seq_id: [t] for s, t in zip(seqs, tokens, strict=True)}
            return StepResult(time.perf_counter() - start, new)
        logits, seqs = self.logits(plan)
        if not seqs:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return StepResult(time.perf_counter() - start, {})
        params = [s.request.sampling for s in seqs]
        index = [s.num_generated for s in seqs]
        tokens = self.sampler.sample(logits, params, index).tolist()  # the step's one synchronisation
        duration = time.perf_counter() - start
        return StepResult(duration, {s.seq_id: [t] for s, t in zip(seqs, tokens, strict=True)})
