"""Offline front end: ``LLM(model).generate(prompts, sampling_params)`` with continuous batching.

The loop is the step contract itself: ``schedule``, ``execute``, ``postprocess``
until every request is finished, with the scheduler's clock advanced by each
step's measured duration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.tokenizer import TOKENIZER_FILES, check_vocab, load_tokenizer
from policies.batching import make_policy
from policies.scheduler import Scheduler, SchedulerConfig
from policies.sequence import Sequence
from policies.spec import parse_speculation
from policies.speculation import SpeculationPolicy
from policies.types import Request, SamplingParams


class LLM:
    """A loaded model plus a scheduler configuration, for offline generation.

    Args:
        model: path of a Hugging Face style Llama folder.
        policy: batching policy name (``policies.batching.POLICIES``).
        token_budget: most tokens per step (chunked prefill splits longer prompts).
        max_num_seqs: most sequences per step.
        enable_prefix_caching: reuse identical full prompt blocks across requests.
        preemption_mode: 'recompute' or 'swap' (swap needs ``num_cpu_blocks``).
        victim: victim policy name (``policies.preemption.VICTIM_POLICIES``).
        eviction: eviction policy name (``policies.eviction``).
        speculation: speculative decoding: a speculation policy or its spec (``fixed:num_draft_tokens=4``,
            ``policies.speculation``); needs ``speculative_method`` ('ngram' or 'draft' with ``draft_model``).
        tokenizer: ``engine.tokenizer.load_tokenizer`` spec: "auto" (the model folder's
            tokenizer files, if any), "llama3", or a path.
        **engine_config: further ``EngineConfig`` fields (dtype, device, num_gpu_blocks...).

    Raises:
        ValueError: a speculation policy without a ``speculative_method``, or a bad setting.
    """

    def __init__(self, model: str | Path, *, policy: str = "continuous", token_budget: int = 2048,
                 max_num_seqs: int = 256, enable_prefix_caching: bool = True,
                 preemption_mode: str = "recompute", victim: str = "lifo", eviction: str = "lru",
                 speculation: str | SpeculationPolicy | None = None, tokenizer: str = "auto",
                 **engine_config: Any) -> None:
        self.policy = make_policy(policy, max_num_seqs=max_num_seqs, token_budget=token_budget)
        self.speculation = parse_speculation(speculation) if isinstance(speculation, str) or speculation is None \
            else speculation
        if self.speculation is not None and engine_config.get("speculative_method") is None:
            raise ValueError("LLM: a speculation policy needs speculative_method='ngram' or 'draft' (with "
                             "draft_model)")
        engine_config.setdefault("max_num_batched_tokens", token_budget)
        engine_config.setdefault("max_num_seqs", max_num_seqs)
        self.config = EngineConfig(model=str(model), **engine_config)
        self.runner = ModelRunner(self.config)
        self.scheduler_config = SchedulerConfig(
            num_gpu_blocks=self.runner.num_gpu_blocks, block_size=self.config.block_size,
            num_cpu_blocks=self.config.num_cpu_blocks, enable_prefix_caching=enable_prefix_caching,
            preemption_mode=preemption_mode, victim=victim, eviction=eviction,
            verify_group_rows=self.runner.max_group)
        self.tokenizer = load_tokenizer(tokenizer, Path(model))
        if self.tokenizer is not None:
            check_vocab(self.tokenizer, self.runner.spec.vocab_size)
        self.last_scheduler: Scheduler | None = None

    def _encode(self, prompts: Seq[str] | Seq[Seq[int]]) -> list[list[int]]:
        out: list[list[int]] = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError(f"prompt {i} is text but {self.config.model} has no tokenizer files "
                                     f"({', '.join(TOKENIZER_FILES)}); pass token ids instead")
                ids = self.tokenizer.encode(p, bos=True)
            else:
                ids = [int(t) for t in p]
            if not ids:
                raise ValueError(f"prompt {i} is empty")
            vocab = self.runner.spec.vocab_size
            if not all(0 <= t < vocab for t in ids):
                raise ValueError(f"prompt {i} has token ids outside [0, {vocab})")
            if len(ids) >= self.runner.max_model_len:
                raise ValueError(f"prompt {i} has {len(ids)} tokens; max_model_len is "
                                 f"{self.runner.max_model_len} (prompt plus at least one new token)")
            out.append(ids)
        return out

    def _stops(self, params: SamplingParams) -> SamplingParams:
        """``params`` with the model's EOS ids added to its stop tokens (unless EOS is ignored)."""
        if params.ignore_eos:
            return params
        stops = tuple(dict.fromkeys((*params.stop_token_ids, *self.runner.spec.eos_token_ids)))
        return dataclasses.replace(params, stop_token_ids=stops)

    def generate(self, prompts: Seq[str] | Seq[Seq[int]],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 max_tokens: int = 16) -> list[dict[str, Any]]:
        """Generate a completion for every prompt.

        Args:
            prompts: texts (needs a tokenizer; encoded with its beginning-of-text id first)
                or token-id lists.
            sampling_params: one for all prompts or one per prompt (default greedy;
                note ``SamplingParams.ignore_eos`` defaults to True, replay-style).
            max_tokens: most new tokens per prompt (fewer if the sequence would pass
                ``max_model_len``, or on a stop token when EOS is not ignored).

        Returns:
            Per prompt, in order: ``{"text": str | None, "token_ids": list[int], "record": dict}``
            (``text`` without special tokens; None without a tokenizer).

        Raises:
            ValueError: text prompts without a tokenizer, an empty or too long prompt,
                ``max_tokens < 1``, or a request the KV pool can never hold.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        encoded = self._encode(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            per_prompt = [sampling_params] * len(encoded)
        else:
            per_prompt = list(sampling_params)
            if len(per_prompt) != len(encoded):
                raise ValueError(f"{len(per_prompt)} sampling params for {len(encoded)} prompts")
        requests = []
        for i, (ids, sp) in enumerate(zip(encoded, per_prompt, strict=True)):
            out_len = min(max_tokens, self.runner.max_model_len - len(ids))
            requests.append(Request(str(i), 0.0, len(ids), out_len, prompt_token_ids=tuple(ids),
                                    sampling=self._stops(sp)))
        seqs = self.run(requests)
        by_id = {s.seq_id: s for s in seqs}
        results = []
        for r in requests:
            seq = by_id[r.id]
            text = None if self.tokenizer is None else self.tokenizer.decode(seq.output_ids)
            results.append({"text": text, "token_ids": list(seq.output_ids), "record": seq.record()})
        return results

    def run(self, requests: Seq[Request]) -> list[Sequence]:
        """Run requests to completion with a fresh scheduler (all arrive at once).

        Returns:
            The finished sequences, in finish order.
        """
        sched = Scheduler(self.scheduler_config, self.policy, self.speculation)
        self.last_scheduler = sched
        run_offline(sched, self.runner, requests)
        return list(sched.finished)


def run_offline(scheduler: Scheduler, runner: ModelRunner, requests: Seq[Request]) -> None:
    """Run ``requests`` (all arrived at t=0) to completion on ``runner``, steps back to back.

    The clock advances by each step's measured duration; a plan left empty by preemption is
    simply planned again, and one left empty by a policy timer (dynamic batching) jumps the
    clock to the timer.

    Raises:
        RuntimeError: the scheduler plans nothing, waits for nothing and still holds requests.
    """
    for r in requests:
        scheduler.add_request(r)
    now = 0.0
    while scheduler.has_unfinished():
        plan = scheduler.schedule(now)
        if plan.is_empty:
            if plan.preempted:
                continue
            wake = scheduler.next_wake(now)
            if wake is not None and wake > now:
                now = wake
                continue
            raise RuntimeError(f"scheduler produced an empty plan at t={now:.3f}s (step {plan.step_id}) "
                               "with requests left")
        result = runner.execute(plan)
        scheduler.postprocess(plan, result)
        now += result.duration_s
