"""Paired comparisons of two methods on the same test rows, with an interval that knows about seeds.

Why a bootstrap over seeds *and* rows: a method's score varies for two reasons, the test rows it
happens to be scored on and the seed (the random draw of a selection, the fine-tune's order and
initialisation). The two are crossed: every seed is scored on the same rows. An interval drawn
over rows alone, with the seeds averaged first, reads seed-to-seed luck as a real difference.
So each bootstrap draw resamples the seeds with replacement and, independently, the rows with
replacement (the same row draw for every seed, because the rows are the same test examples),
and averages the per-seed paired row differences with those weights: a two-way (pigeonhole)
bootstrap. With one seed it is the plain paired bootstrap over rows; with two or three seeds the
seed part is crude but still widens the interval when the seeds disagree.

What each comparison gives (:class:`Paired`): the mean paired difference (A - B), its 95%
percentile interval, the bootstrap standard error, a two-sided bootstrap p-value (read off the
same draws, so ``p <= 0.05`` exactly when the interval excludes zero), the minimum
detectable effect and a verdict. The verdict is "better" or "worse" only when the interval excludes
zero, in the metric's own direction (lower is better for a negative log-likelihood); otherwise it
is "no detectable difference". :func:`holm` corrects a family of such p-values.

Pure logic: numpy only, every draw seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHA = 0.05
Z_975 = 1.959963984540054  # two-sided 5%
Z_80 = 0.8416212335729143  # 80% power
MDE_FACTOR = Z_975 + Z_80  # 2.80: minimum detectable effect = MDE_FACTOR x standard error
DRAWS = 4000
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool


METRICS = (
    Metric("rougeL_f1", "Rouge-L F1", True),
    Metric("cosine", "Cosine similarity", True),
    Metric("reference_nll", "Reference NLL (nats/token)", False),
)


@dataclass(frozen=True)
class Paired:
    """One paired comparison, A - B, over ``seeds`` seeds and ``rows`` test rows."""

    difference: float
    low: float
    high: float
    se: float
    p_value: float
    mde: float
    verdict: str
    seeds: int
    rows: int
    a_mean: float
    b_mean: float

    @property
    def relative(self) -> float | None:
        """The difference as a percentage of B's mean (None when B's mean is 0)."""
        return 100.0 * self.difference / abs(self.b_mean) if self.b_mean else None

    @property
    def mde_relative(self) -> float | None:
        return 100.0 * self.mde / abs(self.b_mean) if self.b_mean else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_pct": self.relative, "mde_pct": self.mde_relative}


def paired_matrices(
    a: Mapping[int, Mapping[int, float]], b: Mapping[int, Mapping[int, float]]
) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Scores of A and B as [seed, row] matrices over the seeds both have and the rows that every
    one of those seeds scored for both (``a[seed][row] -> value``)."""
    seeds = sorted(set(a) & set(b))
    rows: set[int] | None = None
    for s in seeds:
        common = set(a[s]) & set(b[s])
        rows = common if rows is None else rows & common
    order = sorted(rows or ())
    shape = (len(seeds), len(order))
    ma = np.array([[a[s][r] for r in order] for s in seeds], dtype=float).reshape(shape)
    mb = np.array([[b[s][r] for r in order] for s in seeds], dtype=float).reshape(shape)
    return ma, mb, seeds, order


def bootstrap_means(diffs: np.ndarray, *, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """``draws`` bootstrap means of a [seed, row] matrix of paired differences, resampling seeds
    and rows independently (module docstring)."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"need a non-empty [seed, row] matrix, got shape {d.shape}")
    n_seeds, n_rows = d.shape
    rng = np.random.default_rng(seed)
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=draws) / n_seeds
    row_w = rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=draws) / n_rows
    return np.einsum("bs,sn,bn->b", seed_w, d, row_w)


def p_value(boot: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is zero": twice the smaller share of draws
    on either side of zero (a draw at exactly zero counts on both sides), at least 2 / draws.

    It is the exact counterpart of :func:`interval`: ``p <= alpha`` holds exactly when the
    ``1 - alpha`` interval excludes zero (for draws >= 2 / alpha), so a verdict and its p-value
    never disagree. When no draw crossed zero the p-value is the bound 2 / draws (a table shows
    "≤"), which Holm then multiplies like any other.
    """
    n = len(boot)
    below = int(np.sum(boot <= 0))
    above = int(np.sum(boot >= 0))
    return min(1.0, 2.0 * max(min(below, above), 1) / n)


def format_p(p: float, draws: int = DRAWS) -> str:
    """A bootstrap p-value for a table; the floor 2 / draws (no draw crossed zero) reads "≤"."""
    return f"≤ {p:.2g}" if p <= 2 / draws else f"{p:.3g}"


def interval(boot: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """The ``1 - alpha`` percentile interval, read off the sorted draws without interpolation:
    the ``j``-th smallest and ``j``-th largest draw, ``j = floor(alpha / 2 x draws)`` (0-based).

    So the low end is above zero exactly when at most ``j`` draws are at or below zero, which is
    ``p_value <= alpha``; interpolated quantiles would blur that boundary.
    """
    ordered = np.sort(np.asarray(boot, dtype=float))
    j = int(np.floor(alpha / 2 * len(ordered)))
    return float(ordered[j]), float(ordered[len(ordered) - 1 - j])


def verdict(low: float, high: float, *, higher_is_better: bool) -> str:
    """Better or worse only when the interval excludes zero, in the metric's direction."""
    if low > 0:
        return BETTER if higher_is_better else WORSE
    if high < 0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE


def compare(
    a: np.ndarray,
    b: np.ndarray,
    *,
    higher_is_better: bool,
    draws: int = DRAWS,
    seed: int = 0,
    alpha: float = ALPHA,
) -> Paired:
    """A against B, both [seed, row] matrices of the same rows and seeds (``paired_matrices``)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"A and B differ in shape: {a.shape} and {b.shape}")
    d = a - b
    boot = bootstrap_means(d, draws=draws, seed=seed)
    low, high = interval(boot, alpha)
    se = float(np.std(boot, ddof=1))
    return Paired(
        difference=float(d.mean()),
        low=low,
        high=high,
        se=se,
        p_value=p_value(boot),
        mde=MDE_FACTOR * se,
        verdict=verdict(low, high, higher_is_better=higher_is_better),
        seeds=d.shape[0],
        rows=d.shape[1],
        a_mean=float(a.mean()),
        b_mean=float(b.mean()),
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input's order.

    Sorted ascending, the i-th smallest (0-based) of m is multiplied by m - i, and the adjusted
    values are made non-decreasing (a running maximum), capped at 1. A hypothesis is rejected at
    family-wise level alpha exactly when its adjusted p-value is <= alpha.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def survives_holm(p: Paired, adjusted: float, alpha: float = ALPHA) -> bool:
    """A better/worse verdict that still holds after the family-wise correction."""
    return p.verdict != NO_DIFFERENCE and adjusted <= alpha
