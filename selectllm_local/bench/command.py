"""The ``bench`` command as one keyword-only function, so the CLI holds no branching.

Why here: whether to estimate (``dry``) or measure (``run``), which preset to expand and where
to write the files are the benchmark's decisions, not the command line's. The CLI passes the
parsed options and prints either the JSON document or the human text returned here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selectllm_local.config import BenchCommand


def bench_command(cmd: BenchCommand, *, progress: bool = False) -> tuple[dict[str, Any], str]:
    """Estimate (``dry_run``) or measure, write the outputs; return (JSON document, human text).

    ``cmd`` is the command's config as the CLI (or a script) built it: its settings are declared
    once, in ``config.BenchCommand``."""
    from selectllm_local.bench import config, dry, output, run

    if cmd.dry_run:
        est = dry.dry_run(cmd.pool, shape=cmd.shape or "llama-3-8b", model=cmd.model, gpu=cmd.gpu,
                          utilization=cmd.utilization, candidates=cmd.candidates,
                          budget=cmd.budget)  # fmt: skip
        return est, dry.format_dry_run(est)
    cfg = config.config_from_preset(
        cmd.preset, pool=cmd.pool, shape=cmd.shape, model=cmd.model, dtype=cmd.dtype,
        subsets=cmd.subsets, candidates=cmd.candidates, repeats=cmd.repeats, machine=cmd.machine,
        stages=cmd.stages, stages_dir=cmd.stages_dir,
        settings=[config.parse_setting(s) for s in cmd.setting] if cmd.setting else None,
    )  # fmt: skip
    if cmd.plan_only:
        from selectllm_local.bench.stages import plan_stages

        per_setting = cfg.warmup + cfg.repeats
        need = len(cfg.settings) * per_setting * cfg.subsets * cfg.candidates
        planned = plan_stages(cfg, run.load_items(cfg.pool, need))
        return {"planned": str(planned)}, (
            f"Planned {planned}. Copy it to the GPU node and run the same command there with "
            "--stages instead of --plan-only: the select reuses the plan (no embedder, no FAISS)."
        )
    doc = run.run_benchmark(cfg, progress=progress)
    paths = output.write_outputs(doc, cmd.out, cmd.name or f"select_{cmd.preset}")
    return doc, output.results_text(doc) + (
        f"\n\nWrote {', '.join(str(p) for p in paths.values())}."
    )
