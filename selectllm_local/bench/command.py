"""The ``bench`` command as one keyword-only function, so the CLI holds no branching.

Why here: whether to estimate (``dry``) or measure (``run``), which preset to expand and where
to write the files are the benchmark's decisions, not the command line's. The CLI passes the
parsed options and prints either the JSON document or the human text returned here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def bench_command(
    *,
    pool: Path,
    preset: str = "tiny",
    shape: str | None = None,
    model: str | None = None,
    dtype: str | None = None,
    subsets: int | None = None,
    candidates: int | None = None,
    repeats: int | None = None,
    stages: bool | None = None,
    stages_dir: Path | None = None,
    plan_only: bool = False,
    machine: str = "",
    out: Path = Path("benchmarks/results"),
    name: str | None = None,
    dry_run: bool = False,
    gpu: str = "h100",
    utilization: float = 0.4,
    budget: int | None = None,
    setting: list[str] | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], str]:
    """Estimate (``dry_run``) or measure, write the outputs; return (JSON document, human text)."""
    from selectllm_local.bench import config, dry, output, run

    if dry_run:
        est = dry.dry_run(pool, shape=shape or "llama-3-8b", model=model, gpu=gpu,
                          utilization=utilization, candidates=candidates, budget=budget)  # fmt: skip
        return est, dry.format_dry_run(est)
    cfg = config.config_from_preset(
        preset, pool=pool, shape=shape, model=model, dtype=dtype, subsets=subsets,
        candidates=candidates, repeats=repeats, machine=machine, stages=stages,
        stages_dir=stages_dir,
        settings=[config.parse_setting(s) for s in setting] if setting else None,
    )  # fmt: skip
    if plan_only:
        from selectllm_local.bench.stages import plan_stages

        per_setting = cfg.warmup + cfg.repeats
        need = len(cfg.settings) * per_setting * cfg.subsets * cfg.candidates
        planned = plan_stages(cfg, run.load_items(cfg.pool, need))
        return {"planned": str(planned)}, (
            f"Planned {planned}. Copy it to the GPU node and run the same command there with "
            "--stages instead of --plan-only: the select reuses the plan (no embedder, no FAISS)."
        )
    doc = run.run_benchmark(cfg, progress=progress)
    paths = output.write_outputs(doc, out, name or f"select_{preset}")
    return doc, output.results_text(doc) + (
        f"\n\nWrote {', '.join(str(p) for p in paths.values())}."
    )
