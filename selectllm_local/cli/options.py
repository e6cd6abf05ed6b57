"""Typer options built from the config classes, so each setting is declared once.

``command(app, Config)`` registers a function as a command whose options are the settings of
``Config`` (its sections and its own fields): the flag spellings and help come from the fields,
the ``--config`` file is read by the one loader, and a flag counts only when the user gave it
(click's parameter source), so precedence is defaults < config file < flags. The command function
receives the built, validated config and ``json_out``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from selectllm_local.config import loader
from selectllm_local.config.base import field_docs, field_types, flags_of
from selectllm_local.config.vocab import vocabulary
from selectllm_local.errors import UserError, expected_failure

F = TypeVar("F", bound=Callable[..., Any])
# How a value came in when the user gave it (typer vendors click, so compared by name).
GIVEN = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")
PANELS = {"plan": "Planning", "selector": "Selector", "engine": "Engine", "baseline": "Baseline",
          "finetune": "Fine-tuning", "evaluate": "Evaluation"}  # fmt: skip


def console(stderr: bool = False):  # noqa: ANN201 - rich.console.Console (imported lazily)
    """stdout's console, or the one stderr console that logging and progress lines share."""
    from rich.console import Console

    if stderr:
        from selectllm_local.progress import stderr_console

        return stderr_console()
    return Console()


# Where a command writes, by the config's field names (``plan.run_dir`` through the plan's
# ``resolved_run_dir``): named in the message of a full disk whose error carries no file name.
OUTPUT_FIELDS = ("run_dir", "out", "out_dir", "stages_dir")
OUTPUTS_KEY = "selectllm.outputs"


def output_folders(cfg: Any) -> list[Path]:
    """The folders a command built from ``cfg`` writes into, first the main one."""
    folders = [getattr(cfg, f, None) for f in OUTPUT_FIELDS]
    plan = getattr(cfg, "plan", None)
    if plan is not None and hasattr(plan, "resolved_run_dir"):
        folders.insert(0, plan.resolved_run_dir)
    return [Path(f) for f in folders if isinstance(f, str | Path)]


def _command_name(ctx: Any) -> str:
    """``selectllm models fetch``: the command as typed, whatever the program was called."""
    names: list[str] = []
    while getattr(ctx, "parent", None) is not None:  # click's Context (typer vendors click)
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["selectllm", *names])


def handle_errors(fn: F) -> F:
    """The one rule for expected failures: a ``UserError``, a missing optional package (the
    extra to install) and a full or unwritable disk (the path; the run resumes) print one
    paragraph on stderr and exit 2 (``errors.expected_failure``); Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, ModuleNotFoundError, OSError) as exc:
            ctx = kwargs.get("ctx")
            meta = getattr(ctx, "meta", {})
            err = expected_failure(
                exc, feature=f"`{_command_name(ctx)}`", folders=meta.get(OUTPUTS_KEY, ())
            )
            if err is None:
                raise
            from rich.markup import escape

            console(stderr=True).print(
                f"[bold red]Error:[/] {escape(str(err))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code=getattr(err, "exit_code", 2)) from None
        except KeyboardInterrupt:
            console(stderr=True).print(
                "[yellow]Interrupted.[/] Finished work is saved; run the same command again to resume."
            )
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def show_progress(json_out: bool) -> bool:
    """Progress lines only for a person watching a terminal (never around JSON output).

    The choice also becomes the default of every progress line (``progress.configure``), so
    steps deep inside the library (a model download, the fine-tune relay) follow it too.
    """
    import sys

    from selectllm_local import progress

    shown = not json_out and sys.stderr.isatty()
    progress.configure(enabled=shown)
    return shown


def emit(result: dict[str, Any], json_out: bool, text: Callable[[], Any]) -> None:
    """Print ``result`` as JSON, or the human summary ``text()`` builds."""
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        console().print(text())


def _cli_type(tp: Any) -> Any:
    """The type typer parses: ``X | None`` -> ``X``; ``str | list[str]`` -> ``str``; a
    ``Literal`` vocabulary -> ``str`` (its section checks the word and names the flag)."""
    if vocabulary(tp):
        return str
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _parameter(name: str, where: list[loader.Leaf]) -> inspect.Parameter:
    owner, f = where[0]
    tp = _cli_type(field_types(owner)[name])
    doc = field_docs(owner).get(name, "").replace("[", "\\[")  # not rich markup
    has_default = f.default is not dataclasses.MISSING
    default = f.default if has_default else None
    if f.metadata.get("argument"):
        info: Any = typer.Argument(help=doc, show_default=False, metavar=name.upper())
    else:
        flags = list(flags_of(f))
        if tp is bool and not f.metadata.get("flags"):  # --no-x: a flag can undo the file
            flags = [f"{flags[0]}/--no-{flags[0][2:]}"]
        section = getattr(owner, "SECTION", "")
        info = typer.Option(*flags, help=doc, rich_help_panel=PANELS.get(section))
    annotation = tp if default is not None else tp | None
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, info],
    )


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (a default does not count, whatever its value)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in GIVEN


CONFIG_HELP = (
    "TOML config file: \\[plan], \\[engine]... tables and flag names as keys; flags override it."
)
CONTEXT = inspect.Parameter(
    "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
)
COMMON = [
    inspect.Parameter(
        "config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)],
    ),
    inspect.Parameter(
        "json_out", inspect.Parameter.KEYWORD_ONLY, default=False,
        annotation=Annotated[bool, typer.Option("--json", help="Print the result as JSON.")],
    ),
]  # fmt: skip


def command(app: typer.Typer, config_cls: type, *, name: str | None = None) -> Callable[[F], F]:
    """Register ``fn(cfg, *, json_out)`` as a command taking the settings of ``config_cls``."""

    def register(fn: F) -> F:
        cmd = name or fn.__name__.replace("_", "-")
        known = loader.leaves(config_cls)
        params = [  # a flag for each setting the command takes (none that it would ignore)
            _parameter(n, where)
            for n, where in loader.leaves(config_cls, offered=True).items()
            if where[0][1].metadata.get("cli", True)
        ]

        def run(ctx: typer.Context, **kw: Any) -> Any:
            values = loader.file_values(kw["config_file"], config_cls, command=cmd)
            values.update({k: v for k, v in kw.items() if k in known and _given(ctx, k)})
            cfg: Any = loader.build(config_cls, values)
            ctx.meta[OUTPUTS_KEY] = output_folders(cfg)  # named if the disk fills up
            return fn(cfg, json_out=kw["json_out"])

        signature = inspect.Signature([CONTEXT, *params, *COMMON])
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        app.command(cmd)(handle_errors(run))
        return fn

    return register
