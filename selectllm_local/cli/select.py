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
    from selectllm_local.baselines.run import baseline_command
    from selectllm_local.cli import summaries

    outcome = baseline_command(cfg, progress=show_progress(json_out))
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
