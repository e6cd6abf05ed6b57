"""What every baseline runner is given, and the one way they order rows (``top``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.records import Plan, PoolItem

Scorer = Callable[[list[str]], np.ndarray]


@dataclass
class Request:
    """One baseline call: the pool, the budget, a seeded generator and what some runners need.

    ``embeddings`` (N x d): ``kcenter``; ``plan``: ``cluster-random`` and ``cluster-ifd``;
    ``scorer``: the perplexity baselines (a local causal LM path, or a function texts ->
    perplexities); ``scores`` (IFD per row, NaN where unscored): ``ifd`` and ``cluster-ifd``;
    ``opts``: a runner's own options (``shortest``, ``band``, ``sample_size``, ...).
    """

    name: str
    items: Sequence[PoolItem]
    budget: int
    seed: int
    rng: np.random.Generator
    embeddings: np.ndarray | None = None
    plan: Plan | None = None
    scorer: str | Path | Scorer | None = None
    scores: np.ndarray | None = None
    opts: dict[str, Any] = field(default_factory=dict)


Runner = Callable[[Request], np.ndarray]


def top(values: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``budget`` smallest values; ties broken by a seeded random key."""
    tiebreak = rng.random(len(values))
    order = np.lexsort((tiebreak, values))  # last key is primary
    return order[:budget]
