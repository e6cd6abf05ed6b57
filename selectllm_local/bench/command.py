"""The ``bench`` command as one keyword-only function, so the CLI holds no branching.

Why here: whether to estimate (``dry``) or measure (``run``), which preset to expand and where
to write the files are the benchmark's decisions, not the command line's. The CLI passes the
parsed options and prints either the JSON document or the human text returned here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selectllm_local.config.bench import DRY_RUN_READS

if TYPE_CHECKING:
    from selectllm_local.config import BenchCommand


def bench_command(cmd: BenchCommand, *, progress: bool = False) -> tuple[dict[str, Any], str]:
    """Estimate (``dry_run``) or measure, write the outputs; return (JSON document, human text).

    ``cmd`` is the command's config as the CLI (or a script) built it: its settings are declared
    once, in ``config.BenchCommand`` and the ``config.BenchConfig`` it nests (preset filled in)."""
    from selectllm_local.bench import config, dry, output, run

    if cmd.dry_run:
        # Only what the user gave: the dry run's own defaults are those of a real selection.
        shared = [k for k in DRY_RUN_READS if k != "pool" and k in cmd.given]
        given = {k: getattr(cmd.bench, k) for k in shared}
        est = dry.dry_run(cmd.bench.pool or "", gpu=cmd.gpu, utilization=cmd.utilization,
                          budget=cmd.budget, **given)  # fmt: skip
        return est, dry.format_dry_run(est)
    cfg = config.resolve_settings(cmd.bench)
    if cmd.plan_only:
        from selectllm_local.bench.stages import plan_stages

        planned = plan_stages(cfg, run.load_items(cfg.pool, run.rows_needed(cfg)))
        return {"planned": str(planned)}, (
            f"Planned {planned}. Copy it to the GPU node and run the same command there with "
            "--stages instead of --plan-only: the select reuses the plan (no embedder, no FAISS)."
        )
    doc = run.run_benchmark(cfg, progress=progress)
    paths = output.write_outputs(doc, cmd.out, cmd.name or f"select_{cmd.preset}")
    return doc, output.results_text(doc) + (
        f"\n\nWrote {', '.join(str(p) for p in paths.values())}."
    )
