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
- ``ifd``: Superfiltering's likelihood signal (``likelihood.py``): the rows with the highest
  IFD = PPL(response | instruction) / PPL(response) after dropping IFD >= 1, scored by the
  selection engine's model. Needs responses.
- ``cluster-ifd``: the plan's subsets and rounds, with the IFD as the judge (the highest-IFD
  candidates of each subset): diversity plus quality; its gap to ``ifd`` is what the plan adds.

Ties (equal lengths, equal scores) are broken by a seeded random key, never by file order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.baselines.perplexity import ANSWER_TOKENS, answer_perplexities, perplexities
from selectllm_local.config.vocab import PERPLEXITY_BANDS
from selectllm_local.errors import UserError
from selectllm_local.records import BaselineSummary, Plan, PoolItem
from selectllm_local.run.rundir import item_record

log = logging.getLogger(__name__)

BASELINES = (
    "random",
    "length",
    "answer-perplexity",
    "instruction-perplexity",
    "kcenter",
    "diversity",
    "cluster-random",
    "ifd",
    "cluster-ifd",
)
PERPLEXITY_METHODS = ("answer-perplexity", "instruction-perplexity")
DEPRECATED = {"perplexity": "instruction-perplexity"}  # old name -> what it always computed
NEEDS_EMBEDDINGS = ("kcenter",)
NEEDS_PLAN = ("cluster-random", "cluster-ifd")
LIKELIHOOD_METHODS = ("ifd", "cluster-ifd")  # scored on the selection engine ([engine] model)
DIVERSITY_SAMPLE = 500  # pool items each candidate is compared with (docs/EXPERIMENTS.md)
LCS_MAX_TOKENS = (
    64  # Rouge-L tokens kept per text: one 64-bit word per text in the bit-parallel LCS
)

Scorer = Callable[[list[str]], np.ndarray]


def run_baseline(
    name: str,
    items: Sequence[PoolItem],
    budget: int,
    *,
    seed: int,
    embeddings: np.ndarray | None = None,
    plan: Plan | None = None,
    scorer: str | Path | Scorer | None = None,
    scores: np.ndarray | None = None,
    **opts: Any,
) -> list[int]:
    """Choose exactly ``budget`` pool indices with baseline ``name`` (see module docstring).

    ``embeddings`` (N x d) are needed by ``kcenter``; ``plan`` by ``cluster-random`` and
    ``cluster-ifd``; ``scorer`` by ``perplexity`` (a local causal LM path, or a function texts ->
    perplexities); ``scores`` (IFD per row, NaN where unscored) by ``ifd`` and ``cluster-ifd``
    (``baseline_run`` computes them on the engine). Options:
    ``shortest`` (length), ``band`` (perplexity: high | low | middle), ``batch_size`` and
    ``max_length`` (perplexity), ``sample_size`` (diversity).
    """
    n = len(items)
    name = canonical_baseline(name)
    if not 1 <= budget <= n:
        raise UserError(
            f"--budget must be between 1 and the pool size {n} for baseline '{name}' (got {budget})."
        )
    rng = np.random.default_rng(seed)
    if name == "random":
        picks = rng.permutation(n)[:budget]
    elif name == "length":
        lengths = np.array([len(it.instruction) + len(it.input) for it in items], dtype=np.float64)
        picks = _top(lengths if opts.get("shortest") else -lengths, budget, rng)
    elif name in PERPLEXITY_METHODS:
        picks = _perplexity_pick(
            items, budget, rng, scorer, answers=name == "answer-perplexity", **opts
        )
    elif name == "kcenter":
        if embeddings is None:
            raise UserError(
                "Baseline 'kcenter' needs the pool embeddings (run it through the pipeline)."
            )
        picks = kcenter_greedy(embeddings, budget, seed=seed)
    elif name == "diversity":
        texts = [f"{it.instruction} {it.input}".strip() for it in items]
        max_overlap = max_rouge_l_to_sample(
            texts, sample_size=int(opts.get("sample_size", DIVERSITY_SAMPLE)), seed=seed
        )
        picks = _top(max_overlap, budget, rng)
    elif name in LIKELIHOOD_METHODS:
        picks = _likelihood_pick(name, budget, rng, scores, plan, seed=seed)
    else:  # cluster-random
        if plan is None:
            raise UserError(
                "Baseline 'cluster-random' needs the selection plan (run it through the pipeline)."
            )
        picks = cluster_random(plan, budget, rng)
    out = [int(i) for i in picks]
    assert len(out) == budget and len(set(out)) == budget, "baseline broke the budget contract"
    return out


def _top(values: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``budget`` smallest values; ties broken by a seeded random key."""
    tiebreak = rng.random(len(values))
    order = np.lexsort((tiebreak, values))  # last key is primary
    return order[:budget]


# -- perplexity ------------------------------------------------------------------------------


def _perplexity_pick(
    items: Sequence[PoolItem],
    budget: int,
    rng: np.random.Generator,
    scorer: str | Path | Scorer | None,
    *,
    answers: bool = False,
    band: str = "high",
    batch_size: int = 16,
    max_length: int = 256,
    answer_tokens: int = ANSWER_TOKENS,
    progress: bool = True,
    **_: Any,
) -> np.ndarray:
    if band not in PERPLEXITY_BANDS:
        raise UserError(f"--band must be one of {', '.join(PERPLEXITY_BANDS)} (got '{band}').")
    if scorer is None:
        raise UserError(
            "The perplexity baselines need a scoring model: give --scorer-model PATH (a local "
            "causal LM, normally the base model to be fine-tuned)."
        )
    texts = [f"{it.instruction}\n{it.input}".strip() for it in items]
    if callable(scorer):
        ppl = np.asarray(scorer(texts), dtype=np.float64)
    elif answers:
        ppl = answer_perplexities(
            items,
            str(scorer),
            batch_size=batch_size,
            answer_tokens=answer_tokens,
            max_prompt_tokens=max_length,
            progress=progress,
        )
    else:
        ppl = perplexities(
            texts, str(scorer), batch_size=batch_size, max_length=max_length, progress=progress
        )
    if band == "high":
        key = -ppl
    elif band == "low":
        key = ppl
    else:  # closest to the median
        key = np.abs(ppl - np.median(ppl))
    return _top(key, budget, rng)


def canonical_baseline(name: str) -> str:
    """The baseline's current name; a deprecated alias warns once per call."""
    if name in DEPRECATED:
        log.warning(
            "baseline '%s' is deprecated: it is '%s' (perplexity of the instruction text, not the "
            "paper's baseline, which is 'answer-perplexity'); use that name",
            name,
            DEPRECATED[name],
        )
        return DEPRECATED[name]
    if name not in BASELINES:
        raise UserError(f"Unknown baseline '{name}'. Choose one of: {', '.join(BASELINES)}.")
    return name


def _likelihood_pick(
    name: str,
    budget: int,
    rng: np.random.Generator,
    scores: np.ndarray | None,
    plan: Plan | None,
    *,
    seed: int,
) -> np.ndarray:
    from selectllm_local.baselines import ifd as likelihood

    if scores is None:
        raise UserError(
            f"Baseline '{name}' needs the IFD scores of the pool (run it through `selectllm "
            "baseline` or the experiment, which score the pool on the selection engine)."
        )
    if name == "ifd":
        return likelihood.ifd_pick(scores, budget, rng)
    if plan is None:
        raise UserError(
            f"Baseline '{name}' needs the selection plan (run it through the pipeline)."
        )
    picks = likelihood.cluster_pick(plan, scores, rng, seed=seed)
    if len(picks) < budget:  # a plan whose picks do not cover the budget: the best of the rest
        chosen = set(picks)
        order = np.lexsort((rng.random(len(scores)), -likelihood.preference(scores)))
        rest = [int(i) for i in order if int(i) not in chosen]
        picks.extend(rest[: budget - len(picks)])
    return np.array(picks[:budget])


# -- k-center --------------------------------------------------------------------------------


def kcenter_greedy(embeddings: np.ndarray, budget: int, *, seed: int) -> np.ndarray:
    """Greedy k-center coreset: start at a seeded random point, then repeatedly add the point
    farthest from every chosen center.

    Keeps each point's squared distance to its nearest center and updates it with one
    matrix-vector product per new center (``|x|^2 + |c|^2 - 2 x.c`` with the norms computed once):
    O(N x budget x d) work, vectorised, O(N) memory. FAISS's ``pairwise_distances`` gives the same
    numbers but recomputes the pool's norms on every call, which measured 4x slower here
    (15k x 384: 41 ms vs 11 ms per center on 2 cores).
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    rng = np.random.default_rng(seed)
    picks = np.empty(budget, dtype=np.int64)
    nxt = int(rng.integers(n))
    min_d = np.full(n, np.inf, dtype=np.float32)
    for j in range(budget):
        picks[j] = nxt
        d = sq + sq[nxt] - 2.0 * (x @ x[nxt])
        np.minimum(min_d, d, out=min_d)
        min_d[nxt] = -1.0  # a chosen point stays at -1 (min keeps it), so it is never chosen again
        nxt = int(np.argmax(min_d))
    return picks


# -- Rouge-L diversity -----------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation: lowercase, non-alphanumerics become spaces."""
    return _TOKEN_RE.sub(" ", text.lower()).split()


def max_rouge_l_to_sample(texts: list[str], *, sample_size: int, seed: int) -> np.ndarray:
    """For each text, its highest Rouge-L F1 with a seeded sample of the other texts.

    A bit-parallel LCS (Allison-Dix / Hyyro) runs one text against the whole sample at once: each
    sample text is one uint64 word of position bits, so a token of the query costs five numpy ops
    over the sample. Texts are cut to their first ``LCS_MAX_TOKENS`` tokens.
    """
    n = len(texts)
    toks = [rouge_tokens(t)[:LCS_MAX_TOKENS] for t in texts]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(n)[: min(sample_size, n)])
    s = len(sample)
    lens = np.array([len(toks[i]) for i in sample], dtype=np.float64)
    masks: dict[str, np.ndarray] = {}
    for col, i in enumerate(sample):
        for pos, tok in enumerate(toks[i]):
            arr = masks.get(tok)
            if arr is None:
                arr = masks[tok] = np.zeros(s, dtype=np.uint64)
            arr[col] |= np.uint64(1) << np.uint64(pos)
    full = np.array([(1 << int(m)) - 1 for m in lens], dtype=np.uint64)  # m bits set; m <= 64 fits
    col_of = {int(i): c for c, i in enumerate(sample)}
    best = np.zeros(n, dtype=np.float64)
    for i in range(n):
        q = toks[i]
        if not q:
            continue
        v = full.copy()
        for tok in q:
            m = masks.get(tok)
            if m is None:
                continue
            u = v & m
            v = (v + u) | (v - u)
        lcs = lens - np.bitwise_count(v & full)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(lcs > 0, 2 * lcs / (lens + len(q)), 0.0)
        c = col_of.get(i)
        if c is not None:
            f1[c] = 0.0  # a text does not overlap "with the pool" through itself
        best[i] = f1.max() if s else 0.0
    return best


# -- cluster-random --------------------------------------------------------------------------


def cluster_random(plan: Plan, budget: int, rng: np.random.Generator) -> np.ndarray:
    """k random candidates per round-one subset of ``plan`` (the k ``select`` would ask for).

    When the budget is smaller than the number of subsets, ``select`` runs a tournament; the random
    counterpart of any tournament is a uniform draw of ``budget`` round-one winners.
    """
    winners: list[int] = []
    for sub in plan.subsets:
        if sub.round != 1:
            continue
        k = min(sub.k, len(sub.candidates))
        winners.extend(int(c) for c in rng.permutation(sub.candidates)[:k])
    winners = list(dict.fromkeys(winners))
    if len(winners) > budget:
        return rng.permutation(np.array(winners))[:budget]
    if len(winners) < budget:  # a plan whose picks do not cover the budget: top up at random
        chosen = set(winners)
        rest = [i for i in rng.permutation(len(plan.labels)) if int(i) not in chosen]
        winners.extend(int(i) for i in rest[: budget - len(winners)])
    return np.array(winners)


# -- run-directory entry point (the CLI and the experiment call this) --------------------------


@dataclass
class BaselineOutcome:
    """Where a baseline's selection was written, and what it chose."""

    name: str
    out_dir: Path
    indices: list[int]
    summary: BaselineSummary


def baseline_run(
    name: str,
    cfg: Any,
    *,
    scorer: str | Path | Scorer | None = None,
    engine: Any = None,
    backend: Any = None,
    score_cache: Path | None = None,
    progress: bool = True,
    **opts: Any,
) -> BaselineOutcome:
    """Run baseline ``name`` on the pool of ``cfg`` (a ``PlanConfig``) and write its selection.

    Pool, embeddings and plan come from ``cfg.run_dir`` (computed there once and cached, exactly as
    ``select`` computes them, so ``cluster-random`` sees the subsets ``select`` sees).
    ``ifd`` and ``cluster-ifd`` score the pool on the selection engine: ``engine`` (an
    ``EngineConfig`` naming the model; started only if some row is not scored yet) or an engine
    already loaded (``backend``); the scores go to ``score_cache`` (default
    ``<run_dir>/ifd_scores.jsonl``), which an experiment shares between its cells. Output:
    ``<run_dir>/baselines/<name>-b<budget>-s<seed>/selected.jsonl`` (rows like ``select``'s: the
    original record plus a ``selectllm`` block) and ``summary.json``, both written atomically.
    """
    import time

    from selectllm_local.run import pipeline
    from selectllm_local.run.store import RunStore, write_json, write_jsonl

    name = canonical_baseline(name)
    t0 = time.perf_counter()
    embeddings = plan = None
    if name in LIKELIHOOD_METHODS:  # before any planning: a pool without responses stops here
        from selectllm_local.baselines.ifd import require_responses

        pooled, _stats, _cached = pipeline.load_pool_stage(cfg, RunStore(cfg.resolved_run_dir))
        require_responses(pooled, name)
    if name in NEEDS_EMBEDDINGS or name in NEEDS_PLAN:
        planned = pipeline.plan_run(cfg, progress=progress)
        items, embeddings, plan = planned.items, planned.embeddings, planned.plan
    else:
        items, _stats, _cached = pipeline.load_pool_stage(cfg, RunStore(cfg.resolved_run_dir))
        if cfg.budget > len(items):
            raise UserError(
                f"--budget {cfg.budget} is larger than the pool: {cfg.pool} has {len(items)} "
                f"usable instructions. Choose a budget of at most {len(items)}."
            )
    scores = likely = None
    if name in LIKELIHOOD_METHODS:
        likely = _ifd_scores(
            name, items, cfg, engine, backend, score_cache, progress, opts.get("max_length")
        )
        scores = likely.ifd
    picks = run_baseline(
        name,
        items,
        cfg.budget,
        seed=cfg.seed,
        embeddings=embeddings,
        plan=plan,
        scorer=scorer,
        scores=scores,
        progress=progress,
        **opts,
    )
    variant = (
        "-shortest" if opts.get("shortest") else (f"-{opts['band']}" if "band" in opts else "")
    )  # (band: only the perplexity baselines are given one)
    out = cfg.resolved_run_dir / "baselines" / f"{name}{variant}-b{cfg.budget}-s{cfg.seed}"
    rows = []
    for rank, idx in enumerate(picks, 1):
        cluster = int(plan.labels[idx]) if plan is not None else None
        extra = {} if scores is None else {"ifd": _finite(scores[idx])}
        rows.append(
            item_record(items[idx], idx, method=name + variant, rank=rank, cluster=cluster, **extra)
        )
    write_jsonl(out / "selected.jsonl", rows)
    summary = BaselineSummary(
        method=name + variant,
        pool=len(items),
        budget=cfg.budget,
        selected=len(picks),
        seed=cfg.seed,
        options={k: str(v) for k, v in opts.items()},
        scorer=str(scorer) if scorer is not None and not callable(scorer) else None,
        seconds=round(time.perf_counter() - t0, 3),
        files={"selected": str(out / "selected.jsonl")},
    )
    if likely is not None:
        summary.ifd = likely.summary()
        summary.scorer = likely.model
    write_json(out / "summary.json", summary.to_dict())
    return BaselineOutcome(name=name + variant, out_dir=out, indices=picks, summary=summary)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _ifd_scores(
    name: str,
    items: Sequence[PoolItem],
    cfg: Any,
    engine: Any,
    backend: Any,
    score_cache: Path | None,
    progress: bool,
    max_length: int | None,
) -> Any:
    """IFD of every pool row on the selection engine (``likelihood.ifd_scores``), cached."""
    from selectllm_local import hardware
    from selectllm_local.backends import LazyBackend, load_backend, resolve_model
    from selectllm_local.baselines import ifd as likelihood

    likelihood.require_responses(items, name)
    length = int(max_length or likelihood.DEFAULT_MAX_LENGTH)
    if backend is not None:  # an engine the caller loaded (options already resolved)
        opts = backend.options
        model, dtype = str(backend.model_path), str(opts.dtype)
    elif engine is None or not engine.model:
        raise UserError(
            f"Baseline '{name}' scores the pool with the selection engine's model: give --model "
            "(a local model folder, a .gguf file or a known name such as smollm2-135m-instruct) "
            "and optionally --backend."
        )
    else:
        opts = engine
        model = resolve_model(engine.model, offline=bool(getattr(cfg, "offline", False)))
        dtype = hardware.engine_dtype(engine.dtype, engine.device)
    key = likelihood.model_key(model, dtype, length, opts.max_model_len)
    own = backend is None
    if own:
        offline = bool(getattr(cfg, "offline", False))
        backend = LazyBackend(lambda: load_backend(engine.backend, model, engine, offline=offline))
    try:
        result = likelihood.ifd_scores(
            items,
            backend,
            key=key,
            cache_path=score_cache or cfg.resolved_run_dir / likelihood.IFD_FILE,
            max_length=length,
            progress=progress,
        )
    finally:
        if own:
            backend.close()
    result.model = model
    return result
