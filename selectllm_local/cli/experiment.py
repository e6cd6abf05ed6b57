"""``experiment`` (methods x budgets x seeds) and ``report`` (HTML of a run)."""

from __future__ import annotations

import json

from selectllm_local.cli.app import app
from selectllm_local.cli.options import command, emit, show_progress
from selectllm_local.config import ExperimentCommand, ReportCommand


@command(app, ExperimentCommand)
def experiment(cfg: ExperimentCommand, *, json_out: bool) -> None:
    """Methods x budgets x seeds: select, fine-tune, evaluate; write the results table and plot.

    Resumable: re-running the same command skips finished cells. --dry-run estimates the time
    instead, on this CPU and on one GPU, loading no model.
    """
    from selectllm_local.cli import summaries

    if cfg.dry_run:
        from selectllm_local.costs.estimate import estimate_experiment
        from selectllm_local.costs.table import format_estimate

        est = estimate_experiment(
            cfg.config, rates=cfg.rates, gpu=cfg.gpu, utilization=cfg.utilization, pool=cfg.pool,
            gpu_rates=cfg.gpu_rates,
        )  # fmt: skip
        print(json.dumps(est, indent=2) if json_out else format_estimate(est))
        return
    from selectllm_local.experiment import run_experiment

    outcome = run_experiment(
        cfg.config, run_dir=cfg.run_dir, max_cells=cfg.max_cells, progress=show_progress(json_out)
    )
    emit(outcome.to_dict(), json_out, lambda: summaries.experiment_text(outcome))


@command(app, ReportCommand)
def report(cfg: ReportCommand, *, json_out: bool) -> None:
    """Render an HTML report of a run: clusters, picks, lengths, positions, throughput."""
    from selectllm_local.review.report import render_report

    path = render_report(cfg.run_dir, cfg.out)
    emit(
        {"report": str(path)},
        json_out,
        lambda: f"Wrote {path} (self-contained HTML; open it in a browser).",
    )
