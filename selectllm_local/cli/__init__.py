"""The ``selectllm`` command line: a short ``app``; the commands live one group per module.

Each command is a thin function: its options come from the config classes (``options.py``), it
calls one keyword-only library function and prints the result (``--json`` or a human summary).
Errors users can cause (``UserError``) print one paragraph and exit with code 2. Heavy libraries
are imported inside the commands, so ``selectllm --help`` is instant.
"""

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


# The command groups register themselves on ``app`` (import order = order in --help).
from selectllm_local.cli import select, compare, train, experiment, bench, models  # noqa: E402, F401, I001


def main() -> None:
    # TOKENIZERS_PARALLELISM is left to the user: by default the Rust tokenizer encodes a batch on
    # every core (selection tokenizes each round's candidates in a few batched calls, about half
    # of our per-prompt time on 2 cores) and switches itself off in a forked child.
    app()


if __name__ == "__main__":
    main()
