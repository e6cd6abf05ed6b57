"""Baselines: other ways to spend the same budget, so the LLM's picks have something to beat.

Every baseline returns exactly ``budget`` distinct pool indices, deterministic for a seed, in the
order it chose them. They answer different questions about the selection:

- ``random``: is any selection better than none?
- ``length``: is the LLM just picking long instructions? (``shortest=True`` for the opposite.)
- ``answer-perplexity``: the paper's perplexity baseline: how surprised the base model is by its
  own greedy answer to each instruction (band high/low/middle).
- ``instruction-perplexity``: the base model's perplexity of the instruction text itself; not the
  paper's. ``perplexity``, its old name, still works as a deprecated alias (with a warning).
- ``kcenter``: does pure embedding coverage (greedy k-center coreset) do as well?
- ``diversity``: does textual novelty (lowest maximum Rouge-L overlap with the pool) do as well?
- ``cluster-random``: one random pick per subset of the *same* plan ``select`` uses. The only
  difference from ``select`` is who picks inside each subset, so it isolates the LLM's contribution.
- ``ifd``: Superfiltering's likelihood signal (``ifd.py``): the rows with the highest
  IFD = PPL(response | instruction) / PPL(response) after dropping IFD >= 1, scored by the
  selection engine's model. Needs responses.
- ``cluster-ifd``: the plan's subsets and rounds, with the IFD as the judge (the highest-IFD
  candidates of each subset): diversity plus quality; its gap to ``ifd`` is what the plan adds.

Ties (equal lengths, equal scores) are broken by a seeded random key, never by file order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from selectllm_local.baselines import diversity, draws, ifd, perplexity
from selectllm_local.baselines.request import Request, Runner, Scorer
from selectllm_local.config.training import BaselineConfig
from selectllm_local.config.vocab import PERPLEXITY_BANDS
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem

log = logging.getLogger(__name__)

BaselineName = Literal[
    "random",
    "length",
    "answer-perplexity",
    "instruction-perplexity",
    "kcenter",
    "diversity",
    "cluster-random",
    "ifd",
    "cluster-ifd",
]


@dataclass(frozen=True)
class Baseline:
    """One baseline, declared once: its runner and what it needs. The experiment (methods, their
    variants, which cells run the ``[engine]`` model), ``baseline_run`` and the cost estimate read
    these facts; adding a baseline is one entry in ``REGISTRY``."""

    run: Runner
    scorer: Literal["base", "engine"] | None = None
    """The model that scores the pool rows: ``base`` (``[baseline] scorer_model``, default the
    base model: the perplexity baselines) or ``engine`` (the selection engine's model, scored
    once per experiment: the likelihood baselines); None: no model."""
    answers: bool = False
    """The scorer first writes a greedy answer per row and scores prompt + answer."""
    embeddings: bool = False
    """It reads the pool's embeddings (``plan_run`` computes them)."""
    plan: bool = False
    """It reads the plan's subsets (the plan ``select`` uses)."""
    variants: tuple[str, ...] = ()
    """What ``name:variant`` may name in an experiment's methods."""
    options: tuple[str, ...] = ()
    """The ``[baseline]`` settings (``BaselineConfig`` fields) its runner takes, each as the
    keyword ``KEYWORDS`` names (default: the field's name); a ``name:variant`` sets the first
    (see ``baseline_options``)."""


# The runner keyword of each [baseline] setting whose name differs from the keyword.
KEYWORDS: Mapping[str, str] = {
    "scorer_batch_size": "batch_size",
    "diversity_sample": "sample_size",
    "ifd_max_length": "max_length",
}
_PERPLEXITY = ("band", "scorer_batch_size")


# The one registry, shaped like ``backends.registry.LOADERS``: every other place (experiment
# methods, CLI, cost estimate, docs) takes its names and facts from here (a test checks the
# Literal and the mapping agree).
REGISTRY: Mapping[BaselineName, Baseline] = {
    "random": Baseline(draws.random_pick),
    "length": Baseline(
        draws.length_pick, variants=("shortest", "longest"), options=("shortest",)
    ),
    "answer-perplexity": Baseline(
        perplexity.perplexity_pick, scorer="base", answers=True, variants=PERPLEXITY_BANDS,
        options=_PERPLEXITY,
    ),
    "instruction-perplexity": Baseline(
        perplexity.perplexity_pick, scorer="base", variants=PERPLEXITY_BANDS, options=_PERPLEXITY
    ),
    "kcenter": Baseline(draws.kcenter_pick, embeddings=True),
    "diversity": Baseline(diversity.diversity_pick, options=("diversity_sample",)),
    "cluster-random": Baseline(draws.cluster_random_pick, plan=True),
    "ifd": Baseline(ifd.ifd_runner, scorer="engine", options=("ifd_max_length",)),
    "cluster-ifd": Baseline(
        ifd.cluster_ifd_runner, scorer="engine", plan=True, options=("ifd_max_length",)
    ),
}  # fmt: skip
BASELINES: tuple[BaselineName, ...] = get_args(BaselineName)
DEPRECATED: dict[str, BaselineName] = {"perplexity": "instruction-perplexity"}  # what it computed
PERPLEXITY_METHODS = tuple(n for n, b in REGISTRY.items() if b.scorer == "base")
LIKELIHOOD_METHODS = tuple(n for n, b in REGISTRY.items() if b.scorer == "engine")  # [engine]
NEEDS_EMBEDDINGS = tuple(n for n, b in REGISTRY.items() if b.embeddings)
NEEDS_PLAN = tuple(n for n, b in REGISTRY.items() if b.plan)


def baseline_of(name: str) -> Baseline:
    """The registry entry of a current or deprecated name (no warning: see
    ``canonical_baseline``); a ``KeyError`` for an unknown one."""
    canon = DEPRECATED[name] if name in DEPRECATED else name
    return REGISTRY[canon]  # type: ignore[index]  # a KeyError names an unknown one


def baseline_options(cfg: BaselineConfig, name: str, variant: str = "") -> dict[str, Any]:
    """The keyword options baseline ``name`` takes from the ``[baseline]`` settings ``cfg``, as
    its ``Baseline.options`` declares them. ``variant`` (from ``length:shortest``,
    ``answer-perplexity:low``...) overrides the first of a baseline that has variants: a yes/no
    setting is true for the variant of its own name (``shortest``) and false for any other, other
    settings take the variant as their value. An unknown name takes none (``run_baseline`` names
    it)."""
    try:
        entry = baseline_of(name)
    except KeyError:
        return {}
    fields = entry.options
    opts = {KEYWORDS.get(f, f): getattr(cfg, f) for f in fields}
    if variant and entry.variants:  # a test checks such a baseline declares an option
        first = fields[0]
        yes_no = isinstance(getattr(cfg, first), bool)
        opts[KEYWORDS.get(first, first)] = variant == first if yes_no else variant
    return opts


def canonical_baseline(name: str) -> BaselineName:
    """The baseline's current name; a deprecated alias warns once per call."""
    if name in DEPRECATED:
        log.warning(
            "baseline '%s' is deprecated: it is '%s' (perplexity of the instruction text, not the "
            "paper's baseline, which is 'answer-perplexity'); use that name",
            name,
            DEPRECATED[name],
        )
        return DEPRECATED[name]
    for known in BASELINES:
        if name == known:
            return known
    raise UserError(f"Unknown baseline '{name}'. Choose one of: {', '.join(BASELINES)}.")


def run_baseline(
    name: str,
    items: list[PoolItem] | Any,
    budget: int,
    *,
    seed: int,
    embeddings: np.ndarray | None = None,
    plan: Plan | None = None,
    scorer: str | Path | Scorer | None = None,
    scores: np.ndarray | None = None,
    **opts: Any,
) -> list[int]:
    """Choose exactly ``budget`` distinct pool indices with baseline ``name`` (``REGISTRY``),
    deterministic for a seed, in the order it chose them (see ``request.Request`` for what each
    runner reads)."""
    n = len(items)
    canon = canonical_baseline(name)
    if not 1 <= budget <= n:
        raise UserError(
            f"--budget must be between 1 and the pool size {n} for baseline '{canon}' (got {budget})."
        )
    req = Request(
        name=canon, items=items, budget=budget, seed=seed, rng=np.random.default_rng(seed),
        embeddings=embeddings, plan=plan, scorer=scorer, scores=scores, opts=opts,
    )  # fmt: skip
    out = [int(i) for i in REGISTRY[canon].run(req)]
    assert len(out) == budget and len(set(out)) == budget, "baseline broke the budget contract"
    return out
