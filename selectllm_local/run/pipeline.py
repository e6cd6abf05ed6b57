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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.backends.base import Backend
from selectllm_local.config import PlanConfig, SelectConfig
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem, PoolStats, Subset
from selectllm_local.run.preflight import Ready, check_writable, preflight
from selectllm_local.run.rundir import (
    engine_usage,
    environment,
    load_pool_stage,
    model_identity,
    selected_rows,
    write_extra_format,
)
from selectllm_local.run.store import (
    RunStore,
    read_json,
    read_jsonl,
    save_npy,
    stable_hash,
    write_json,
    write_jsonl,
)

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
    reused: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    prompt_tokens_estimate: dict[str, Any] = field(default_factory=dict)
    kmeans_device: str = "cpu"
    """Where k-means trained the centroids ("cpu" or "cuda:N"; "not recorded" for older runs)."""

    def summary(self) -> dict[str, Any]:
        sizes = self.plan.cluster_sizes
        picks = [s.k for s in self.plan.subsets]
        cand = [len(s.candidates) for s in self.plan.subsets]
        no_call = sum(1 for s in self.plan.subsets if s.k >= len(s.candidates))
        return {
            "run_dir": str(self.run_dir),
            "pool": {
                "path": self.stats.path,
                "format": self.stats.format,
                "schema": self.stats.schema,
                "fields": self.stats.fields,
                "rows_read": self.stats.rows_read,
                "kept": self.stats.kept,
                "duplicates_dropped": self.stats.duplicates,
                "empty_dropped": self.stats.empty,
                "bad_rows_skipped": len(self.stats.bad_rows),
            },
            "embeddings": {
                "model": self.config.embedder,
                "dim": int(self.embeddings.shape[1]),
                "cached": self.embeddings_cached,
            },
            "clusters": {
                "k": self.plan.n_clusters,
                "min_size": min(sizes),
                "max_size": max(sizes),
                "reused": self.reused.get("clusters", False),
                "kmeans_device": self.kmeans_device,
            },
            "subsets": {
                "layout": self.plan.layout,
                "count": len(self.plan.subsets),
                "candidates_min": min(cand),
                "candidates_max": max(cand),
                "picks_total": sum(picks),
                "picks_min": min(picks),
                "picks_max": max(picks),
                "rounds_expected": self.plan.rounds_expected,
                "subsets_needing_no_call": no_call,
            },
            "budget": self.config.budget,
            "prompt_tokens_estimate": self.prompt_tokens_estimate,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


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
    from selectllm_local.run.store import run_lock

    with run_lock(cfg.resolved_run_dir):  # one run per folder (runstore.run_lock)
        return _plan_run(cfg, progress=progress)


def _plan_run(cfg: PlanConfig, *, progress: bool) -> PlanOutcome:
    from selectllm_local.cluster import kmeans as clustering
    from selectllm_local.cluster import subsets
    from selectllm_local.data import pool as data
    from selectllm_local.embed import cache as embed_cache

    store = RunStore(cfg.resolved_run_dir)
    seconds: dict[str, float] = {}
    reused: dict[str, bool] = {}

    t = time.perf_counter()
    items, stats, reused["pool"] = load_pool_stage(cfg, store)
    seconds["load"] = time.perf_counter() - t
    n = len(items)
    if n == 0:
        raise UserError(
            f"Pool {cfg.pool} has no usable instructions after dropping empty and duplicate rows."
        )
    if cfg.budget > n:
        raise UserError(
            f"--budget {cfg.budget} is larger than the pool: {cfg.pool} has {n} usable instructions "
            f"({stats.duplicates} duplicates and {stats.empty} empty rows dropped). Choose a budget of at most {n}."
        )

    t = time.perf_counter()
    texts = [data.embedding_text(it) for it in items]
    emb, cached = embed_cache.load_or_embed(
        store,
        texts,
        model=cfg.embedder,
        batch_size=cfg.embed_batch_size,
        device=cfg.device,
        progress=progress,
        offline=cfg.offline,
        ray_address=cfg.ray if cfg.embed_on_ray else None,
    )
    seconds["embed"] = time.perf_counter() - t
    emb_key = (
        read_json(store.path("embeddings.key.json")).get("digest")
        if store.path("embeddings.key.json").exists()
        else None
    )
    emb_key = emb_key or stable_hash([cfg.embedder, [it.uid for it in items]])

    k = cfg.n_clusters if cfg.n_clusters is not None else default_k(n, cfg.budget, max_k=cfg.max_k)
    k = min(k, n)
    t = time.perf_counter()
    ckey = stable_hash(
        {"emb": emb_key, "k": k, "seed": cfg.seed, "iters": cfg.kmeans_iters, "n": n}
    )
    if store.stage_done("clusters", ckey) and store.path("clusters.npy").exists():
        labels = np.load(store.path("clusters.npy"))
        reused["clusters"] = True
        kmeans_device = str(store.stage_info("clusters").get("device", "not recorded"))
    else:
        kmeans_device = clustering.kmeans_device()
        labels = clustering.balanced_clusters(
            emb, k, seed=cfg.seed, niter=cfg.kmeans_iters, device=kmeans_device
        )
        save_npy(store.path("clusters.npy"), np.asarray(labels, dtype=np.int32))
        store.mark_done("clusters", ckey, k=k, device=kmeans_device)
        reused["clusters"] = False
    seconds["cluster"] = time.perf_counter() - t

    t = time.perf_counter()
    skey = stable_hash(
        {"clusters": ckey, "budget": cfg.budget, "layout": cfg.layout, "seed": cfg.seed}
    )
    if store.stage_done("subsets", skey) and store.path("subsets.jsonl").exists():
        info = store.stage_info("subsets")
        plan = Plan(
            n_clusters=k,
            labels=[int(x) for x in labels],
            layout=cfg.layout,
            budget=cfg.budget,
            subsets=[Subset.from_dict(d) for d in read_jsonl(store.path("subsets.jsonl"))],
            rounds_expected=int(info.get("rounds_expected", 1)),
        )
        reused["subsets"] = True
    else:
        plan = subsets.make_plan(
            [int(x) for x in labels], cfg.budget, layout=cfg.layout, seed=cfg.seed, subset_size=k
        )
        write_jsonl(store.path("subsets.jsonl"), (s.to_dict() for s in plan.subsets))
        store.mark_done(
            "subsets", skey, rounds_expected=plan.rounds_expected, count=len(plan.subsets)
        )
        reused["subsets"] = False
    seconds["subsets"] = time.perf_counter() - t

    outcome = PlanOutcome(
        run_dir=store.root,
        config=cfg,
        items=items,
        stats=stats,
        embeddings=emb,
        embeddings_cached=cached,
        plan=plan,
        reused=reused,
        seconds=seconds,
        kmeans_device=kmeans_device,
    )
    outcome.prompt_tokens_estimate = estimate_prompt_tokens(plan, items, tokenizer=cfg.tokenizer)
    write_json(store.path("config.json"), {"plan": cfg.to_dict(), "environment": environment()})
    write_json(store.path("plan_summary.json"), outcome.summary())
    return outcome


def estimate_prompt_tokens(
    plan: Plan, items: list[PoolItem], *, tokenizer: str | None = None
) -> dict[str, Any]:
    """Prompt tokens the selection will read in round one (``prompttokens``, the one estimator)."""
    from selectllm_local.selection.prompttokens import estimate_prompt_tokens as estimate

    return estimate(plan.subsets, items, tokenizer=tokenizer)


# -- stage 6: the LLM's selection -------------------------------------------------------------


class SelectionInterrupted(UserError):
    """Ctrl-C during ``select``: finished subsets are saved; the same command resumes."""

    exit_code = 130


@dataclass
class SelectOutcome:
    """What ``select_run`` produced: the final picks, the summary and where the files are."""

    run_dir: Path
    selected: list[int]
    summary: dict[str, Any]
    files: dict[str, str]


def _select_key(cfg: SelectConfig, store: RunStore, template_fp: str, backend_name: str) -> str:
    settings, engine = cfg.selector, cfg.engine
    return stable_hash(
        {
            "subsets": store.stage_info("subsets").get("key"),
            "model": model_identity(engine.model),
            "backend": backend_name,
            "dtype": engine.dtype,
            "max_model_len": engine.max_model_len,
            "template": template_fp,
            "settings": {
                k: str(v) for k, v in settings.__dict__.items() if k not in ("prompt", "criteria")
            },
            "budget": cfg.plan.budget,
        }
    )


def select_run(
    cfg: SelectConfig, *, backend: Backend | None = None, progress: bool = True
) -> SelectOutcome:
    """``_select_run`` holding the run directory's lock: a second run on it exits 2."""
    from selectllm_local.run.store import run_lock

    check_writable(cfg.plan.resolved_run_dir)
    with run_lock(cfg.plan.resolved_run_dir):  # a run in use is named before anything else
        ready = preflight(cfg) if backend is None else Ready(backend.name, cfg.engine.model)
        return _select_run(cfg, backend=backend, ready=ready, progress=progress)


def _select_run(
    cfg: SelectConfig, *, backend: Backend | None, ready: Ready, progress: bool
) -> SelectOutcome:
    """Stages 1-5 (cached, ``plan_run``), then the LLM's picks, resumable subset by subset.

    ``cfg`` holds the plan, selector and engine sections. ``backend`` lets tests and benchmarks reuse a loaded engine
    (it is not closed here); otherwise one is loaded on first need and closed at the end.
    Finished subsets are appended to ``responses.jsonl`` as they finish; a re-run with the same
    configuration (same hash) asks the LLM only about the others.
    """
    from selectllm_local.backends import LazyBackend, load_backend
    from selectllm_local.backends.startup import ENGINE_LOG, engine_log
    from selectllm_local.progress import status
    from selectllm_local.records import SubsetResult
    from selectllm_local.review.compare import run_position_bias
    from selectllm_local.run.store import AppendLog
    from selectllm_local.selection import prompts as prompting
    from selectllm_local.selection import rounds as selection
    from selectllm_local.testhooks import hold_after

    t_total = time.perf_counter()
    settings, eng = cfg.selector, cfg.engine
    template = prompting.PromptTemplate.load(settings.prompt, settings.criteria, settings.reasons)
    planned = plan_run(cfg.plan, progress=progress)
    store = RunStore(planned.run_dir)
    items, plan = planned.items, planned.plan
    backend_name = ready.backend
    key = _select_key(cfg, store, template.fingerprint, backend_name)

    responses = store.path("responses.jsonl")
    rows = read_jsonl(responses)
    if rows and any(r.get("key") != key for r in rows):
        old = store.path(f"responses.{rows[0].get('key', 'old')}.jsonl")
        os.replace(responses, old)
        log.info("configuration changed: earlier answers moved to %s, starting afresh", old.name)
        rows = []
    done = {
        (r["round"], r["subset_id"]): SubsetResult.from_dict(
            {k: v for k, v in r.items() if k != "key"}
        )
        for r in rows
    }

    def load() -> Backend:
        if not ready.model:
            raise UserError(
                "select needs --model (a local model folder) to ask the LLM; only a budget equal "
                "to the pool needs none."
            )
        with (
            status(f"starting the {backend_name} engine", enabled=progress),
            engine_log(store.path(ENGINE_LOG)),  # the engine's start-up output (quiet)
        ):
            # under Ray each actor resolves the model on its own node (the head's cache path
            # means nothing there)
            model = str(eng.model) if eng.ray and eng.model else ready.model
            return load_backend(backend_name, model, eng, offline=cfg.plan.offline)

    lazy = LazyBackend(load)  # starts nothing until used
    engine: Backend = backend if backend is not None else lazy
    stats_before = dict(backend.stats) if backend is not None else {}
    t_sel = time.perf_counter()
    try:
        with AppendLog(responses) as log_file:
            hold = hold_after("subsets")  # a test's stop point (testhooks); a no-op otherwise

            def record(r: SubsetResult) -> None:
                log_file.append({"key": key, **r.to_dict()})
                hold()

            outcome = selection.select(
                plan, items, engine, cfg=settings, done=done, on_result=record, progress=progress
            )
    except KeyboardInterrupt:
        n_done = len(read_jsonl(responses))
        raise SelectionInterrupted(
            f"Interrupted: {n_done} finished subsets are saved in {responses}. Run the same "
            "command again to resume; only unfinished subsets will be sent to the LLM."
        ) from None
    finally:
        if backend is None:
            engine.close()
    seconds_select = time.perf_counter() - t_sel

    t = time.perf_counter()
    rows_out = selected_rows(items, plan, outcome)
    write_jsonl(store.path("selected.jsonl"), rows_out)
    files = {"selected": str(store.path("selected.jsonl")), "responses": str(responses)}
    extra = write_extra_format(cfg.format, rows_out, store)
    if extra:
        files[cfg.format] = extra
    seconds_write = time.perf_counter() - t

    real = backend if backend is not None else lazy.loaded
    stats = dict(real.stats) if real is not None else {}
    delta = {k: stats.get(k, 0) - stats_before.get(k, 0) for k in stats if k != "startup_seconds"}
    startup = 0.0 if backend is not None else float(stats.get("startup_seconds", 0.0))
    counts = outcome.counts
    summary = {
        "run_dir": str(store.root),
        "pool": len(items),
        "budget": cfg.plan.budget,
        "selected": len(outcome.selected),
        "model": eng.model,
        "backend": backend_name if real is not None else "none (no LLM call needed)",
        "mode": settings.mode,
        "reasons": settings.reasons,
        "llm_called": outcome.llm_called,
        "note": (
            "budget equals the pool: every instruction is selected, no LLM call was made"
            if cfg.plan.budget >= len(items)
            else None
        ),
        "rounds": outcome.rounds,
        "kmeans_device": planned.kmeans_device,
        "counts": counts,
        "position_bias": run_position_bias(
            store.root, mode=settings.mode, permutations=settings.permutations
        ),
        **engine_usage(delta, counts["prompts_sent_this_run"]),
        "seconds": {
            **{k: round(v, 3) for k, v in planned.seconds.items()},
            "model_load": round(startup, 3),
            "select": round(seconds_select - startup, 3),
            "engine": round(float(delta.get("engine_seconds", 0.0)), 3),
            "write": round(seconds_write, 3),
            "total": round(time.perf_counter() - t_total, 3),
        },
        "files": files,
    }
    if real is not None and hasattr(real, "ray_summary"):
        summary["ray"] = real.ray_summary()
    write_json(store.path("summary.json"), summary)
    conf = read_json(store.path("config.json")) if store.path("config.json").exists() else {}
    conf["select"] = {**cfg.to_dict(), "model_identity": model_identity(eng.model), "key": key}
    write_json(store.path("config.json"), conf)
    store.mark_done("select", key, selected=len(outcome.selected), counts=counts)
    return SelectOutcome(store.root, list(outcome.selected), summary, files)
