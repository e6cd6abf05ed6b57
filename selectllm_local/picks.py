"""Answers become picks: one subset's result, the documented fallback, and the run's counts.

Why apart from ``selection``: ``selection`` decides what to ask and when (rounds, retries, the
context fit); this module holds what is done with an answer once it is in, the part a reader
checks when a count in ``summary.json`` looks wrong. The fallback is deterministic: salvaged ids
first, then draws from an RNG seeded with (seed, round, subset id), so a re-run falls back the
same way.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selectllm_local.records import Subset, SubsetResult

log = logging.getLogger("selectllm_local.selection")

Key = tuple[int, int]  # (round, subset id)


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


def error_kind(message: str) -> str:
    """Stable key for a validation error message (for counts)."""
    for prefix, kind in (
        ("empty", "empty"),
        ("no identifiers", "no_ids"),
        ("id 0", "zero"),
        ("id out of range", "out_of_range"),
        ("duplicate", "duplicate"),
        ("too few", "too_few"),
        ("too many", "too_many"),
        ("not an integer", "not_integer"),
    ):
        if message.startswith(prefix):
            return kind
    return "other"


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
    kinds: Counter[str] = Counter(error_kind(e) for r in rs for e in r.errors)
    return {
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
