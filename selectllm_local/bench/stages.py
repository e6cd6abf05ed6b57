"""Where the time of a real ``select`` goes, stage by stage, on the benchmark's engine.

The settings measured by ``bench.run.run_benchmark`` time the selection stage alone on a cheap
subset layout. This runs the whole pipeline once (``pipeline.select_run``: load, embed, cluster,
plan, select, write) on a pool of the same size built from the same rows, with the engine already
loaded, and reports ``summary.json``'s seconds per stage plus our code's share of the selection
(select minus engine: prompt rendering, token counting, parsing, bookkeeping).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from selectllm_local.backends.base import Backend
from selectllm_local.config.vocab import BackendName
from selectllm_local.records import PoolItem

if TYPE_CHECKING:
    from selectllm_local.bench.config import BenchConfig
    from selectllm_local.config import SelectConfig


def stages_config(
    cfg: BenchConfig, items: Sequence[PoolItem], run_dir: Path, backend: BackendName, model: str
) -> SelectConfig:
    """The ``select`` run of ``select_stages``: pool file written into ``run_dir``."""
    from selectllm_local.config import EngineConfig, PlanConfig, SelectConfig, SelectorConfig

    n = cfg.subsets * cfg.candidates
    rows = items[len(items) - n :] if len(items) >= n else items
    run_dir.mkdir(parents=True, exist_ok=True)
    pool = run_dir / "bench_pool.jsonl"
    with open(pool, "w", encoding="utf-8") as fh:
        for it in rows:
            rec = {"instruction": it.instruction, "context": it.input,
                   "response": it.output or "", "category": it.category or ""}  # fmt: skip
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return SelectConfig(
        plan=PlanConfig(
            pool=pool,
            budget=cfg.subsets * cfg.picks,
            n_clusters=cfg.candidates,
            seed=cfg.seed,
            run_dir=run_dir,
        ),
        selector=SelectorConfig(
            max_candidate_tokens=cfg.max_candidate_tokens,
            min_candidate_tokens=min(32, cfg.max_candidate_tokens),
            retries=0,
            max_tokens=cfg.max_tokens,
            seed=cfg.seed,
        ),
        engine=EngineConfig(
            backend=backend, model=model, max_model_len=cfg.max_model_len, seed=cfg.seed
        ),
    )


def plan_stages(cfg: BenchConfig, items: Sequence[PoolItem]) -> Path:
    """Plan ``cfg.stages_dir`` (pool, embeddings, clusters, subsets) without loading a model.

    For a GPU node without the embedder or FAISS: plan here, copy the folder over, and the
    ``select`` of ``select_stages`` reuses every planned stage there.
    """
    from selectllm_local.run.pipeline import plan_run

    if cfg.stages_dir is None:  # ``BenchCommand`` asks for --stages-dir with --plan-only
        raise ValueError("plan_stages needs cfg.stages_dir, the folder to plan")
    sel = stages_config(cfg, items, cfg.stages_dir, "auto", "")
    plan_run(sel.plan, progress=False)
    return cfg.stages_dir


def select_stages(cfg: BenchConfig, items: Sequence[PoolItem], backend: Backend) -> dict[str, Any]:
    """Run ``select_run`` on ``cfg.subsets x cfg.candidates`` rows of ``items`` with ``backend``,
    in ``cfg.stages_dir`` when given (a planned one is reused), else in a temporary folder."""
    from selectllm_local.run.pipeline import select_run

    with tempfile.TemporaryDirectory(prefix="selectllm-bench-") as tmp:
        run_dir = cfg.stages_dir if cfg.stages_dir else Path(tmp) / "run"
        if cfg.stages_dir:  # a second measurement must not resume the first one's answers
            for name in ("responses.jsonl", "selected.jsonl", "summary.json"):
                (run_dir / name).unlink(missing_ok=True)
        sel = stages_config(
            cfg, items, run_dir, cast(BackendName, backend.name), backend.model_path
        )
        out = select_run(sel, backend=backend, progress=False, report=False)
    s = out.summary
    seconds = s.seconds.to_dict()
    seconds["our_code_in_select"] = round(max(0.0, seconds["select"] - seconds["engine"]), 3)
    seconds["model_load"] = float(backend.stats.get("startup_seconds", 0.0))
    return {
        "rows": min(len(items), cfg.subsets * cfg.candidates),
        "subsets": s.counts.subsets,
        "seconds": seconds,
        "tokens": dataclasses.asdict(s.tokens_this_run),
        "throughput": dataclasses.asdict(s.throughput),
        "plan_reused": bool(cfg.stages_dir),
    }
