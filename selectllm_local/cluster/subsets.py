"""Prompt subsets and pick counts: which candidates each prompt shows, and how many to choose.

The invariant behind the paper's layout: every pool item is shown to the selector in exactly one
subset, and every subset has at least one pick. With K balanced clusters, the ``diverse`` layout
puts the p-th member of every cluster into subset p, so a prompt sees K candidates from K different
regions of the embedding space (the paper's default). ``cluster`` draws each subset from within one
cluster (the seed documents' "best of each cluster" reading) and ``random`` is the ablation.

Budgets are arbitrary, not multiples of the number of subsets: :func:`allocate_picks` hands out
exactly ``budget`` picks, proportional to subset size (so a short last subset gets its fair share,
never more than it holds). When the budget is smaller than the number of subsets, selection runs
as a tournament: round one keeps one winner per subset, :func:`next_round` lays the winners out
again in subsets that mix clusters, and so on until exactly ``budget`` remain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from selectllm_local.config.vocab import LAYOUTS
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, Subset


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, *salt])


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.int64)
    if arr.ndim != 1 or (len(arr) and arr.min() < 0):
        raise ValueError("labels must be a 1-D sequence of non-negative cluster ids")
    return arr


def n_clusters(labels: Sequence[int] | np.ndarray) -> int:
    arr = _labels(labels)
    return int(arr.max()) + 1 if len(arr) else 0


def build_subsets(
    labels: Sequence[int] | np.ndarray,
    *,
    layout: str = "diverse",
    subset_size: int | None = None,
    seed: int = 0,
    order: Sequence[int] | np.ndarray | None = None,
) -> list[list[int]]:
    """Partition pool indices 0..N-1 into subsets (candidates in display order).

    ``diverse``: subset p holds the p-th member of every cluster that has one (size K, the last
    subsets shorter when N is not a multiple of K). Members are dealt in ``order`` (e.g. the
    balancing order, nearest first) when given, else in a seeded random order. ``cluster`` splits
    each cluster into near-equal chunks of at most ``subset_size`` (default K); ``random`` splits a
    seeded permutation of the pool the same way. Display order within a subset is shuffled, so a
    position never stands for a cluster.
    """
    arr = _labels(labels)
    n = len(arr)
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout}: unknown; choose one of {', '.join(LAYOUTS)}.")
    if n == 0:
        return []
    k = n_clusters(arr)
    size = subset_size or max(2, k)
    if size < 1:
        raise UserError(f"--subset-size must be at least 1 (got {subset_size}).")
    rng = _rng(seed, 1)
    if order is not None:
        seq = np.asarray(order, dtype=np.int64)
        if len(seq) != n or not np.array_equal(np.sort(seq), np.arange(n)):
            raise ValueError("order must be a permutation of the pool indices")
    else:
        seq = rng.permutation(n)
    # Members of each cluster in dealing order: a stable sort of the sequence by label.
    by_cluster = seq[np.argsort(arr[seq], kind="stable")]
    bounds = np.searchsorted(arr[by_cluster], np.arange(k + 1))
    members = [by_cluster[bounds[c] : bounds[c + 1]] for c in range(k)]

    groups: list[np.ndarray] = []
    if layout == "diverse":
        depth = max(len(m) for m in members)
        for p in range(depth):
            groups.append(np.array([m[p] for m in members if len(m) > p], dtype=np.int64))
    elif layout == "cluster":
        for m in members:
            if len(m):
                groups.extend(np.array_split(m, math.ceil(len(m) / size)))
    else:
        perm = rng.permutation(n)
        groups.extend(np.array_split(perm, math.ceil(n / size)))
    shuffle = _rng(seed, 2)
    return [shuffle.permutation(g).tolist() for g in groups]


def allocate_picks(sizes: Sequence[int], budget: int, *, seed: int = 0) -> list[int]:
    """Picks per subset: sum == ``budget`` exactly, each at most its size, deterministic per seed.

    With ``budget >= len(sizes)`` every non-empty subset gets one pick and the rest is shared in
    proportion to the remaining candidates (largest remainders, ties broken by the seed), so equal
    subsets get counts that differ by at most one. With fewer picks than subsets, ``budget``
    subsets (the largest, ties by the seed) get one each: use :func:`make_plan`, which runs a
    tournament instead of leaving subsets without a pick.
    """
    sz = np.asarray(sizes, dtype=np.int64)
    total = int(sz.sum())
    if len(sz) and sz.min() < 0:
        raise ValueError("subset sizes must be non-negative")
    if not 0 <= budget <= total:
        raise ValueError(f"budget {budget} is outside 0..{total} (the candidates available)")
    tiebreak = _rng(seed, 3).permutation(len(sz))
    nonempty = int((sz > 0).sum())
    if budget <= nonempty:
        # Largest subsets first, seeded order among equals.
        rank = np.lexsort((tiebreak, -sz))
        ks = np.zeros(len(sz), dtype=np.int64)
        ks[rank[:budget]] = 1
        return ks.tolist()
    ks = (sz > 0).astype(np.int64)
    cap = sz - ks
    rest = budget - nonempty
    c_total = int(cap.sum())
    share = rest * cap // c_total
    rem = rest * cap % c_total
    left = rest - int(share.sum())
    rank = np.lexsort((tiebreak, -rem))  # largest remainder first, seeded among equals
    share[rank[:left]] += 1
    ks += share
    assert int(ks.sum()) == budget and bool((ks <= sz).all())
    return ks.tolist()


def rounds_needed(n_subsets: int, budget: int, subset_size: int) -> int:
    """Selection rounds for ``budget`` picks from round-one subsets (1 = no tournament)."""
    rounds, subsets = 1, n_subsets
    while budget < subsets:  # this round keeps one per subset; lay the winners out again
        rounds += 1
        subsets = math.ceil(subsets / max(2, subset_size))
    return rounds


def _check_budget(budget: int, n: int) -> None:
    if budget < 1:
        raise UserError(f"--budget must be at least 1 (got {budget}).")
    if budget > n:
        raise UserError(
            f"--budget {budget} is larger than the pool ({n} instructions after dropping "
            f"duplicates and empty rows). Choose a budget of at most {n}."
        )


def _subsets(
    groups: list[list[int]], labels: np.ndarray, budget: int, rnd: int, seed: int, first_id: int
) -> list[Subset]:
    sizes = [len(g) for g in groups]
    ks = (
        allocate_picks(sizes, budget, seed=seed + rnd)
        if budget >= len(groups)
        else [1] * len(groups)
    )
    return [
        Subset(
            id=first_id + i,
            candidates=g,
            k=int(k),
            clusters=[int(labels[p]) for p in g],
            round=rnd,
        )
        for i, (g, k) in enumerate(zip(groups, ks, strict=True))
    ]


def make_plan(
    labels: Sequence[int] | np.ndarray,
    budget: int,
    *,
    layout: str = "diverse",
    seed: int = 0,
    subset_size: int | None = None,
    order: Sequence[int] | np.ndarray | None = None,
) -> Plan:
    """Round-one plan: subsets of the whole pool and picks per subset.

    Picks sum to ``budget`` when ``budget`` is at least the number of subsets; otherwise every
    subset keeps one winner and ``rounds_expected`` > 1 (see :func:`next_round`). A subset with
    ``k == len(candidates)`` needs no LLM call (e.g. ``budget`` equal to the pool).
    """
    arr = _labels(labels)
    _check_budget(budget, len(arr))
    k = n_clusters(arr)
    size = subset_size or max(2, k)
    groups = build_subsets(arr, layout=layout, subset_size=size, seed=seed, order=order)
    subsets = _subsets(groups, arr, budget, 1, seed, 0)
    return Plan(
        n_clusters=k,
        labels=arr.tolist(),
        layout=layout,
        budget=budget,
        subsets=subsets,
        rounds_expected=rounds_needed(len(groups), budget, size),
    )


def next_round(
    winners: Sequence[int],
    labels: Sequence[int] | np.ndarray,
    budget: int,
    round: int,
    *,
    subset_size: int | None = None,
    seed: int = 0,
    first_id: int = 0,
) -> list[Subset]:
    """Subsets for tournament round ``round`` (2, 3, ...) over the previous round's winners.

    Winners are sorted by cluster (seeded order within a cluster) and dealt round-robin into
    ceil(W / subset_size) subsets, so each subset mixes clusters and sizes differ by at most one.
    Picks sum to ``budget`` if that many subsets or fewer remain, else one per subset (another
    round follows). Returns [] when the winners already number ``budget`` or fewer.
    """
    arr = _labels(labels)
    w = np.asarray(winners, dtype=np.int64)
    if len(np.unique(w)) != len(w):
        raise ValueError("winners must be distinct pool indices")
    if len(w) <= budget:
        return []
    size = max(2, subset_size or n_clusters(arr))
    n_sub = math.ceil(len(w) / size)
    rng = _rng(seed, 4, round)
    w = w[rng.permutation(len(w))]
    w = w[np.argsort(arr[w], kind="stable")]
    groups = [w[j::n_sub] for j in range(n_sub)]
    shuffle = _rng(seed, 5, round)
    groups_l = [shuffle.permutation(g).tolist() for g in groups]
    return _subsets(groups_l, arr, budget, round, seed, first_id)
