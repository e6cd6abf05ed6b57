"""The ``selectllm`` typer app and its global options; the command modules register on it."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from selectllm_local import __version__

app = typer.Typer(
    name="selectllm",
    no_args_is_help=True,
    add_completion=False,
    help="Choose the instructions most worth annotating with a local LLM (SelectLLM), then prove it.",
    pretty_exceptions_enable=False,
)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    from selectllm_local.cli.options import console

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console(stderr=True), show_path=False, show_time=False)],
    )
    for noisy in ("httpx", "urllib3", "filelock", "faiss", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """selectllm-local: SelectLLM instruction selection with local open-weight models."""
    _setup_logging(verbose)
