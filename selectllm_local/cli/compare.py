"""``compare``: overlap and diagnostics of two selections of one pool."""

from __future__ import annotations

from selectllm_local.cli import app
from selectllm_local.cli.options import command, emit
from selectllm_local.config import CompareCommand


@command(app, CompareCommand)
def compare(cfg: CompareCommand, *, json_out: bool) -> None:
    """Compare two selections (select runs or baselines) of one pool: overlap vs chance, position
    bias, length, category and cluster preferences."""
    from selectllm_local import summaries
    from selectllm_local.compare import compare_runs

    result = compare_runs(cfg.run_dir_a, cfg.run_dir_b)
    emit(result, json_out, lambda: summaries.compare_text(result))
