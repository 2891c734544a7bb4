"""The scheduler: one object, the same in the simulator and on the engine.

``plan = scheduler.schedule(now)`` decides what the next iteration computes;
the executor runs it; ``scheduler.postprocess(plan, result)`` books the new
tokens. Each step: running sequences first (decodes and unfinished prefill
chunks, preempting victims when KV blocks run out), then swapped-out sequences
back in, then new admissions as the batching policy allows, all within the
policy's token budget and sequence limit. With a speculation policy, the
decodes of a step without preemptions then get their draft tokens (within the
budget and the free blocks; ``policies.speculation``).
"""

from __future__ import annotations

from array import array
from collections import deque

from policies.batching import BatchingPolicy
from policies.block_manager import BlockManager, chain_keys
from policies.eviction import make_eviction_policy
from policies.preemption import VICTIM_POLICIES
from policies.scheduler_config import SchedulerConfig
from policies.sequence import SeqStatus, Sequence
from policies.speculation import SpeculationPolicy, assign_drafts, book_verified
from policies.step_log import STEP_LOG_COLUMNS, log_decode_run, log_step
from policies.types import PrefillChunk, Request, StepPlan, StepResult

__all__ = ["STEP_LOG_COLUMNS", "Scheduler", "SchedulerConfig"]


class Scheduler:
    """Iteration-level scheduler with pluggable batching, eviction and victim policies.

    Args:
        config: memory configuration.
        policy: the batching policy.
        speculation: how many draft tokens decodes verify (None: no speculative decoding).
    """

    def __init__(self, config: SchedulerConfig, policy: BatchingPolicy,
                 speculation: SpeculationPolicy | None = None) -> None:
        self.config = config
        self.policy = policy
        self.speculation = speculation
        self.block_size = config.block_size
        self.bm = BlockManager(config.num_gpu_blocks, config.block_size,
                               make_eviction_policy(config.eviction), config.num_cpu_blocks,
                               config.enable_prefix_caching)
        self.victim_fn = VICTIM_POLICIES[config.victim]
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.swapped: deque[Sequence] = deque()
        self.finished: list[Sequence] = []
        # One row of STEP_LOG_COLUMNS per step, flattened (cheap to append, cheap to convert).
        self.step_log = array("d")
        self.num_preemptions = 0
        self._step_id = 0
        self._ids: set[str] = set()

    # ------------------------------------------------------------- requests
    def add_request(self, request: Request) -> Sequence:
        """Queue a request.

        Raises:
            ValueError: duplicate id, or a request that could never run (needs
                more KV blocks than the pool has, or a prompt over the token
                budget without chunked prefill).
        """
        if request.id in self._ids:
            raise ValueError(f"duplicate request id {request.id!r}")
        longest = request.prompt_len + request.output_len - 1  # KV held at the last step
        need = self.bm.blocks_needed(longest + 1)
        if need > self.bm.num_blocks:
            raise ValueError(
                f"request {request.id!r} needs {need} KV blocks ({longest + 1} tokens) but the pool "
                f"has only {self.bm.num_blocks} blocks of {self.block_size} tokens"
            )
        if not self.policy.chunked_prefill and longest > self.policy.token_budget:
            raise ValueError(
                f"request {request.id!r} needs a {longest}-token prefill but the policy's token budget is "
                f"{self.policy.token_budget} and chunked prefill is off"
            )
        self._ids.add(request.id)
        seq = Sequence(request)
        self.waiting.append(seq)
        return seq

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # ---------------------------------------------------------- policy view
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_swapped(self) -> int:
        return len(self.swapped)

    def _keys(self, seq: Sequence) -> list[tuple]:
        if seq.block_keys is None:
            contents = seq.request.block_contents(self.block_size) if self.config.enable_prefix_caching else []
            seq.block_keys = chain_keys(contents)
        return seq.block_keys

    def cached_prefix_tokens(self, seq: Sequence) -> int:
        """Prompt tokens of ``seq`` whose KV is in the prefix cache now."""
        return self.bm.match_prefix(self._keys(seq)) * self.block_size

    def next_wake(self, now: float) -> float | None:
        """When an idle loop should re-ask for a plan (policy timers), else None."""
        return self.policy.next_wake(now, self.waiting, self)

    # ------------------------------------------------------------- schedule
    def schedule(self, now: float) -> StepPlan:
        """Plan the next step at time ``now``.

        Returns:
            The plan; ``plan.is_empty`` when there is nothing to run now.
        """
        self._step_id += 1
        plan = StepPlan(self._step_id, now)
        policy, bm, bs = self.policy, self.bm, self.block_size
        budget = policy.token_budget
        chunked = policy.chunked_prefill
        running = self.running
        decodes = plan.decodes
        decode_ctx = 0
        i, num_running = 0, len(running)
        while i < num_running and budget > 0:
            seq = running[i]
            computed = seq.num_computed
            n = seq.total_len - computed
            if n > budget:
                if not chunked:
                    i += 1
                    continue
                n = budget
            # (computed + n - 1) // bs >= len(table): the step's tokens need a block the table lacks
            if (computed + n - 1) // bs >= len(seq.block_table) and not bm.allocate(seq.block_table, computed + n):
                preempted_self = self._preempt_for(seq, running, i, computed + n, plan)
                num_running = len(running)
                if preempted_self:
                    continue  # running[i] is now the next sequence
            budget -= n
            if n == 1 and computed + 1 == seq.total_len:  # not a 1-token chunk the budget cut
                decodes.append(seq)
                decode_ctx += computed + 1
            else:
                self._add_chunk(plan, seq, computed, n)
            i += 1
        plan.decode_ctx_tokens = decode_ctx
        if self.speculation is not None and decodes and not plan.preempted:
            budget = assign_drafts(plan, self.speculation.draft_lens(decodes, self), self.bm, budget,
                                   self.config.verify_group_rows or 1)
        if not plan.preempted:
            if self.swapped:
                budget = self._swap_in(plan, budget)
            if self.waiting and budget > 0 and policy.may_admit(now, self.waiting, self):
                self._admit(plan, now, budget)
        return plan

    def _add_chunk(self, plan: StepPlan, seq: Sequence, start: int, n: int) -> None:
        plan.prefills.append(PrefillChunk(seq, start, n))
        plan.num_prefill_tokens += n
        plan.prefill_ctx_tokens += start
        plan.prefill_attn_pairs += n * start + n * (n + 1) // 2

    def _preempt_for(self, seq: Sequence, running: list[Sequence], i: int, tokens: int,
                     plan: StepPlan) -> bool:
        """Preempt victims among ``running[i:]`` until ``seq`` gets its blocks.

        Returns:
            True if ``seq`` itself was the victim (it is then out of ``running``).
        """
        while True:
            victim = self.victim_fn(running[i:])
            running.remove(victim)
            self._preempt(victim, plan)
            if victim is seq:
                return True
            if self.bm.allocate(seq.block_table, tokens):
                return False

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        seq.num_preemptions += 1
        self.num_preemptions += 1
        plan.preempted.append(seq)
        if self.config.preemption_mode == "swap" and self.bm.can_swap_out(seq.block_table):
            plan.swap_out.extend(self.bm.swap_out(seq.block_table))
            seq.status = SeqStatus.SWAPPED
            self.swapped.append(seq)
        else:
            self.bm.free(seq.block_table)
            seq.num_computed = 0
            seq.status = SeqStatus.WAITING
            self.waiting.appendleft(seq)

    def _swap_in(self, plan: StepPlan, budget: int) -> int:
        bs = self.block_size
        while self.swapped and budget > 0 and len(self.running) < self.policy.max_num_seqs:
            seq = self.swapped[0]
            n = min(seq.total_len - seq.num_computed, budget)
            need = -(-(seq.num_computed + n) // bs)
            if need > self.bm.num_free_blocks:
                break
            pairs = self.bm.swap_in(seq.block_table)
            assert pairs is not None  # enough blocks were free
            plan.swap_in.extend(pairs)
            self.bm.allocate(seq.block_table, seq.num_computed + n)
            self.swapped.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            budget -= n
            if n == 1 and seq.num_computed + 1 == seq.total_len:
                plan.decodes.append(seq)
                plan.decode_ctx_tokens += seq.num_computed + 1
                if plan.draft_lens:  # keep draft_lens parallel to decodes
                    plan.draft_lens.append(0)
            else:
                self._add_chunk(plan, seq, seq.num_computed, n)
        return budget

    def _admit(self, plan: StepPlan, now: float, budget: int) -> None:
        policy, bm, bs = self.policy, self.bm, self.block_size
        waiting = self.waiting
        admitted: list[Sequence] = []
        for seq in policy.order(waiting, now, self):
            if len(self.running) >= policy.max_num_seqs or budget <= 0:
                break
            hit = bm.acquire_prefix(seq.block_table, self._keys(seq), (seq.total_len - 1) // bs)
            seq.num_computed = hit * bs
            n = seq.total_len - seq.num_computed
            if n > budget:
                n = budget if policy.chunked_prefill else 0
            if n == 0 or not bm.allocate(seq.block_table, seq.num_computed + n):
                bm.free(seq.block_table)
                seq.num_computed = 0
                break
            if seq.first_scheduled_s is None:
                seq.first_scheduled_s = now
                seq.num_cached_tokens = hit * bs
                seq.num_prompt_lookups = seq.prompt_len
            seq.last_admitted_s = now
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            admitted.append(seq)
            budget -= n
            self._add_chunk(plan, seq, seq.num_computed, n)
        if not admitted:
            return
        if all(a is b for a, b in zip(admitted, waiting, strict=False)):
            for _ in admitted:
                waiting.popleft()
        else:
            gone = set(map(id, admitted))
            self.waiting = deque(s for s in waiting if id(s) not in gone)

    # ---------------------------------------------------------- postprocess
    def postprocess(self, plan: StepPlan, result: StepResult) -> list[Sequence]:
        """Book the step's outcome: computed tokens, new tokens, finished sequences.

        Returns:
            The sequences that finished in this step.
        """
        end = plan.now + result.duration_s
        ids = result.token_ids
        done: list[Sequence] = []
        bm = self.bm
        for chunk in plan.prefills:
            seq = chunk.seq
            seq.num_computed += chunk.num_tokens
            if seq.block_keys:
                bm.commit(seq.block_table, seq.block_keys, seq.num_computed)
            if chunk.samples and seq.emit(end, ids[seq.seq_id] if ids is not None else None):
                done.append(seq)
        if plan.num_draft_tokens:
            book_verified(plan, result, end, done)
        elif ids is None:  # simulator fast path: one token of unknown id per decode
            for seq in plan.decodes:
                seq.num_computed += 1
                seq.num_generated += 1
                seq.total_len += 1
                seq.token_times.append(end)
                if seq.num_generated >= seq.output_len:
                    done.append(seq)
        else:
            for seq in plan.decodes:
                seq.num_computed += 1
                if seq.emit(end, ids[seq.seq_id]):
                    done.append(seq)
        if done:
            for seq in done:
                if seq.finish_reason is None:  # emit marks stop tokens; everything else ran to its length
                    seq.finish_reason = "length"
                seq.status = SeqStatus.FINISHED
                seq.finish_s = end
                seq.block_keys = None
                bm.free(seq.block_table)
                self.finished.append(seq)
            self.running = [s for s in self.running if s.status is SeqStatus.RUNNING]
        log_step(self.step_log, plan, result.duration_s, bm.num_used, len(self.running), len(self.waiting),
                 len(self.swapped))
        return done

    def book_decode_run(self, decodes: list[Sequence], starts: list[float], outs: list[float], used: list[int],
                        ctx: int) -> None:
        """Book ``len(starts)`` decode-only steps of ``decodes`` at once (the simulator's ``sim.decode_run``).

        The same as that many ``schedule`` + ``postprocess`` rounds (token ids unknown) that each plan
        exactly ``decodes`` (every running sequence, nothing waiting or swapped) and finish nobody, once the
        caller has allocated each step's new KV blocks in running order.

        Args:
            decodes: the running sequences, in order.
            starts: each step's ``plan.now``.
            outs: each step's ``result.duration_s`` (its tokens are out at ``start + out``).
            used: KV blocks in use after each step.
            ctx: ``decode_ctx_tokens`` of the step before the first (each step reads one more token per decode).
        """
        k, nb = len(starts), len(decodes)
        self._step_id += k
        ends = list(map(float.__add__, starts, outs))
        for seq in decodes:
            seq.num_computed += k
            seq.num_generated += k
            seq.total_len += k
            seq.token_times += ends
        log_decode_run(self.step_log, starts, outs, used, nb, ctx)

    # ---------------------------------------------------------------- abort
    def abort_request(self, request_id: str, now: float | None = None) -> Sequence | None:
        """Drop a request in flight (client gone, stop string matched): call between steps only.

        A waiting, running or swapped sequence leaves its queue, gives back its device (or
        host) blocks, and is marked finished with ``finish_reason`` "abort" (in ``finished``).
        Full prompt blocks it computed stay in the prefix cache, evictable like any others.

        Args:
            request_id: id of a request given to ``add_request``.
            now: the time of the abort, recorded as its ``finish_s`` (None: not recorded).

        Returns:
            The aborted sequence, or None if the request had already finished.

        Raises:
            KeyError: no request of that id was ever added.
        """
        if request_id not in self._ids:
            raise KeyError(f"no request {request_id!r} was added to this scheduler")
        for queue in (self.running, self.waiting, self.swapped):
            seq = next((s for s in queue if s.seq_id == request_id), None)
            if seq is None:
                continue
            queue.remove(seq)
            if queue is self.swapped:
                self.bm.free_host(seq.block_table)  # its table lists host blocks while swapped out
            else:
                self.bm.free(seq.block_table)  # empty for a waiting sequence: a no-op
            seq.status = SeqStatus.FINISHED
            seq.finish_reason = "abort"
            seq.finish_s = now
            seq.block_keys = None
            self.finished.append(seq)
            return seq
        return None
