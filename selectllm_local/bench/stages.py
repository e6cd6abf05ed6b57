"""Where the time of a real ``select`` goes, stage by stage, on the benchmark's engine.

The settings measured by ``bench.run.run_benchmark`` time the selection stage alone on a cheap
subset layout. This runs the whole pipeline once (``pipeline.select_run``: load, embed, cluster,
plan, select, write) on a pool of the same size built from the same rows, with the engine already
loaded, and reports ``summary.json``'s seconds per stage plus our code's share of the selection
(select minus engine: prompt rendering, token counting, parsing, bookkeeping).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selectllm_local.records import PoolItem


def select_stages(cfg: Any, items: Sequence[PoolItem], backend: Any) -> dict[str, Any]:
    """Run ``select_run`` on ``cfg.subsets x cfg.candidates`` rows of ``items`` with ``backend``."""
    from selectllm_local.config import EngineConfig, PlanConfig, SelectConfig, SelectorConfig
    from selectllm_local.pipeline import select_run

    n = cfg.subsets * cfg.candidates
    rows = items[len(items) - n :] if len(items) >= n else items
    with tempfile.TemporaryDirectory(prefix="selectllm-bench-") as tmp:
        pool = Path(tmp) / "pool.jsonl"
        with open(pool, "w", encoding="utf-8") as fh:
            for it in rows:
                rec = {"instruction": it.instruction, "context": it.input,
                       "response": it.output or "", "category": it.category or ""}  # fmt: skip
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        sel = SelectConfig(
            plan=PlanConfig(
                pool=pool,
                budget=cfg.subsets * cfg.picks,
                n_clusters=cfg.candidates,
                seed=cfg.seed,
                run_dir=Path(tmp) / "run",
            ),
            selector=SelectorConfig(
                max_candidate_tokens=cfg.max_candidate_tokens,
                min_candidate_tokens=min(32, cfg.max_candidate_tokens),
                retries=0,
                max_tokens=cfg.max_tokens,
                seed=cfg.seed,
            ),
            engine=EngineConfig(
                backend=backend.name,
                model=backend.model_path,
                max_model_len=cfg.max_model_len,
                seed=cfg.seed,
            ),
        )
        out = select_run(sel, backend=backend, progress=False)
    s = out.summary
    seconds = dict(s["seconds"])
    seconds["our_code_in_select"] = round(max(0.0, seconds["select"] - seconds["engine"]), 3)
    seconds["model_load"] = float(backend.stats.get("startup_seconds", 0.0))
    return {
        "rows": len(rows),
        "subsets": s["counts"]["subsets"],
        "seconds": seconds,
        "tokens": s["tokens_this_run"],
        "throughput": s["throughput"],
    }
