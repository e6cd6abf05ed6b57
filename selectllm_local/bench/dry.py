"""``--dry-run``: what a selection will cost, before any model is loaded.

The estimate renders every round-one prompt of the pool with the real prompt builder (the
default template and criteria), counts its tokens with the model's tokenizer when one is given,
else with a documented heuristic (both in ``prompttokens``, the one estimator ``plan`` uses too),
and turns tokens into time:

* prefill FLOPs = 2 x non-embedding parameters x prompt tokens; seconds = FLOPs / (peak x
  utilisation), the peak being the GPU's dense bf16 datasheet figure (or this machine's measured
  matmul rate with ``gpu="measured"``);
* decode is bandwidth-bound: each engine step reads every weight once, so seconds = steps x
  weight bytes / memory bandwidth, with steps = ceil(prompts / max_num_seqs) x answer tokens.

With prefix caching the shared system block (whole cache blocks of it) is computed once, not once
per prompt; both figures are given. Later tournament rounds (budget < subsets) see only the
winners, at most 1/(K-1) more tokens in total, and are added as that bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem

CACHE_BLOCK = 16  # vLLM's GPU KV block size (tokens); CPU uses 128


def _total_params(shape: dict[str, Any], non_emb: int) -> int:
    emb = (shape.get("vocab_size") or 0) * shape["hidden_size"]
    return non_emb + emb * (1 if shape.get("tie_word_embeddings") else 2)


@dataclass
class RoundOne:
    """Round one of a selection over a pool: every row shown once, K candidates per prompt."""

    candidates: int
    subsets: int
    budget: int
    picks: int
    per_prompt: list[int]
    shared: int
    method: str
    rounds_factor: float  # later tournament rounds, as a bound (1 when one round suffices)
    answer_tokens: int  # generated ids per prompt

    @property
    def tokens(self) -> int:
        return sum(self.per_prompt)


@dataclass
class BudgetTerms:
    """What the budget changes in a selection of ``n`` rows with K candidates per prompt."""

    subsets: int
    picks: int  # picks asked per prompt in round one
    rounds_factor: float  # later tournament rounds (budget < subsets), as a bound
    answer_tokens: int  # generated ids per prompt


def budget_terms(n: int, k_cand: int, budget: int | None) -> BudgetTerms:
    n_subsets = math.ceil(n / k_cand)
    budget = budget or n_subsets
    picks = max(1, round(budget / n_subsets)) if budget >= n_subsets else 1
    return BudgetTerms(
        subsets=n_subsets,
        picks=picks,
        rounds_factor=1 + 1 / (k_cand - 1) if budget < n_subsets else 1.0,
        answer_tokens=3 + picks * (len(str(k_cand)) + 1),
    )


def round_one(
    items: Sequence[PoolItem],
    *,
    candidates: int | None = None,
    budget: int | None = None,
    tokenizer: str | None = None,
    max_candidate_tokens: int = 256,
) -> RoundOne:
    """Prompts and tokens of round one over ``items`` (real prompt builder, strided layout)."""
    from selectllm_local.bench.run import strided_plan
    from selectllm_local.cluster import kmeans as clustering
    from selectllm_local.selection import prompttokens

    n = len(items)
    k_cand = min(candidates or clustering.choose_k(n), n)
    terms = budget_terms(n, k_cand, budget)
    n_subsets, picks = terms.subsets, terms.picks
    # Every pool row is shown exactly once in round one; a strided layout has the same token total.
    plan = strided_plan(n_subsets, k_cand, min(picks, k_cand - 1))
    asked = []
    for s in plan.subsets:
        s.candidates = [c for c in s.candidates if c < n]
        if len(s.candidates) < 2:
            continue
        s.k = min(s.k, len(s.candidates) - 1)
        asked.append(s)
    counted = prompttokens.count_prompts(
        asked, items, tokenizer=tokenizer, max_candidate_tokens=max_candidate_tokens
    )
    return RoundOne(
        candidates=k_cand,
        subsets=n_subsets,
        budget=budget or n_subsets,
        picks=picks,
        per_prompt=counted.per_prompt,
        shared=counted.shared or 0,
        method=counted.method,
        rounds_factor=terms.rounds_factor,
        answer_tokens=terms.answer_tokens,
    )


def dry_run(
    pool: Path | str,
    *,
    shape: str | None = "llama-3-8b",
    model: str | None = None,
    tokenizer: str | None = None,
    gpu: str = "h100",
    utilization: float = 0.4,
    candidates: int | None = None,
    budget: int | None = None,
    max_candidate_tokens: int = 256,
    max_num_seqs: int = 256,
    dtype_bytes: int = 2,
) -> dict[str, Any]:
    """Estimate prompts, tokens, FLOPs and seconds of the selection stage for ``pool``."""
    from selectllm_local import hardware
    from selectllm_local.bench.model import model_shape
    from selectllm_local.data import pool as data
    from selectllm_local.models import random_weights as tinymodel

    if not 0 < utilization <= 1:
        raise UserError(f"--utilization must be in (0, 1] (got {utilization}).")
    if model:
        arch = model_shape(model)
        tokenizer = tokenizer or model
    elif shape in tinymodel.SHAPES:
        arch = dict(tinymodel.SHAPES[shape])
    else:
        raise UserError(f"--shape {shape!r} is not known. Shapes: {', '.join(tinymodel.SHAPES)}.")
    non_emb = tinymodel.non_embedding_params(arch)
    items, _ = data.load_pool(pool)
    r = round_one(
        items, candidates=candidates, budget=budget, tokenizer=tokenizer,
        max_candidate_tokens=max_candidate_tokens,
    )  # fmt: skip
    n, k_cand, budget, picks = len(items), r.candidates, r.budget, r.picks
    prompt_tokens, shared, method = r.per_prompt, r.shared, r.method
    tokens, rounds_factor, answer_tokens = r.tokens, r.rounds_factor, r.answer_tokens
    cached = (shared or 0) // CACHE_BLOCK * CACHE_BLOCK * max(0, len(prompt_tokens) - 1)
    if gpu == "measured":
        peak = hardware.matmul_peak(hardware.resolve_dtype("auto"))
        bandwidth, device = None, f"this machine (measured matmul peak, {hardware.cpu_model()})"
    else:
        spec = hardware.gpu_spec(gpu)
        peak, bandwidth, device = (
            spec.bf16_dense_tflops * 1e12,
            spec.memory_bandwidth_gbs * 1e9,
            spec.name,
        )
    flops = 2.0 * non_emb * tokens * rounds_factor
    flops_cached = 2.0 * non_emb * (tokens - cached) * rounds_factor
    prefill_s = flops / (peak * utilization)
    prefill_cached_s = flops_cached / (peak * utilization)
    steps = math.ceil(len(prompt_tokens) / max_num_seqs) * answer_tokens * rounds_factor
    weight_bytes = _total_params(arch, non_emb) * dtype_bytes
    decode_s = steps * weight_bytes / bandwidth if bandwidth else None
    return {
        "pool": str(pool),
        "pool_rows": n,
        "model": model or shape,
        "non_embedding_params": non_emb,
        "candidates_per_prompt": k_cand,
        "prompts": len(prompt_tokens),
        "budget": budget,
        "picks_per_prompt": picks,
        "token_count_method": method,
        "max_candidate_tokens": max_candidate_tokens,
        "prompt_tokens": tokens,
        "prompt_tokens_mean": tokens / max(1, len(prompt_tokens)),
        "shared_prefix_tokens": shared or 0,
        "prefix_cached_tokens": cached,
        "answer_tokens_per_prompt": answer_tokens,
        "later_rounds_factor": rounds_factor,
        "prefill_flops": flops,
        "device": device,
        "peak_flops": peak,
        "utilization": utilization,
        "prefill_seconds": prefill_s,
        "prefill_seconds_prefix_cached": prefill_cached_s,
        "decode_seconds": decode_s,
        "total_seconds": prefill_s + (decode_s or 0.0),
        "total_seconds_prefix_cached": prefill_cached_s + (decode_s or 0.0),
    }


def format_dry_run(est: dict[str, Any]) -> str:
    """A few lines for people."""
    dec = est["decode_seconds"]
    return (
        f"Pool {est['pool']}: {est['pool_rows']:,} rows -> {est['prompts']:,} prompts of "
        f"{est['candidates_per_prompt']} candidates ({est['token_count_method']}).\n"
        f"Prompt tokens: {est['prompt_tokens']:,} (mean {est['prompt_tokens_mean']:.0f}; shared "
        f"system block {est['shared_prefix_tokens']} tokens).\n"
        f"Model {est['model']}: {est['non_embedding_params'] / 1e9:.2f}B non-embedding parameters; "
        f"prefill {est['prefill_flops']:.3g} FLOPs.\n"
        f"On {est['device']} at {100 * est['utilization']:.0f}% of {est['peak_flops'] / 1e12:.1f} "
        f"TFLOP/s: prefill {est['prefill_seconds']:.1f} s ({est['prefill_seconds_prefix_cached']:.1f} s "
        f"with prefix caching)"
        + (f", decode ~{dec:.1f} s" if dec is not None else "")
        + f"; total ~{est['total_seconds']:.1f} s ({est['total_seconds'] / 60:.2f} min)."
    )
