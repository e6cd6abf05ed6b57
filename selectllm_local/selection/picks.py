"""Answers become picks: one subset's result, the documented fallback, and the run's counts.

Why apart from ``selection``: ``selection`` decides what to ask and when (rounds, retries, the
context fit); this module holds what is done with an answer once it is in, the part a reader
checks when a count in ``summary.json`` looks wrong. The fallback is deterministic: salvaged ids
first, then draws from an RNG seeded with (seed, round, subset id), so a re-run falls back the
same way.

Logprob mode's top ``k`` (``top_k_tied``) must not depend on how prompts were batched. Scores of
the same prompt differ between batch compositions, thread counts and Ray shards by float rounding
(measured up to ~1e-5 nats in float32, more in bfloat16; ``benchmarks/bench_tie_drift.py``), so a
plain sort would let that noise decide between candidates the model scores alike. Scores within
``TIE_TOLERANCE`` of the cut (the ``k``-th best score) are therefore tied, and ties are broken by
a seeded hash of each candidate's content id (``PoolItem.uid``), which no batching, shard or
re-ordering of the pool file changes. Each result records its ``margin`` (``k``-th best minus
``(k+1)``-th best score) and whether the tie rule decided it (``tie_rule``).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selectllm_local.records import Subset, SubsetResult

log = logging.getLogger("selectllm_local.selection.rounds")

Key = tuple[int, int]  # (round, subset id)
NO_ANSWER = "no answer: the backend returned nothing for this prompt"
NO_ANSWER_KIND = "no_answer"  # its kind in the counts (the parser names the others)
# Nats. Scores closer than this to the cut count as tied (module docstring). It sits two orders
# of magnitude above the batch drift measured in float32 (vLLM and transformers, CPU) and below
# any preference a model expresses: 1e-3 nats is a 0.1% difference in probability.
TIE_TOLERANCE = 1e-3


def tie_key(seed: int, uid: str) -> int:
    """Order of a candidate among tied ones: a seeded hash of its content id (not its position
    in the file or the prompt, so the rule favours no part of the pool)."""
    digest = hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class TopK:
    """The ``k`` chosen (0-based display positions, ascending), the decision margin, and whether
    the tie rule decided (``margin <= tolerance``). ``margin`` is None when nothing is left out."""

    chosen: list[int]
    margin: float | None
    tie_rule: bool


def top_k_tied(
    scores: Sequence[float], k: int, keys: Sequence[int], tolerance: float = TIE_TOLERANCE
) -> TopK:
    """The ``k`` best ``scores``, near-ties (within ``tolerance`` of the cut) broken by ``keys``.

    Let ``cut`` be the ``k``-th best score. When the next score is more than ``tolerance`` below
    it, the choice is the plain top ``k``. Otherwise the candidates above ``cut + tolerance`` are
    kept and the remaining places go to the candidates within ``tolerance`` of ``cut``, lowest
    ``keys`` first. Noise smaller than ``tolerance`` can change the outcome only where some score
    lies within that noise of ``cut +- tolerance``, never between two scores that are merely close.
    The chosen positions come back ascending, so their order depends on no score either.
    """
    n = len(scores)
    if not 0 < k <= n or len(keys) != n:
        raise ValueError(f"top_k_tied: k={k} for {n} scores and {len(keys)} keys")
    ranked = sorted(range(n), key=lambda j: (-scores[j], keys[j]))
    if k == n:
        return TopK(list(range(n)), None, False)
    cut = scores[ranked[k - 1]]
    margin = cut - scores[ranked[k]]
    if margin > tolerance:
        return TopK(sorted(ranked[:k]), margin, False)
    sure = [j for j in range(n) if scores[j] > cut + tolerance]
    tied = sorted((j for j in range(n) if abs(scores[j] - cut) <= tolerance), key=keys.__getitem__)
    return TopK(sorted(sure + tied[: k - len(sure)]), margin, True)


@dataclass
class SelectionOutcome:
    """All subset results (every round), the final picks and the counts for the summary."""

    results: dict[Key, SubsetResult]
    subsets: dict[Key, Subset]
    selected: list[int]  # pool indices, exactly the budget
    final: dict[int, Key]  # pool index -> the (round, subset) that picked it last
    rounds: int
    llm_called: bool
    counts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def fallback_picks(subset: Subset, salvage: Sequence[int], seed: int) -> list[int]:
    """Documented fallback: salvaged valid ids first, then seeded draws from the rest (1-based)."""
    n = len(subset.candidates)
    keep = [p for p in dict.fromkeys(salvage) if 1 <= p <= n][: subset.k]
    rest = [p for p in range(1, n + 1) if p not in keep]
    rng = random.Random(f"{seed}:{subset.round}:{subset.id}")
    return keep + rng.sample(rest, subset.k - len(keep))


def result_of(subset: Subset, positions: list[int], **kw: Any) -> SubsetResult:
    picks = [subset.candidates[p - 1] for p in positions]
    return SubsetResult(
        subset_id=subset.id, round=subset.round, picks=picks, positions=positions, **kw
    )


def trivial_result(subset: Subset) -> SubsetResult:
    k = min(subset.k, len(subset.candidates))
    return result_of(subset, list(range(1, k + 1)), raw=[], attempts=0, fallback=False, errors=[])


def done_result(
    s: Subset,
    positions: list[int],
    st: dict[str, Any],
    attempts: int,
    fallback: bool,
    reasons: dict[int, str],
) -> SubsetResult:
    return result_of(
        s,
        positions,
        raw=list(st["raw"]),
        attempts=attempts,
        fallback=fallback,
        errors=list(st["errors"]),
        error_kinds=list(st["kinds"]),
        prompt_tokens=st["pt"],
        output_tokens=st["ot"],
        seconds=round(time.perf_counter() - st["t0"], 4),
        reasons=reasons,
    )


def matches_plan(prev: SubsetResult, s: Subset) -> bool:
    ok = len(prev.picks) == min(s.k, len(s.candidates)) and set(prev.picks) <= set(s.candidates)
    if not ok:
        log.warning("ignoring a stored answer for subset %d round %d: plan changed", s.id, s.round)
    return ok


def count_results(results: Any, *, called_now: int = 0, resumed: int = 0) -> dict[str, Any]:
    """Counts for the summary: first-try validity, retries, fallbacks, error kinds, tokens."""
    rs = list(results)
    asked = [r for r in rs if r.attempts > 0]
    kinds: Counter[str] = Counter(k for r in rs for k in r.error_kinds)
    out: dict[str, Any] = {
        "subsets": len(rs),
        "asked": len(asked),
        "no_call": len(rs) - len(asked),
        "valid_first_try": sum(1 for r in asked if not r.errors and not r.fallback),
        "retried": sum(1 for r in asked if r.errors and not r.fallback),
        "fallback": sum(1 for r in asked if r.fallback),
        "invalid_answers": sum(len(r.errors) for r in rs),
        "errors": dict(sorted(kinds.items())),
        "sent_this_run": called_now,
        "resumed": resumed,
        "prompt_tokens": sum(r.prompt_tokens for r in rs),
        "output_tokens": sum(r.output_tokens for r in rs),
        "rounds": len({r.round for r in rs}),
    }
    margins = sorted(r.margin for r in rs if r.margin is not None)
    if margins:
        out["ties"] = {
            "tolerance": TIE_TOLERANCE,
            "scored": len(margins),
            "decided_by_tie_rule": sum(1 for r in rs if r.tie_rule),
            "min_margin": margins[0],
            "median_margin": margins[len(margins) // 2],
        }
    return out
