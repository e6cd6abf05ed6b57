"""One process per run directory: ``run_lock`` (an exclusive ``flock`` on ``<run dir>/.lock``).

Apart from ``store`` (the files of a run) because it guards the folder rather than writing it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError

LOCK_FILE = ".lock"
_held: dict[
    Path, tuple[Any, int]
] = {}  # run dir -> (open lock file, depth): re-entrant per process


def _holder_info() -> dict[str, Any]:
    import socket
    import sys
    import time

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv) or sys.executable,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _read_holder(fh: Any) -> dict[str, Any]:
    try:
        fh.seek(0)
        info = json.loads(fh.read() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(root: Path | str) -> Iterator[None]:
    """Hold ``root/.lock`` (an exclusive ``flock``) while a run writes into ``root``.

    Two runs on one folder would interleave ``responses.jsonl`` and race on the manifest, so a
    second process fails at once (UserError, exit 2) naming the holder's pid, host and command,
    which the holder writes into the lock file. The kernel drops a ``flock`` when its process
    dies, however it dies, so a lock left by a killed run is simply taken over (and logged). The
    lock is re-entrant within one process (``select`` runs ``plan`` on the same folder). On a file
    system without ``flock`` support the run goes on unlocked, with a warning.
    """
    import errno
    import fcntl
    import logging

    log = logging.getLogger(__name__)
    path = Path(root).resolve()
    if path in _held:
        fh, depth = _held[path]
        _held[path] = (fh, depth + 1)
        try:
            yield
        finally:
            fh, depth = _held[path]
            _held[path] = (fh, depth - 1)
        return
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            log.warning("cannot lock %s (%s): running without a lock", path, exc)
            fh.close()
            yield
            return
        info = _read_holder(fh)
        fh.close()
        who = (
            f"process {info.get('pid', '?')} on host {info.get('host', '?')} (command: "
            f"{info.get('command', '?')}; started {info.get('started', '?')})"
        )
        raise UserError(
            f"The run directory {path} is in use by {who}. Two runs on one folder would mix their "
            "answers: wait for that run to finish (or stop it), or give this one another "
            "--run-dir. A lock left by a process that has died is taken over automatically."
        ) from None
    old = _read_holder(fh)
    if old.get("pid") and (old.get("pid"), old.get("host")) != (
        os.getpid(),
        _holder_info()["host"],
    ):
        log.info(
            "taking over the lock of %s left by process %s on %s (no longer running)",
            path,
            old.get("pid"),
            old.get("host"),
        )
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(_holder_info()) + "\n")
    fh.flush()
    _held[path] = (fh, 1)
    try:
        yield
    finally:
        del _held[path]
        fh.seek(0)
        fh.truncate()  # released cleanly: no holder to report
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
