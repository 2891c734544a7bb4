"""GPU benchmark of speculative decoding on the Llama-3.2-1B shapes with random bf16 weights (CUDA only).

    python -m benchmarks.gpu --out "$OUT" --sections spec

* verification cost: one decode graph replay per captured row count up to 16 (a decode verifying ``k``
  drafts is ``k + 1`` rows, padded to the next captured count), against the 1-row replay;
* decode at batch 1 (prompt 128, 256 new tokens, greedy) and at batch 16 (prompts of 128, 128 new
  tokens each): the plain engine, then the same engine with n-gram drafts under the fixed, batch-aware
  and adaptive speculation policies, then a draft model: the target's own first 4 layers with its
  embedding, final norm and LM head (an early-exit draft of the same weights; a separately trained
  small model is not available here). Each row gives tokens/s beside the plain engine's in the same
  process, the acceptance rate, tokens per decode step, and whether the outputs equal the plain ones.

* scripted drafts of a controlled acceptance (benchmark only, ``ScriptedProposer``): each draft token
  is the plain engine's own next output with probability ``alpha``, else a wrong token; so the
  speed-up the engine turns a given per-token acceptance into, beside the expected tokens per step
  ``1 + alpha + ... + alpha^k``. At batch 1 also against the speculative engine's own greedy path (the
  plain run's 1-row GEMVs round differently from the verification's several-row GEMMs).

Random weights give n-gram and early-exit drafts next to no acceptance (a random model's output
neither copies its prompt nor survives losing 12 of 16 layers), so those rows measure the machinery's
overhead; the scripted rows measure what acceptance buys. In bf16 a row's logits depend a little on how
many rows its GEMMs hold, so a speculative run can leave the plain run's greedy path at a near-tie; the
"outputs equal" rows count how often, and scripted drafts then stop matching (measured acceptance below
``alpha``).
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import row, time_cuda
from benchmarks.engine_setup import MAX_MODEL_LEN, log, write_checkpoint
from policies.scheduler import STEP_LOG_COLUMNS

BENCH = "spec"
POLICIES = ("fixed:num_draft_tokens=4", "batch-aware:num_draft_tokens=4,max_batch=8",
            "adaptive:num_draft_tokens=6,row_cost=0.05")
DRAFT_LAYERS = 4


def write_early_exit(target: Path, folder: Path, layers: int) -> None:
    """A draft checkpoint of ``target``'s first ``layers`` layers with its embedding, norm and LM head."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(target / "model.safetensors"))
    keep = {k: v for k, v in tensors.items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    save_file(keep, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((target / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": layers}))


class ScriptedProposer:
    """Drafts of a controlled acceptance: draft ``j`` of a decode is the reference output's next token with
    probability ``alpha`` (independently), else another token (benchmark only).

    Args:
        reference: per request id, the plain engine's greedy output.
        alpha: per-token probability that a draft is the reference token.
        vocab: vocabulary size (a wrong draft is the reference token + 1, modulo it).
        seed: seed of the draws.
    """

    def __init__(self, reference: dict[str, list[int]], alpha: float, vocab: int, seed: int = 0) -> None:
        import random

        self.reference, self.alpha, self.vocab = reference, alpha, vocab
        self.rng = random.Random(seed)

    def propose(self, plan) -> list[list[int]]:
        out = []
        for seq, k in zip(plan.decodes, plan.draft_lens, strict=True):
            ref, g = self.reference[seq.seq_id], seq.num_generated  # draft 1 stands for output token g
            drafts = []
            for j in range(k):
                true = ref[g + j] if g + j < len(ref) else 0
                drafts.append(true if self.rng.random() < self.alpha else (true + 1) % self.vocab)
            out.append(drafts)
        return out


def _scripted_cases(llm, label: str, prompts: list[list[int]], new: int, alphas: tuple[float, ...],
                    policies: tuple[str, ...], self_reference: bool = False) -> list[dict]:
    """Plain, then each (alpha, policy) with scripted drafts, on one engine.

    With ``self_reference`` the drafts follow the greedy path of a speculative run of ``policies[0]`` whose
    drafts are all wrong (alpha 0) instead of the plain run's: under a fixed draft length every decode
    step of every such run verifies the same number of rows, so its bf16 logits, and its greedy path, are
    those of that reference run (at batch 1 the plain run's 1-row GEMVs are another kernel, whose
    near-ties flip; see the module docstring).
    """
    from policies.speculation import expected_tokens

    tps, plain, _ = _decode(llm, prompts, new, None)
    reference = {str(i): o["token_ids"] for i, o in enumerate(plain)}
    log(f"{label} plain: {tps:.0f} tok/s")
    rows = [row(BENCH, f"{label} plain engine", tps, "tok/s")]
    executor = llm.runner.speculative
    original = executor.proposer
    vocab = llm.runner.spec.vocab_size
    try:
        if self_reference:
            executor.proposer = ScriptedProposer(reference, 0.0, vocab)
            _, plain, _ = _decode(llm, prompts, new, policies[0])
            reference = {str(i): o["token_ids"] for i, o in enumerate(plain)}
        for alpha in alphas:
            executor.proposer = ScriptedProposer(reference, alpha, vocab)
            for spec in policies:
                s_tps, out, per_step = _decode(llm, prompts, new, spec)
                recs = [o["record"] for o in out]
                drafted = sum(r["draft_tokens"] for r in recs)
                ok = sum(r["accepted_draft_tokens"] for r in recs)
                bad = sum(r["draft_rejections"] for r in recs)
                measured = ok / (ok + bad) if ok + bad else float("nan")
                k = int(spec.split("num_draft_tokens=")[1].split(",")[0])
                same = sum(o["token_ids"] == p["token_ids"] for o, p in zip(out, plain, strict=True))
                log(f"{label} alpha {alpha} {spec}: {s_tps:.0f} tok/s ({s_tps / tps:.2f}x plain), per-token "
                    f"acceptance {measured:.2f}, {per_step:.2f} tokens per step (fixed k={k} at alpha: "
                    f"{expected_tokens(alpha, k):.2f}), {same}/{len(out)} outputs equal to the reference, "
                    f"{drafted} drafts")
                name = f"{label} scripted alpha={alpha} {spec}"
                rows += [row(BENCH, name, s_tps, "tok/s", "plain engine, same run", tps),
                         row(BENCH, f"{name} per-token acceptance (spec_alpha)", measured, "ratio",
                             "scripted alpha", alpha),
                         row(BENCH, f"{name} tokens per step", per_step, "tok", "1 + alpha + ... + alpha^k",
                             expected_tokens(alpha, k)),
                         row(BENCH, f"{name} outputs equal to the reference", same / len(out), "ratio")]
    finally:
        executor.proposer = original
    return rows


def _verification_cost(runner) -> list[dict]:
    graphs = runner.graphs
    sizes = [s for s in graphs.sizes if s <= 16]
    base = time_cuda(lambda: graphs.replay_static(1), iters=50) * 1e3
    out = []
    for s in sizes:
        ms = time_cuda(lambda s=s: graphs.replay_static(s), iters=50) * 1e3
        log(f"decode graph of {s} rows: {ms:.3f} ms ({ms / base:.2f}x one row)")
        out.append(row(BENCH, f"1B decode graph replay, {s} rows (k = {s - 1} drafts at batch 1)", ms, "ms",
                       "1 row, same run", base))
    return out


def _decode(llm, prompts: list[list[int]], new: int, spec: str | None) -> tuple[float, list, float]:
    """Tokens/s of one generate call under speculation policy ``spec`` (None: plain), its outputs, and the
    tokens a sequence gains per step."""
    from policies.spec import parse_speculation

    llm.speculation = parse_speculation(spec)
    llm.generate(prompts, max_tokens=8)  # warm-up of this policy's shapes
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = llm.generate(prompts, max_tokens=new)
    wall = time.perf_counter() - t
    steps = len(llm.last_scheduler.step_log) // len(STEP_LOG_COLUMNS)
    return len(prompts) * new / wall, out, new / max(steps, 1)  # all sequences run in every step


def _cases(llm, label: str, prompts: list[list[int]], new: int, policies: tuple[str, ...]) -> list[dict]:
    """The plain engine, then each speculation policy, on the same engine and prompts."""
    tps, out, _ = _decode(llm, prompts, new, None)
    plain = (tps, out)
    log(f"{label} plain: {tps:.0f} tok/s")
    rows = [row(BENCH, f"{label} plain engine", tps, "tok/s")]
    for spec in policies:
        tps, out, per_step = _decode(llm, prompts, new, spec)
        recs = [o["record"] for o in out]
        drafted = sum(r["draft_tokens"] for r in recs)
        rate = sum(r["accepted_draft_tokens"] for r in recs) / drafted if drafted else float("nan")
        same = sum(o["token_ids"] == p["token_ids"] for o, p in zip(out, plain[1], strict=True))
        log(f"{label} {spec}: {tps:.0f} tok/s ({tps / plain[0]:.2f}x plain), acceptance {rate:.2f}, "
            f"{per_step:.2f} tokens per step, {same}/{len(out)} outputs equal to plain")
        rows += [row(BENCH, f"{label} {spec}", tps, "tok/s", "plain engine, same run", plain[0]),
                 row(BENCH, f"{label} {spec} acceptance rate", rate, "ratio"),
                 row(BENCH, f"{label} {spec} tokens per step", per_step, "tok"),
                 row(BENCH, f"{label} {spec} outputs equal to plain", same / len(out), "ratio")]
    return rows


def run(quick: bool = False) -> list[dict]:
    """Benchmark speculative decoding (``quick``: batch 1 only).

    Returns:
        Rows of ``benchmarks.common.row``.
    """
    from engine import LLM

    if not torch.cuda.is_available():
        raise RuntimeError("bench_spec needs a CUDA device")
    rows: list[dict] = []
    single = [list(range(1000, 1128))]
    batch = [[(1000 + 37 * i + 11 * j) % 128000 for j in range(128)] for i in range(16)]
    with tempfile.TemporaryDirectory(prefix="bench_spec_") as tmp:
        target, draft = Path(tmp) / "target", Path(tmp) / "draft"
        target.mkdir()
        draft.mkdir()
        write_checkpoint("llama-3.2-1b", target)
        write_early_exit(target, draft, DRAFT_LAYERS)
        t0 = time.perf_counter()
        llm = LLM(str(target), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, gpu_memory_utilization=0.6,
                  speculative_method="ngram")
        log(f"ngram engine loaded in {time.perf_counter() - t0:.1f}s")
        rows += _verification_cost(llm.runner)
        rows += _cases(llm, "1B b1 ngram", single, 256, POLICIES)
        if not quick:
            rows += _cases(llm, "1B b16 ngram", batch, 128, POLICIES)
        scripted = ("fixed:num_draft_tokens=4", "adaptive:num_draft_tokens=6,row_cost=0.05")
        rows += _scripted_cases(llm, "1B b1", single, 256, (0.5, 0.8, 0.95), scripted)
        rows += _scripted_cases(llm, "1B b1 self-reference", single, 256, (0.5, 0.8, 0.95), scripted[:1],
                                self_reference=True)
        if not quick:
            rows += _scripted_cases(llm, "1B b16", batch, 128, (0.5, 0.8, 0.95), scripted)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        t0 = time.perf_counter()
        llm = LLM(str(target), dtype="bfloat16", max_model_len=MAX_MODEL_LEN, gpu_memory_utilization=0.6,
                  speculative_method="draft", draft_model=str(draft))
        log(f"draft engine ({DRAFT_LAYERS}-layer early exit) loaded in {time.perf_counter() - t0:.1f}s")
        label = f"1B b1 draft ({DRAFT_LAYERS}-layer early exit)"
        rows += _cases(llm, label, single, 256, ("fixed:num_draft_tokens=4", "adaptive:num_draft_tokens=6"))
        if not quick:
            rows += _cases(llm, "1B b16 draft", batch, 128, ("fixed:num_draft_tokens=3",))
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    return rows
