"""Commands that judge a selection: ``finetune`` and ``evaluate``."""

from __future__ import annotations

from selectllm_local.cli.app import app
from selectllm_local.cli.options import command, emit, show_progress
from selectllm_local.config import EvaluateCommand, FinetuneCommand


@command(app, FinetuneCommand)
def finetune(cfg: FinetuneCommand, *, json_out: bool) -> None:
    """Fine-tune BASE_MODEL with LoRA / 4-bit QLoRA on selected records (the paper's recipe)."""
    from selectllm_local.cli import summaries
    from selectllm_local.run.preflight import check_writable
    from selectllm_local.training.finetune import finetune_run, finetune_summary

    check_writable(cfg.out, flag="--out")  # before the model is fetched or trained
    adapter = finetune_run(
        cfg.selected,
        base_model=cfg.base_model,
        out_dir=cfg.out,
        config=cfg.finetune,
        subprocess=cfg.subprocess,
        progress=show_progress(json_out),
    )
    summary = finetune_summary(cfg.out, adapter)
    emit(summary.to_dict(), json_out, lambda: summaries.finetune_text(summary))


@command(app, EvaluateCommand)
def evaluate(cfg: EvaluateCommand, *, json_out: bool) -> None:
    """Answer a test set with base model + adapter; score Rouge-L F1 and embedding cosine."""
    from selectllm_local.cli import summaries
    from selectllm_local.evaluation.evaluate import evaluate_run
    from selectllm_local.run.preflight import check_writable

    check_writable(cfg.out, flag="--out")  # before the model is fetched or loaded
    outcome = evaluate_run(
        cfg.test_set,
        base_model=cfg.base_model,
        adapter=cfg.adapter,
        out_dir=cfg.out,
        config=cfg.evaluate,
        progress=show_progress(json_out),
    )
    emit(outcome.to_dict(), json_out, lambda: summaries.evaluate_text(outcome))
