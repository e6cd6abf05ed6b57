"""The paired statistics on constructed data (pure logic: numpy only, every draw seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from selectllm_local.experiment import stats
from selectllm_local.experiment.stats import (
    ALPHA,
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    bootstrap_means,
    compare,
    holm,
    paired_matrices,
)


def _scores(shift: float, *, seeds: int = 3, rows: int = 200, noise: float = 0.05, seed: int = 1):
    """B's scores around 0.3 and A = B + shift + row noise, as [seed, row] matrices."""
    rng = np.random.default_rng(seed)
    b = 0.3 + 0.1 * rng.standard_normal((seeds, rows))
    return b + shift + noise * rng.standard_normal((seeds, rows)), b


def test_clear_win_is_better() -> None:
    a, b = _scores(+0.05)
    p = compare(a, b, higher_is_better=True)
    assert p.verdict == BETTER and 0 < p.low < p.difference < p.high
    assert p.difference == pytest.approx(0.05, abs=0.01)
    assert p.p_value < 0.001 and p.seeds == 3 and p.rows == 200


def test_clear_loss_is_worse() -> None:
    a, b = _scores(-0.05, seed=2)
    p = compare(a, b, higher_is_better=True)
    assert p.verdict == WORSE and p.low < p.difference < p.high < 0 and p.p_value < 0.001


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_tie_has_no_detectable_difference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    b = 0.3 + 0.1 * rng.standard_normal((3, 150))
    noise = 0.05 * rng.standard_normal((3, 150))
    a = b + noise - noise.mean()  # paired differences of mean exactly zero
    p = compare(a, b, higher_is_better=True)
    assert p.verdict == NO_DIFFERENCE and p.low < 0 < p.high and p.p_value > 0.5
    assert p.difference == pytest.approx(0.0, abs=1e-12)


def test_lower_is_better_turns_the_verdict_round() -> None:
    a, b = _scores(-0.2, seed=6)  # A's NLL is lower
    assert compare(a, b, higher_is_better=False).verdict == BETTER
    assert compare(b, a, higher_is_better=False).verdict == WORSE
    assert compare(a, b, higher_is_better=True).verdict == WORSE


def test_identical_scores_give_a_zero_interval_and_no_verdict() -> None:
    a, _ = _scores(0.0)
    p = compare(a, a.copy(), higher_is_better=True)
    assert (p.low, p.high, p.difference) == (0.0, 0.0, 0.0) and p.verdict == NO_DIFFERENCE
    assert p.p_value == 1.0


def test_seeds_that_disagree_widen_the_interval() -> None:
    """Every row agrees within a seed, but the seeds disagree: +0.08, -0.02 and +0.03. An interval
    over rows alone (seeds averaged first) is narrow and excludes zero; ours must not."""
    rng = np.random.default_rng(7)
    per_seed = np.array([0.08, -0.02, 0.03])[:, None]
    b = 0.3 + 0.1 * rng.standard_normal((3, 300))
    a = b + per_seed + 0.002 * rng.standard_normal((3, 300))
    ours = compare(a, b, higher_is_better=True)
    rows_only = compare(a.mean(0, keepdims=True), b.mean(0, keepdims=True), higher_is_better=True)
    assert rows_only.verdict == BETTER and rows_only.high - rows_only.low < 0.002
    assert ours.verdict == NO_DIFFERENCE and ours.low < 0 < ours.high
    assert ours.high - ours.low > 20 * (rows_only.high - rows_only.low)
    assert ours.difference == pytest.approx(rows_only.difference)


def test_one_seed_matches_the_textbook_standard_error() -> None:
    rng = np.random.default_rng(8)
    d = rng.standard_normal((1, 400))
    boot = bootstrap_means(d, draws=4000, seed=0)
    textbook = d.std(ddof=1) / np.sqrt(400)
    assert boot.std(ddof=1) == pytest.approx(textbook, rel=0.08)
    assert boot.mean() == pytest.approx(d.mean(), abs=0.2 * textbook)


def test_bootstrap_is_seeded_and_mde_follows_the_standard_error() -> None:
    a, b = _scores(0.01, seed=9)
    one, two = compare(a, b, higher_is_better=True), compare(a, b, higher_is_better=True)
    assert one == two
    other = compare(a, b, higher_is_better=True, seed=1)
    assert other.low != one.low
    assert one.mde == pytest.approx((1.959964 + 0.841621) * one.se, rel=1e-6)
    assert one.mde_relative == pytest.approx(100 * one.mde / one.b_mean)


def test_holm_on_constructed_p_values() -> None:
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> max(0.06, 0.04)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p <= 0.05 for p in adjusted] == [True, False, False, True]
    # Holm is a step-down: once one fails, every larger p fails, even one below alpha / 1.
    assert holm([0.001, 0.04, 0.045]) == pytest.approx([0.003, 0.08, 0.08])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_holm_agrees_with_bonferroni_bounds() -> None:
    rng = np.random.default_rng(10)
    p = rng.uniform(0, 0.2, size=30)
    adj = np.array(holm(list(p)))
    assert np.all(adj >= p) and np.all(adj <= np.minimum(1, 30 * p) + 1e-12)
    assert adj[np.argmin(p)] == pytest.approx(min(1, 30 * p.min()))


def test_survives_holm_needs_a_verdict() -> None:
    a, b = _scores(0.05)
    win = compare(a, b, higher_is_better=True)
    assert stats.survives_holm(win, 0.01) and not stats.survives_holm(win, 0.2)
    tie = compare(b, b.copy(), higher_is_better=True)
    assert not stats.survives_holm(tie, 0.0)


def test_paired_matrices_keep_the_seeds_and_rows_both_have() -> None:
    a = {0: {0: 1.0, 1: 2.0, 2: 3.0}, 1: {0: 1.5, 2: 3.5}, 2: {0: 9.0}}
    b = {0: {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}, 1: {0: 0.5, 1: 0.5, 2: 0.5}}
    ma, mb, seeds, rows = paired_matrices(a, b)
    assert seeds == [0, 1] and rows == [0, 2]
    assert ma.tolist() == [[1.0, 3.0], [1.5, 3.5]] and mb.tolist() == [[0.0, 0.0], [0.5, 0.5]]
    empty = paired_matrices({0: {0: 1.0}}, {1: {0: 1.0}})
    assert empty[0].shape == (0, 0) and not empty[2]
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_means(empty[0])


@pytest.mark.parametrize("shift", [0.0, 0.01, 0.02, 0.03, 0.05])
def test_the_verdict_and_the_p_value_never_disagree(shift: float) -> None:
    """Near the boundary too: the interval excludes zero exactly when p <= alpha (same draws)."""
    rng = np.random.default_rng(int(shift * 1000))
    for trial in range(40):
        a = rng.normal(shift, 0.2, size=(3, 60))
        b = rng.normal(0.0, 0.2, size=(3, 60))
        p = compare(a, b, higher_is_better=True, draws=500, seed=trial)
        assert (p.verdict != NO_DIFFERENCE) == (p.p_value <= ALPHA), (trial, p)
