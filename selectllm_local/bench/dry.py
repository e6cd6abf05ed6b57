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


def _architecture(
    shape: str | None, model: str | None, tokenizer: str | None
) -> tuple[dict[str, Any], str | None]:
    """The model's architecture (a model folder's config.json, or a known shape) and the
    tokenizer that counts its prompts (the model's own when a folder is given)."""
    from selectllm_local.bench.model import model_shape
    from selectllm_local.models import random_weights as tinymodel

    if model:
        return model_shape(model), tokenizer or model
    if shape in tinymodel.SHAPES:
        return dict(tinymodel.SHAPES[shape]), tokenizer
    raise UserError(f"--shape {shape!r} is not known. Shapes: {', '.join(tinymodel.SHAPES)}.")


def _device(gpu: str) -> tuple[float, float | None, str]:
    """(peak FLOP/s, memory bandwidth bytes/s or None, name) of a datasheet GPU, or of this
    machine's measured matmul rate (``gpu="measured"``: no bandwidth, so no decode estimate)."""
    from selectllm_local import hardware

    if gpu == "measured":
        peak = hardware.matmul_peak(hardware.resolve_dtype("auto"))
        return peak, None, f"this machine (measured matmul peak, {hardware.cpu_model()})"
    spec = hardware.gpu_spec(gpu)
    return spec.bf16_dense_tflops * 1e12, spec.memory_bandwidth_gbs * 1e9, spec.name


def _seconds(
    r: RoundOne,
    non_emb: int,
    weight_bytes: int,
    rate: float,
    bandwidth: float | None,
    max_num_seqs: int,
) -> dict[str, Any]:
    """Prefill (compute-bound: FLOPs / rate) and decode (bandwidth-bound: steps x weight bytes /
    bandwidth) of round one plus the later-rounds bound, with and without prefix caching."""
    prompts = len(r.per_prompt)
    cached = r.shared // CACHE_BLOCK * CACHE_BLOCK * max(0, prompts - 1)
    flops = 2.0 * non_emb * r.tokens * r.rounds_factor
    flops_cached = 2.0 * non_emb * (r.tokens - cached) * r.rounds_factor
    steps = math.ceil(prompts / max_num_seqs) * r.answer_tokens * r.rounds_factor
    decode_s = steps * weight_bytes / bandwidth if bandwidth else None
    prefill_s, prefill_cached_s = flops / rate, flops_cached / rate
    return {
        "prefix_cached_tokens": cached, "prefill_flops": flops, "prefill_seconds": prefill_s,
        "prefill_seconds_prefix_cached": prefill_cached_s, "decode_seconds": decode_s,
        "total_seconds": prefill_s + (decode_s or 0.0),
        "total_seconds_prefix_cached": prefill_cached_s + (decode_s or 0.0),
    }  # fmt: skip


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
    from selectllm_local.data import pool as data
    from selectllm_local.models import random_weights as tinymodel

    if not 0 < utilization <= 1:
        raise UserError(f"--utilization must be in (0, 1] (got {utilization}).")
    arch, tokenizer = _architecture(shape, model, tokenizer)
    non_emb = tinymodel.non_embedding_params(arch)
    items, _ = data.load_pool(pool)
    r = round_one(
        items, candidates=candidates, budget=budget, tokenizer=tokenizer,
        max_candidate_tokens=max_candidate_tokens,
    )  # fmt: skip
    peak, bandwidth, device = _device(gpu)
    weight_bytes = _total_params(arch, non_emb) * dtype_bytes
    cost = _seconds(r, non_emb, weight_bytes, peak * utilization, bandwidth, max_num_seqs)
    return {
        "pool": str(pool), "pool_rows": len(items), "model": model or shape,
        "non_embedding_params": non_emb, "candidates_per_prompt": r.candidates,
        "prompts": len(r.per_prompt), "budget": r.budget, "picks_per_prompt": r.picks,
        "token_count_method": r.method, "max_candidate_tokens": max_candidate_tokens,
        "prompt_tokens": r.tokens, "prompt_tokens_mean": r.tokens / max(1, len(r.per_prompt)),
        "shared_prefix_tokens": r.shared, "prefix_cached_tokens": cost["prefix_cached_tokens"],
        "answer_tokens_per_prompt": r.answer_tokens, "later_rounds_factor": r.rounds_factor,
        "prefill_flops": cost["prefill_flops"], "device": device, "peak_flops": peak,
        "utilization": utilization,
        **{k: cost[k] for k in ("prefill_seconds", "prefill_seconds_prefix_cached",
                                "decode_seconds", "total_seconds", "total_seconds_prefix_cached")},
    }  # fmt: skip


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
