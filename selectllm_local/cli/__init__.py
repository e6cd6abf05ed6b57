"""The ``selectllm`` command line: a short ``app``; the commands live one group per module.

Each command is a thin function: its options come from the config classes (``options.py``), it
calls one keyword-only library function and prints the result (``--json`` or a human summary).
Errors users can cause (``UserError``), a missing optional package (the message names the extra
to install) and a full or unwritable disk (the path; the run resumes) print one paragraph and
exit with code 2: one rule, ``options.handle_errors`` over ``errors.expected_failure``. Heavy
libraries are imported inside the commands, so ``selectllm --help`` is instant.
"""

from __future__ import annotations

# The command groups register themselves on ``app`` (import order = order in --help).
from selectllm_local.cli import bench, compare, experiment, models, select, train  # noqa: F401, I001
from selectllm_local.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    # TOKENIZERS_PARALLELISM is left to the user: by default the Rust tokenizer encodes a batch on
    # every core (selection tokenizes each round's candidates in a few batched calls, about half
    # of our per-prompt time on 2 cores) and switches itself off in a forked child.
    app()


if __name__ == "__main__":
    main()
