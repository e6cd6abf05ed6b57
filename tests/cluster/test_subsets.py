"""Subsets and pick allocation: exact budgets, partitions, tournaments (Hypothesis properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selectllm_local.cluster.subsets import (
    LAYOUTS,
    allocate_picks,
    build_subsets,
    make_plan,
    next_round,
    rounds_needed,
)
from selectllm_local.errors import UserError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def balanced_labels(n: int, k: int, seed: int) -> np.ndarray:
    """Labels with sizes differing by at most one, in a random order (like balance() output)."""
    k = max(1, min(k, n))
    return np.random.default_rng(seed).permutation(np.arange(n) % k)


@st.composite
def pools(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    n = draw(st.integers(1, 400))
    k = draw(st.integers(1, 40))
    if draw(st.booleans()):
        labels = balanced_labels(n, k, draw(st.integers(0, 10**6)))
    else:  # arbitrary, unbalanced cluster ids (some may be empty)
        labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return labels, draw(st.integers(0, 10**6))


def assert_partition(groups: list[list[int]], universe: list[int] | np.ndarray) -> None:
    flat = [p for g in groups for p in g]
    assert len(flat) == len(set(flat)), "an index appears in two subsets"
    assert sorted(flat) == sorted(int(u) for u in universe), "an index is missing"
    assert all(len(g) > 0 for g in groups)


@FAST
@given(pools(), st.sampled_from(LAYOUTS), st.none() | st.integers(2, 50))
def test_every_index_in_exactly_one_subset(pool, layout, size) -> None:
    labels, seed = pool
    groups = build_subsets(labels, layout=layout, subset_size=size, seed=seed)
    assert_partition(groups, np.arange(len(labels)))
    if layout != "diverse":
        cap = size or max(2, int(labels.max()) + 1)
        assert max(len(g) for g in groups) <= cap
    if layout == "cluster":
        assert all(len({int(labels[p]) for p in g}) == 1 for g in groups)


@FAST
@given(pools(), st.sampled_from(LAYOUTS))
def test_subsets_deterministic_per_seed(pool, layout) -> None:
    labels, seed = pool
    a = build_subsets(labels, layout=layout, seed=seed)
    assert a == build_subsets(labels, layout=layout, seed=seed)


def test_seed_changes_layout() -> None:
    labels = balanced_labels(300, 10, 0)
    assert build_subsets(labels, seed=1) != build_subsets(labels, seed=2)


@FAST
@given(st.integers(1, 500), st.integers(2, 40), st.integers(0, 1000))
def test_diverse_subset_has_one_member_per_cluster(n, k, seed) -> None:
    labels = balanced_labels(n, k, seed)
    k_eff = int(labels.max()) + 1
    groups = build_subsets(labels, layout="diverse", seed=seed)
    for g in groups:
        clusters = [int(labels[p]) for p in g]
        assert len(clusters) == len(set(clusters))
    sizes = [len(g) for g in groups]
    # All full (K) except the last, which holds the n mod K clusters that have an extra member.
    assert sizes[:-1] == [k_eff] * (len(groups) - 1)
    assert sizes[-1] == (n % k_eff or k_eff)


def test_diverse_follows_given_order() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    order = [4, 5, 2, 3, 0, 1]  # cluster 0 nearest-first: 4, 2, 0; cluster 1: 5, 3, 1
    groups = build_subsets(labels, layout="diverse", order=order, seed=0)
    assert [sorted(g) for g in groups] == [[4, 5], [2, 3], [0, 1]]


@FAST
@given(
    st.lists(st.integers(0, 60), min_size=1, max_size=80).filter(lambda s: sum(s) > 0),
    st.data(),
)
def test_allocate_exact_budget(sizes, data) -> None:
    budget = data.draw(st.integers(1, sum(sizes)))
    seed = data.draw(st.integers(0, 10**6))
    ks = allocate_picks(sizes, budget, seed=seed)
    assert sum(ks) == budget
    assert all(0 <= k <= s for k, s in zip(ks, sizes, strict=True))
    assert ks == allocate_picks(sizes, budget, seed=seed)
    nonempty = [i for i, s in enumerate(sizes) if s]
    if budget >= len(nonempty):
        assert all(ks[i] >= 1 for i in nonempty), "a subset was left without a pick"


@FAST
@given(st.integers(1, 200), st.integers(1, 30), st.data())
def test_allocate_even_for_equal_sizes(n_sub, size, data) -> None:
    budget = data.draw(st.integers(1, n_sub * size))
    ks = allocate_picks([size] * n_sub, budget, seed=data.draw(st.integers(0, 99)))
    assert max(ks) - min(ks) <= 1


def test_allocate_proportional_for_short_last_subset() -> None:
    ks = allocate_picks([15] * 10 + [3], 40, seed=0)
    assert sum(ks) == 40 and ks[-1] == 1 and set(ks[:-1]) <= {3, 4}


def test_allocate_rejects_impossible_budget() -> None:
    with pytest.raises(ValueError):
        allocate_picks([2, 2], 5)


def run_tournament(labels: np.ndarray, budget: int, seed: int, chooser: np.random.Generator):
    """Play every round with random choices; return (final picks, rounds played)."""
    plan = make_plan(labels, budget, seed=seed)
    subsets = plan.subsets
    rnd = 1
    all_rounds = [subsets]
    while True:
        assert_partition(
            [s.candidates for s in subsets], sorted({c for s in subsets for c in s.candidates})
        )
        winners = [
            int(p) for s in subsets for p in chooser.choice(s.candidates, size=s.k, replace=False)
        ]
        rnd += 1
        subsets = next_round(winners, labels, budget, rnd, seed=seed)
        if not subsets:
            return winners, rnd - 1, plan, all_rounds
        assert_partition([s.candidates for s in subsets], winners)
        all_rounds.append(subsets)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 600), st.integers(2, 32), st.data())
def test_tournament_reaches_exact_budget(n, k, data) -> None:
    labels = balanced_labels(n, k, data.draw(st.integers(0, 99)))
    budget = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 10**6))
    plan = make_plan(labels, budget, seed=seed)
    assert_partition([s.candidates for s in plan.subsets], np.arange(n))
    assert all(1 <= s.k <= len(s.candidates) for s in plan.subsets)
    picks, rounds, plan, _ = run_tournament(labels, budget, seed, np.random.default_rng(seed))
    assert len(picks) == budget == len(set(picks))
    assert rounds == plan.rounds_expected
    if plan.rounds_expected == 1:
        assert sum(s.k for s in plan.subsets) == budget


def test_plan_1500_budget_137_is_a_tournament() -> None:
    labels = balanced_labels(1500, 2, 0)
    plan = make_plan(labels, 137, seed=0)
    assert len(plan.subsets) == 750 and plan.rounds_expected == 4
    assert plan.cluster_sizes == [750, 750]
    picks, rounds, _, rounds_subsets = run_tournament(labels, 137, 0, np.random.default_rng(1))
    assert len(picks) == 137 and rounds == 4
    # Later rounds spread each cluster's winners as evenly as possible over the subsets.
    round2 = rounds_subsets[1]
    for cluster in (0, 1):
        won = sum(s.clusters.count(cluster) for s in round2)
        assert max(s.clusters.count(cluster) for s in round2) == -(-won // len(round2))


def test_budget_equal_to_pool_needs_no_choice() -> None:
    labels = balanced_labels(100, 7, 0)
    plan = make_plan(labels, 100, seed=0)
    assert plan.rounds_expected == 1
    assert all(s.k == len(s.candidates) for s in plan.subsets)


def test_plan_is_deterministic_and_records_clusters() -> None:
    labels = balanced_labels(1000, 14, 3)
    a, b = make_plan(labels, 300, seed=5), make_plan(labels, 300, seed=5)
    assert [s.to_dict() for s in a.subsets] == [s.to_dict() for s in b.subsets]
    for s in a.subsets:
        assert s.clusters == [int(labels[p]) for p in s.candidates] and s.round == 1
    assert sum(s.k for s in a.subsets) == 300


@pytest.mark.parametrize("budget", [0, -3, 101])
def test_bad_budget_is_a_user_error(budget: int) -> None:
    with pytest.raises(UserError, match="--budget"):
        make_plan(balanced_labels(100, 5, 0), budget, seed=0)


def test_unknown_layout_names_the_flag() -> None:
    with pytest.raises(UserError, match="--layout"):
        build_subsets([0, 1], layout="zigzag")


def test_rounds_needed() -> None:
    assert rounds_needed(1000, 1000, 14) == 1
    assert rounds_needed(1000, 999, 14) == 2  # 1000 winners -> 72 subsets -> 999 picks
    assert rounds_needed(1000, 10, 14) == 3  # 1000 -> 72 -> 6 subsets: 6 < 10, picks fit
