"""The pipeline, stage by stage: the file a newcomer reads first.

    pool file -> data -> embedding -> clustering -> subsets -> prompting -> backend -> parsing
              -> selection -> selected.jsonl

Stages are plain functions over records (``records.py``); this module and the run store do the
I/O. Every stage records in ``manifest.json`` the hash of what it was computed from, so re-running
the same command on the same run directory skips finished stages (and, for selection, finished
subsets) and a second budget on the same pool re-uses the embeddings and clusters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.backends.base import Backend
from selectllm_local.config import PlanConfig, SelectConfig
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem, PoolStats, Subset
from selectllm_local.run import answers
from selectllm_local.run.answers import SelectionInterrupted
from selectllm_local.run.preflight import Ready, check_writable, preflight
from selectllm_local.run.rundir import environment, load_pool_stage
from selectllm_local.run.store import (
    RunStore,
    read_json,
    read_jsonl,
    save_npy,
    stable_hash,
    timed,
    write_json,
    write_jsonl,
)
from selectllm_local.selection.prompttokens import PromptTokenEstimate
from selectllm_local.summaries import (
    ClusterSummary,
    EmbeddingSummary,
    PlanSummary,
    PoolSummary,
    SelectFiles,
    SelectSummary,
    SubsetSummary,
)

__all__ = ["PlanOutcome", "SelectOutcome", "SelectionInterrupted", "plan_run", "select_run"]

log = logging.getLogger(__name__)


@dataclass
class PlanOutcome:
    """What ``plan_run`` produced, for the CLI summary and for ``select_run``."""

    run_dir: Path
    config: PlanConfig
    items: list[PoolItem]
    stats: PoolStats
    embeddings: np.ndarray
    embeddings_cached: bool
    plan: Plan
    prompt_tokens_estimate: PromptTokenEstimate
    """Round-one prompt tokens (``selection.prompttokens``, the one estimator)."""
    reused: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    kmeans_device: str = "cpu"
    """Where k-means trained the centroids ("cpu" or "cuda:N"; "not recorded" for older runs)."""

    @property
    def summary(self) -> PlanSummary:
        """The typed summary (``plan_summary.json`` and ``plan --json`` are its ``to_dict()``)."""
        sizes = self.plan.cluster_sizes
        return PlanSummary(
            run_dir=str(self.run_dir),
            pool=PoolSummary.of(self.stats),
            embeddings=EmbeddingSummary(
                model=self.config.embedder,
                dim=int(self.embeddings.shape[1]),
                cached=self.embeddings_cached,
            ),
            clusters=ClusterSummary(
                k=self.plan.n_clusters,
                min_size=min(sizes),
                max_size=max(sizes),
                reused=self.reused.get("clusters", False),
                kmeans_device=self.kmeans_device,
            ),
            subsets=SubsetSummary.of(self.plan),
            budget=self.config.budget,
            prompt_tokens_estimate=self.prompt_tokens_estimate,
            seconds={k: round(v, 3) for k, v in self.seconds.items()},
        )


def default_k(n: int, budget: int, *, max_k: int) -> int:
    """Candidates per prompt (= clusters) when ``--k`` is not given.

    The paper's rule (about n/1000, at least 2) keeps its meaning for 14k-51k pools, but for a small
    pool or a large budget it makes many tiny prompts and, once the subsets outnumber the budget, a
    needless tournament (1,500 rows, budget 137: 750 prompts of 2 candidates, 4 rounds). So K is
    raised to ceil(n / budget) when that is larger, which gives at most ``budget`` subsets and a
    single round; both are capped at ``max_k`` so a prompt stays short (then a tournament runs).
    """
    from selectllm_local.cluster import kmeans as clustering

    paper = clustering.choose_k(n, max_k=max_k)
    return max(1, min(max(paper, math.ceil(n / budget)), max_k, n))


def plan_run(cfg: PlanConfig, *, progress: bool = True) -> PlanOutcome:
    """Stages 1-5: pool -> embeddings -> balanced clusters -> subsets with exact pick counts."""
    from selectllm_local.run.lock import run_lock

    with run_lock(cfg.resolved_run_dir):  # one run per folder (run.lock)
        return _plan_run(cfg, progress=progress)


def _plan_run(cfg: PlanConfig, *, progress: bool) -> PlanOutcome:
    store = RunStore(cfg.resolved_run_dir)
    seconds: dict[str, float] = {}
    reused: dict[str, bool] = {}
    with timed("load", seconds):
        items, stats, reused["pool"] = load_pool_stage(cfg, store)
    _check_budget(cfg, stats, len(items))
    with timed("embed", seconds):
        emb, cached, emb_key = _embed_stage(cfg, store, items, progress=progress)
    k = (
        cfg.n_clusters
        if cfg.n_clusters is not None
        else default_k(len(items), cfg.budget, max_k=cfg.max_k)
    )
    k = min(k, len(items))
    with timed("cluster", seconds):
        (labels, kmeans_device), reused["clusters"] = _cluster_stage(cfg, store, emb, emb_key, k)
    with timed("subsets", seconds):
        plan, reused["subsets"] = _subset_stage(cfg, store, labels, k)
    outcome = PlanOutcome(
        run_dir=store.root,
        config=cfg,
        items=items,
        stats=stats,
        embeddings=emb,
        embeddings_cached=cached,
        plan=plan,
        prompt_tokens_estimate=estimate_prompt_tokens(plan, items, tokenizer=cfg.tokenizer),
        reused=reused,
        seconds=seconds,
        kmeans_device=kmeans_device,
    )
    write_json(store.path("config.json"), {"plan": cfg.to_dict(), "environment": environment()})
    write_json(store.path("plan_summary.json"), outcome.summary.to_dict())
    return outcome


def _check_budget(cfg: PlanConfig, stats: PoolStats, n: int) -> None:
    if n == 0:
        raise UserError(
            f"Pool {cfg.pool} has no usable instructions after dropping empty and duplicate rows."
        )
    if cfg.budget > n:
        raise UserError(
            f"--budget {cfg.budget} is larger than the pool: {cfg.pool} has {n} usable instructions "
            f"({stats.duplicates} duplicates and {stats.empty} empty rows dropped). Choose a budget of at most {n}."
        )


def _embed_stage(
    cfg: PlanConfig, store: RunStore, items: list[PoolItem], *, progress: bool
) -> tuple[np.ndarray, bool, str]:
    """Stage 2: the embeddings (cached by ``embed.cache``) and the key later stages hash."""
    from selectllm_local.data import pool as data
    from selectllm_local.embed import cache as embed_cache

    emb, cached = embed_cache.load_or_embed(
        store,
        [data.embedding_text(it) for it in items],
        model=cfg.embedder,
        batch_size=cfg.embed_batch_size,
        device=cfg.device,
        progress=progress,
        offline=cfg.offline,
        ray_address=cfg.ray if cfg.embed_on_ray else None,
    )
    key_file = store.path("embeddings.key.json")
    emb_key = read_json(key_file).get("digest") if key_file.exists() else None
    return emb, cached, emb_key or stable_hash([cfg.embedder, [it.uid for it in items]])


def _cluster_stage(
    cfg: PlanConfig, store: RunStore, emb: np.ndarray, emb_key: str, k: int
) -> tuple[tuple[np.ndarray, str], bool]:
    """Stage 3: balanced k-means labels (cached as clusters.npy) and where k-means ran."""
    from selectllm_local.cluster import kmeans as clustering

    n = len(emb)
    key = stable_hash({"emb": emb_key, "k": k, "seed": cfg.seed, "iters": cfg.kmeans_iters, "n": n})

    def compute() -> tuple[np.ndarray, str]:
        device = clustering.kmeans_device()
        labels = clustering.balanced_clusters(
            emb, k, seed=cfg.seed, niter=cfg.kmeans_iters, device=device
        )
        return np.asarray(labels, dtype=np.int32), device

    def save(value: tuple[np.ndarray, str]) -> dict[str, Any]:
        save_npy(store.path("clusters.npy"), value[0])
        return {"k": k, "device": value[1]}

    def load(info: dict[str, Any]) -> tuple[np.ndarray, str]:
        return np.load(store.path("clusters.npy")), str(info.get("device", "not recorded"))

    return store.cached(
        "clusters", key, outputs=["clusters.npy"], load=load, compute=compute, save=save
    )


def _subset_stage(
    cfg: PlanConfig, store: RunStore, labels: np.ndarray, k: int
) -> tuple[Plan, bool]:
    """Stages 4-5: subsets with exact pick counts (cached as subsets.jsonl)."""
    from selectllm_local.cluster import subsets

    label_list = [int(x) for x in labels]
    key = stable_hash(
        {
            "clusters": store.stage_info("clusters").get("key"),
            "budget": cfg.budget,
            "layout": cfg.layout,
            "seed": cfg.seed,
        }
    )

    def compute() -> Plan:
        return subsets.make_plan(
            label_list, cfg.budget, layout=cfg.layout, seed=cfg.seed, subset_size=k
        )

    def save(plan: Plan) -> dict[str, Any]:
        write_jsonl(store.path("subsets.jsonl"), (s.to_dict() for s in plan.subsets))
        return {"rounds_expected": plan.rounds_expected, "count": len(plan.subsets)}

    def load(info: dict[str, Any]) -> Plan:
        return Plan(
            n_clusters=k,
            labels=label_list,
            layout=cfg.layout,
            budget=cfg.budget,
            subsets=[Subset.from_dict(d) for d in read_jsonl(store.path("subsets.jsonl"))],
            rounds_expected=int(info.get("rounds_expected", 1)),
        )

    return store.cached(
        "subsets", key, outputs=["subsets.jsonl"], load=load, compute=compute, save=save
    )


def estimate_prompt_tokens(
    plan: Plan, items: list[PoolItem], *, tokenizer: str | None = None
) -> PromptTokenEstimate:
    """Prompt tokens the selection will read in round one (``prompttokens``, the one estimator)."""
    from selectllm_local.selection.prompttokens import estimate_prompt_tokens as estimate

    return estimate(plan.subsets, items, tokenizer=tokenizer)


# -- stage 6: the LLM's selection -------------------------------------------------------------


@dataclass
class SelectOutcome:
    """What ``select_run`` produced: the final picks, the typed summary, the files and the
    report (``summary.to_dict()`` is ``summary.json`` and ``select --json``)."""

    run_dir: Path
    selected: list[int]
    summary: SelectSummary
    files: SelectFiles
    report: Path | None = None


def select_run(
    cfg: SelectConfig, *, backend: Backend | None = None, progress: bool = True, report: bool = True
) -> SelectOutcome:
    """``_select_run`` holding the run directory's lock: a second run on it exits 2.

    ``report`` writes ``report.html`` into the run directory once the selection is saved (every
    caller, ``select --json`` included, gets it; benchmarks turn it off)."""
    from selectllm_local.run.lock import run_lock

    check_writable(cfg.plan.resolved_run_dir)
    with run_lock(cfg.plan.resolved_run_dir):  # a run in use is named before anything else
        ready = preflight(cfg) if backend is None else Ready(backend.name, cfg.engine.model)
        outcome = _select_run(cfg, backend=backend, ready=ready, progress=progress)
        if report:
            from selectllm_local.review.report import render_report

            outcome.report = render_report(outcome.run_dir)
        return outcome


def _select_run(
    cfg: SelectConfig, *, backend: Backend | None, ready: Ready, progress: bool
) -> SelectOutcome:
    """Stages 1-5 (cached, ``plan_run``), then the LLM's picks, resumable subset by subset.

    ``cfg`` holds the plan, selector and engine sections. ``backend`` lets tests and benchmarks
    reuse a loaded engine (it is not closed here); otherwise one is loaded on first need and
    closed at the end. Finished subsets are appended to ``responses.jsonl`` as they finish; a
    re-run with the same configuration (same hash) asks the LLM only about the others.
    """
    seconds: dict[str, float] = {}
    with timed() as total:
        template = answers.template_of(cfg)
        planned = plan_run(cfg.plan, progress=progress)
        store = RunStore(planned.run_dir)
        key = answers.select_key(cfg, store, template.fingerprint, ready.backend)
        done = answers.resume(store, key)
        with timed("select", seconds):
            run = answers.ask(
                cfg, store, planned, key, done, backend=backend, ready=ready, progress=progress
            )
        with timed("write", seconds):
            files = answers.write_selection(cfg, store, planned, run.outcome)
    summary = answers.summarize(cfg, store, planned, run, files, seconds, total=total.wall)
    write_json(store.path("summary.json"), summary.to_dict())
    answers.save_config(cfg, store, key)
    store.mark_done("select", key, selected=summary.selected, counts=run.outcome.counts)
    return SelectOutcome(store.root, list(run.outcome.selected), summary, files)
