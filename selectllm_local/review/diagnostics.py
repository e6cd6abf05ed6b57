"""Selection diagnostics: is the selector judging, or only echoing the positions it was shown?

A small model can look busy while picking display position 1 of almost every prompt. Before a
fine-tune is spent on such a selection the user should be told, so this module measures, from a
run directory's files alone (``responses.jsonl``, ``subsets.jsonl``, ``clusters.npy``,
``pool.jsonl``, ``selected.jsonl``, ``summary.json``):

* **position bias**: picks per display position against a position-blind picker (a pick in a
  subset of ``n`` shown candidates falls on each of its ``n`` positions with probability 1/n, so
  the expected count of position ``i`` sums ``1/n`` over the picks of subsets with ``n >= i``), a
  chi-square goodness-of-fit p-value, and a flag (``BIAS_RULE``);
* **preferences**: length, category and cluster shares of the picks against the pool;
* **overlap** of two selections of one pool against two independent random selections of the
  same sizes (expected intersection ``|A|·|B|/N``).

Only model picks count for position bias: subsets that needed no call and fallback picks are left
out. In logprob mode a pick's recorded position is its place in the subset's candidate list, the
display order of the first (unshifted) scoring job; with ``--permutations P > 1`` every candidate
was also scored at other positions, so a bias left there is a preference for the candidates the
plan listed first, not an echo of one prompt's order. Tournament rounds after the first are not in
``subsets.jsonl``; their subset sizes are recomputed from the previous round's winners exactly as
``subsets.next_round`` deals them.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BIAS_FACTOR, BIAS_ALPHA = 2.0, 0.01
BIAS_RULE = (
    f"flagged when a position takes more than {BIAS_FACTOR:g}x its expected share of the model's "
    f"picks and the chi-square test rejects a position-blind picker (p < {BIAS_ALPHA:g})"
)


@dataclass
class PositionShare:
    """One display position: the model's picks there against a position-blind picker's."""

    position: int  # 1 = shown first
    picks: int
    share: float
    expected: float
    expected_share: float


@dataclass
class PositionBias:
    """Picks per position against a position-blind picker, the chi-square test and the flag
    (``position_bias``); in ``summary.json`` as ``position_bias``."""

    picks: int
    mode: str
    permutations: int
    positions: list[PositionShare]
    chi2: float
    df: int
    p_value: float
    position_bias: bool  # the flag (``BIAS_RULE``)
    rule: str
    warning: str | None
    basis: str  # what a position is in this mode

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PositionBias:
        return cls(**{**d, "positions": [PositionShare(**r) for r in d["positions"]]})


# -- statistics -------------------------------------------------------------------------------
def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (series below a+1, continued fraction above)."""
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # P(a, x) by its series; Q = 1 - P
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300  # Q(a, x) by its continued fraction (modified Lentz)
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be at least 1")
    return _gamma_q(df / 2.0, x / 2.0)


# -- position bias ------------------------------------------------------------------------------
def position_pairs(
    subsets: Sequence[dict[str, Any]], responses: Sequence[dict[str, Any]], k: int
) -> list[tuple[int, int]]:
    """(position, subset size) of every model pick in ``responses.jsonl`` rows.

    Round-one sizes come from ``subsets.jsonl``; later rounds' from the previous round's winners
    (``subsets.next_round``: ceil(W / max(2, k)) subsets dealt round-robin), or, if a recorded
    position does not fit that, from the largest of ``k`` and the positions recorded.
    """
    rows = {(int(r.get("round", 1)), int(r["subset_id"])): r for r in responses}  # last wins
    sizes = {(int(s.get("round", 1)), int(s["id"])): len(s["candidates"]) for s in subsets}
    winners = Counter[int]()
    for (rnd, _), r in rows.items():
        winners[rnd] += len(r.get("picks") or [])
    pairs: list[tuple[int, int]] = []
    for (rnd, sid), r in sorted(rows.items()):
        positions = [int(p) for p in r.get("positions") or []]
        if r.get("attempts", 0) == 0 or r.get("fallback") or not positions:
            continue  # no call, or the documented fallback: not the model's choice
        n = sizes.get((rnd, sid))
        if n is None and winners[rnd - 1]:
            w = winners[rnd - 1]
            n_sub = math.ceil(w / max(2, k))
            n = len(range(sid, w, n_sub)) if sid < n_sub else None
        if n is None or max(positions) > n:
            n = max([k, *positions])
        pairs += [(p, n) for p in positions]
    return pairs


def position_bias(
    pairs: Sequence[tuple[int, int]], *, mode: str = "generate", permutations: int = 1
) -> PositionBias | None:
    """Picks per position vs a position-blind picker, the chi-square p-value and the flag.

    ``pairs``: (1-based position, size of the subset it was picked from) per model pick. None
    when there are no model picks. The p-value treats picks as independent draws (several picks
    of one subset are drawn without replacement, which only makes the test more conservative).
    """
    if not pairs:
        return None
    n_max = max(n for _, n in pairs)
    observed = Counter(p for p, _ in pairs)
    expected = [0.0] * (n_max + 1)
    for _, n in pairs:
        for i in range(1, n + 1):
            expected[i] += 1.0 / n
    total = len(pairs)
    rows = [
        PositionShare(
            position=i,
            picks=observed[i],
            share=round(observed[i] / total, 4),
            expected=round(expected[i], 3),
            expected_share=round(expected[i] / total, 4),
        )
        for i in range(1, n_max + 1)
    ]
    chi2 = sum((observed[i] - expected[i]) ** 2 / expected[i] for i in range(1, n_max + 1))
    p_value = chi2_sf(chi2, n_max - 1) if n_max > 1 else 1.0
    over = [r for r in rows if r.picks > BIAS_FACTOR * expected[r.position]]
    flagged = bool(over) and p_value < BIAS_ALPHA
    warning = None
    if flagged:
        top = max(over, key=lambda r: r.picks / max(expected[r.position], 1e-12))
        if mode == "logprobs" and permutations != 1:  # 0: every shift
            orders = f"{permutations} orders" if permutations else "every cyclic order"
            hint = (
                f"the ranking still favours the candidates listed at that place after averaging "
                f"{orders}; check the model before fine-tuning on this selection"
            )
        elif mode == "logprobs":
            hint = f"try --permutations {n_max}"
        else:
            hint = f"try --mode logprobs --permutations {n_max}"
        warning = (
            f"position bias: position {top.position} took {top.share:.0%} of picks vs "
            f"{top.expected_share:.0%} expected — the selector may be echoing positions; {hint}"
        )
    return PositionBias(
        picks=total,
        mode=mode,
        permutations=permutations,
        positions=rows,
        chi2=round(chi2, 3),
        df=n_max - 1,
        p_value=p_value,
        position_bias=flagged,
        rule=BIAS_RULE,
        warning=warning,
        basis=(
            "position in the subset's candidate list (the first scoring job's display order)"
            if mode == "logprobs"
            else "display position in the prompt (1 = shown first)"
        ),
    )


def position_lines(d: PositionBias | None, *, limit: int = 12) -> list[str]:
    """Plain-text lines for a ``position_bias`` result (the summary and ``compare`` print them)."""
    if d is None:
        return ["Position bias: no model picks (no LLM call, or fallback picks only)."]
    rows = d.positions
    shares = ", ".join(
        f"{r.position}: {r.share:.0%} (exp {r.expected_share:.0%})" for r in rows[:limit]
    ) + (", …" if len(rows) > limit else "")
    lines = [
        f"Position of the {d.picks} model picks: {shares}; chi-square p = {d.p_value:.3g}.",
    ]
    if d.warning:
        lines.append(f"Warning: {d.warning}. Rule: {d.rule}.")
    return lines


# -- preferences -------------------------------------------------------------------------------
def _words(row: dict[str, Any]) -> int:
    return len(f"{row.get('instruction') or ''} {row.get('input') or ''}".split())


def _shares(values: Iterable[Any]) -> dict[Any, float]:
    counts = Counter(values)
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in counts.items()}


@dataclass
class LengthWords:
    """Words of instruction + input: the pool's and the picks' mean and median (None: empty)."""

    pool_mean: float | None
    pool_median: float | None
    selected_mean: float | None
    selected_median: float | None


@dataclass
class ShareTable:
    """How the picks spread over the values of one field (category, cluster) against the pool."""

    total_variation: float
    covered: int  # values the picks hold
    of: int  # values the pool holds
    shares: list[
        dict[str, Any]
    ]  # per value, the pool's order: the value, pool_share, selected_share


@dataclass
class Preferences:
    """What the picks prefer against the pool (``preferences``)."""

    length_words: LengthWords
    categories: ShareTable | None = None  # when the pool has categories
    clusters: ShareTable | None = None  # when the clusters are known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Overlap:
    """Two selections of one pool: shared picks against two random selections (``overlap``)."""

    a: int
    b: int
    pool: int
    intersection: int
    union: int
    jaccard: float
    expected_intersection: float
    ratio_to_random: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _share_table(pool: list[Any], picked: list[Any], name: str) -> ShareTable:
    ps, ss = _shares(pool), _shares(picked)
    keys = sorted(ps, key=lambda c: (-ps[c], str(c)))
    rows: list[dict[str, Any]] = [
        {name: c, "pool_share": round(ps[c], 4), "selected_share": round(ss.get(c, 0.0), 4)}
        for c in keys
    ]
    tv = 0.5 * sum(abs(ps.get(c, 0.0) - ss.get(c, 0.0)) for c in set(ps) | set(ss))
    return ShareTable(total_variation=round(tv, 4), covered=len(ss), of=len(ps), shares=rows)


def preferences(
    pool: Sequence[dict[str, Any]], selected: Sequence[int], labels: np.ndarray | None = None
) -> Preferences:
    """What the picks prefer against the pool: length (words of instruction + input), category
    shares (when the pool has categories) and cluster shares (when ``labels`` are given).

    ``total_variation`` is half the summed absolute share differences: 0 when the selection
    spreads like the pool, 1 when they share nothing.
    """
    chosen = [pool[i] for i in selected if 0 <= i < len(pool)]
    pool_words = [_words(r) for r in pool]
    sel_words = [_words(r) for r in chosen]
    out = Preferences(
        LengthWords(
            pool_mean=round(statistics.fmean(pool_words), 2) if pool_words else None,
            pool_median=statistics.median(pool_words) if pool_words else None,
            selected_mean=round(statistics.fmean(sel_words), 2) if sel_words else None,
            selected_median=statistics.median(sel_words) if sel_words else None,
        )
    )
    cats = [r.get("category") for r in pool]
    if any(cats):
        out.categories = _share_table(
            [str(c) for c in cats], [str(r.get("category")) for r in chosen], "category"
        )
    if labels is not None and len(labels) == len(pool):
        lab = np.asarray(labels, dtype=np.int64)
        out.clusters = _share_table(
            lab.tolist(), [int(lab[i]) for i in selected if 0 <= i < len(lab)], "cluster"
        )
    return out


# -- overlap ------------------------------------------------------------------------------------
def overlap(a: Iterable[int], b: Iterable[int], pool_size: int) -> Overlap:
    """|A∩B|, Jaccard, and the intersection two independent uniform random selections of the same
    sizes from a pool of ``pool_size`` would share on average (``|A|·|B|/N``), with the ratio."""
    sa, sb = set(a), set(b)
    inter, union = len(sa & sb), len(sa | sb)
    expected = len(sa) * len(sb) / pool_size if pool_size else 0.0
    return Overlap(
        a=len(sa),
        b=len(sb),
        pool=pool_size,
        intersection=inter,
        union=union,
        jaccard=round(inter / union, 4) if union else 0.0,
        expected_intersection=round(expected, 3),
        ratio_to_random=round(inter / expected, 3) if expected else None,
    )
