"""Engine start-up: quiet by default, and failures with a known cause explained in one paragraph.

Quiet: starting vLLM prints dozens of lines a user can do nothing about (FutureWarnings from its
triton dispatcher, NUMA binding, a missing tcmalloc, a torch.compile cache that fails to load,
thread settings skipped) before our first line. Unless logging is at DEBUG (``selectllm -v``),
``captured_output`` sends everything the process writes to its stdout and stderr during the
engine's start (C libraries included, at the file-descriptor level) to a log file: the run
directory's ``engine.log`` inside ``engine_log(path)``, else a temporary file. The file is shown
(its tail) only when the start fails; a temporary one is removed after a good start. Once the
engine is up, ``quiet_engine_logs`` lowers vLLM's logger to errors and ignores the Python
warnings raised from the engine's libraries.

Known failures: an engine that cannot start raises from deep inside vLLM, torch.distributed or CUDA, and the
traceback names neither the cause nor the fix. The failures below come from the machine, not from
the user's input or from a bug, so each is matched on its message and re-raised as a ``UserError``
(exit 2, no traceback) that says what happened and what to do. Anything unmatched is re-raised
unchanged: an unknown failure keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError

log = logging.getLogger(__name__)

# Libraries whose Python warnings are the engine's, not the user's (hidden unless verbose).
ENGINE_MODULES = r"(vllm|triton|torch|transformers|numba|ray)(\.|$)"
ENGINE_LOG = "engine.log"
TAIL_LINES = 60
_log_paths: list[Path] = []


@dataclass(frozen=True)
class KnownFailure:
    """A substring of the engine's error message, and the paragraph that explains it."""

    marker: str
    explanation: str


KNOWN_FAILURES: tuple[KnownFailure, ...] = (
    KnownFailure(
        "Unable to find interface for",
        "The {backend} engine could not start: its process group (torch.distributed) found no "
        "usable network interface for 127.0.0.1 ({message}). This happens in a network namespace "
        "whose loopback device is down (for example `unshare -n`, or a sandbox without network). "
        "Bring loopback up in that namespace (`ip link set lo up`, e.g. `unshare -rn sh -c 'ip "
        "link set lo up && selectllm ...'`), run outside the isolated namespace, or use "
        "--backend transformers, which needs no process group. No network traffic leaves the "
        "machine either way: the engine only talks to itself over loopback.",
    ),
)


def _messages(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and of the exceptions it was raised from."""
    out, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    return out


def explain(exc: BaseException, backend: str) -> UserError | None:
    """The ``UserError`` for a known start-up failure, or None when ``exc`` is not one."""
    for text in _messages(exc):
        for known in KNOWN_FAILURES:
            if known.marker in text:
                line = next((ln for ln in text.splitlines() if known.marker in ln), known.marker)
                message = line.strip()[-200:].strip("[] ")
                return UserError(known.explanation.format(backend=backend, message=f'"{message}"'))
    return None


@contextlib.contextmanager
def explain_startup_errors(backend: str) -> Iterator[None]:
    """Turn a known engine start-up failure raised inside the block into a ``UserError``."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - matched on the message, else re-raised unchanged
        err = explain(exc, backend)
        if err is None:
            raise
        raise err from exc


def eager(enforce_eager: bool | None, *, cuda: bool) -> bool:
    """``--enforce-eager`` as given, else eager on a CPU and compiled (CUDA graphs) on CUDA.

    On a CPU, vLLM's torch.compile of even a 135M model takes a minute or more (several under
    load) and the compiled steps did not win it back at the quick start's size
    (``benchmarks/bench_startup.py``); on CUDA, graphs are what make decoding fast."""
    if enforce_eager is not None:
        return bool(enforce_eager)
    return not cuda


def verbose() -> bool:
    """Logging at DEBUG (``selectllm -v``): the engine's own output is shown as it comes."""
    return logging.getLogger("selectllm_local").isEnabledFor(logging.DEBUG)


def quiet_engine_logs() -> None:
    """After the start, unless verbose: vLLM's logger at ERROR (an explicit
    ``VLLM_LOGGING_LEVEL`` wins) and its libraries' Python warnings ignored. During the start
    they all go, at vLLM's own level, to the engine log (``captured_output``)."""
    if verbose():
        return
    if "VLLM_LOGGING_LEVEL" not in os.environ:
        logging.getLogger("vllm").setLevel(logging.ERROR)
    for category in (FutureWarning, DeprecationWarning, UserWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category, module=ENGINE_MODULES)


@contextlib.contextmanager
def engine_log(path: Path) -> Iterator[None]:
    """Engines started inside the block write their start-up output to ``path``."""
    _log_paths.append(Path(path))
    try:
        yield
    finally:
        _log_paths.pop()


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _ToEngineLog(logging.Filter):
    """Send log records of other libraries (vLLM, Triton, transformers) to the engine log.

    Our console handler writes to a copy of file descriptor 2 (so the engine-start line stays
    live), so records that an engine's loggers pass up to the root logger would reach the
    terminal whatever fd 2 points at. While an engine starts they go to its log instead; the
    package's own records still show."""

    def __init__(self, out: Any) -> None:
        super().__init__()
        self.out, self.seen = out, -1

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "selectllm_local" or record.name.startswith("selectllm_local."):
            return True
        if id(record) != self.seen:  # one line per record, however many handlers see it
            self.seen = id(record)
            with contextlib.suppress(Exception):
                line = f"{record.levelname} {record.name}: {record.getMessage()}\n"
                self.out.write(line.encode("utf-8", errors="replace"))
                self.out.flush()
        return False


@contextlib.contextmanager
def _foreign_records_to(out: Any) -> Iterator[None]:
    handlers = list(logging.getLogger().handlers)
    keep = _ToEngineLog(out)
    for h in handlers:
        h.addFilter(keep)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(keep)


@contextlib.contextmanager
def captured_output(backend: str) -> Iterator[Path | None]:
    """Send the process's stdout and stderr (file descriptors 1 and 2) to the engine log while
    the engine starts; on failure log the log's tail and where it is. Verbose: nothing captured."""
    if verbose():
        yield None
        return
    temporary = not _log_paths
    if temporary:
        fd, name = tempfile.mkstemp(prefix="selectllm-engine-", suffix=".log")
        os.close(fd)
        path = Path(name)
    else:
        path = _log_paths[-1]
        path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    ok = False
    try:
        with open(path, "ab") as out, _foreign_records_to(out):
            for fd in saved:
                os.dup2(out.fileno(), fd)
            try:
                yield path
                ok = True
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                for fd, orig in saved.items():
                    os.dup2(orig, fd)
    finally:
        for orig in saved.values():
            os.close(orig)
        if not ok:
            log.error(
                "The %s engine failed to start. The last lines of its output (all of it in %s):"
                "\n%s",
                backend,
                path,
                _tail(path),
            )
        elif temporary:
            path.unlink(missing_ok=True)
