"""The one progress display: rich, on stderr, transient, and free when disabled.

Why one: embedding, the backends, baselines and the benchmark each drew their own bar (one on
stdout, which corrupted ``--json`` output when shown); now every long step asks for a line here,
so all lines look alike, stay off stdout and vanish when done.

Why one *display*: rich allows one live display per console, and steps nest (an experiment cell
embeds a pool, starts an engine, fine-tunes...). The first line opens the display; a line opened
while it is shown joins it as another row and leaves when its step ends. Log records go through
the same console (``stderr_console``), so they print above the live rows instead of through them.

Each update is drawn at once (not only at the next tick), so every state a step passes through
reaches the terminal. Whether lines show by default (``default_enabled``) is decided by the CLI:
not under ``--json`` and not when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_console: Any = None
_console_for: Any = None  # the sys.stderr the console was made for
_display: Any = None  # the open rich Progress, shared by nested lines
_enabled_default: bool | None = None


def stderr_console() -> Any:
    """The one rich console on stderr (logging and progress lines share it)."""
    global _console, _console_for
    if _console is None or _console_for is not sys.stderr:
        from rich.console import Console

        # A copy of file descriptor 2 taken now: while the engine starts, its output is sent to
        # engine.log through fd 2 (backends.startup), and the progress line must stay on screen.
        try:
            stream: Any = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
            tty = sys.stderr.isatty()
        except (AttributeError, OSError, ValueError):  # no real fd (pytest capture, StringIO)
            stream, tty = sys.stderr, None
        _console = Console(file=stream, force_terminal=tty or None)
        _console_for = sys.stderr
    return _console


def configure(*, enabled: bool) -> None:
    """Set whether lines show when a caller does not say (the CLI: not under ``--json``)."""
    global _enabled_default
    _enabled_default = enabled


def default_enabled() -> bool:
    """Lines show for a person at a terminal unless the CLI turned them off."""
    if _enabled_default is not None:
        return _enabled_default
    return sys.stderr.isatty()


class Line:
    """One progress row: ``advance(n)``, ``update(completed=, total=, note=)``; no-op if hidden."""

    def __init__(self, display: Any = None, task: Any = None) -> None:
        self._display, self._task = display, task

    def advance(self, n: int = 1) -> None:
        if self._display is not None:
            self._display.update(self._task, advance=n, refresh=True)

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        note: str | None = None,
        description: str | None = None,
    ) -> None:
        if self._display is None:
            return
        fields: dict[str, Any] = {}
        if note is not None:
            fields["note"] = note
        if total is not None:
            fields["total"] = total
        self._display.update(
            self._task, completed=completed, description=description, refresh=True, **fields
        )


def _open_display() -> Any:
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Count(ProgressColumn):  # "3/10"; nothing for a step of unknown length
        def render(self, task: Any) -> Text:
            if task.total is None:
                return Text("")
            return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")

    class Left(ProgressColumn):  # "~0:01:10 left" once a rate is known
        max_refresh = 0.5

        def render(self, task: Any) -> Text:
            left = task.time_remaining
            if task.total is None or left is None or task.finished:
                return Text("")
            minutes, seconds = divmod(int(left), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"~{hours}:{minutes:02d}:{seconds:02d} left", style="progress.remaining")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        Count(),
        TimeElapsedColumn(),
        Left(),
        TextColumn("{task.fields[note]}"),
        console=stderr_console(),
        transient=True,
    )


@contextlib.contextmanager
def progress_line(
    description: str, *, total: float | None = None, enabled: bool | None = None
) -> Iterator[Line]:
    """Show one row while the block runs; ``total=None`` is a step of unknown length (a pulse)."""
    global _display
    if enabled is None:
        enabled = default_enabled()
    if not enabled:
        yield Line()
        return
    opened = _display is None
    if opened:
        _display = _open_display()
        _display.start()
    display = _display
    task = display.add_task(description, total=total, note="")
    try:
        display.refresh()
        yield Line(display, task)
    finally:
        display.remove_task(task)
        if opened:
            display.stop()
            _display = None


@contextlib.contextmanager
def progress_bar(
    description: str, *, total: int, enabled: bool | None = True
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` for a loop of ``total`` known steps (``progress_line`` underneath)."""
    if total <= 0:
        yield lambda n: None
        return
    with progress_line(description, total=total, enabled=enabled) as line:
        yield line.advance


@contextlib.contextmanager
def status(description: str, *, enabled: bool | None = None) -> Iterator[Line]:
    """A row for a step of unknown length (engine start, a download): a pulse and the time."""
    with progress_line(description, total=None, enabled=enabled) as line:
        yield line


def track(
    items: Sequence[T],
    description: str,
    *,
    enabled: bool | None = None,
    note: Callable[[T], str] | None = None,
) -> Iterator[T]:
    """Iterate ``items`` behind a row "description i/n" (``note(item)`` beside it while it runs)."""
    with progress_line(description, total=len(items), enabled=enabled) as line:
        for i, item in enumerate(items):
            line.update(completed=i, note=note(item) if note else "")
            yield item
        line.update(completed=len(items))


@contextlib.contextmanager
def quiet_weight_bars(source: str | os.PathLike[str]) -> Iterator[None]:
    """transformers' own "Loading weights" (and "Writing model shards") bar off while the model
    at ``source`` loads (or is saved there).

    That bar is drawn outside this display, on a pipe too, and flashes by in under a second for
    the packaged models; the step's own line (embedding, selecting, fine-tuning) says what is
    going on. A hub id (``source`` not a local path) keeps every bar: loading it may download.
    Debug logging (``-v``) keeps it too."""
    import logging

    local = os.path.exists(os.fspath(source))
    if not local or logging.getLogger("selectllm_local").isEnabledFor(logging.DEBUG):
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
