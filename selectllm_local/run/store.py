"""The run directory: atomic files, append-only logs and a manifest of finished stages.

Every file that represents finished work is written atomically (temp file + ``os.replace``) or
appended line by line with a flush and fsync, so a run killed at any instant loses at most the work
in flight. ``manifest.json`` records, per stage, the hash of the inputs and configuration it was
computed from; a re-run skips a stage whose hash still matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.errors import UserError

MANIFEST = "manifest.json"


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:20]


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:20]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", "utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by us; a torn last line (killed mid-write) is ignored."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn write at the end: the work it described was not finished
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


class AppendLog:
    """Append-only JSONL log; each line is flushed and fsynced before ``append`` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _repair_tail(self) -> None:
        """Drop a torn last line left by a kill so new lines start on a fresh line."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)

    def append(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunStore:
    """Paths and manifest bookkeeping for one run directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    # -- manifest -----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        p = self.path(MANIFEST)
        if not p.exists():
            return {"stages": {}}
        return read_json(p)

    def stage_done(self, stage: str, key: str) -> bool:
        """True if ``stage`` finished earlier with the same input/config hash ``key``."""
        entry = self.manifest()["stages"].get(stage)
        return bool(entry) and entry.get("key") == key and entry.get("done", False)

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.manifest()["stages"].get(stage, {})

    def mark_done(self, stage: str, key: str, **info: Any) -> None:
        m = self.manifest()
        m["stages"][stage] = {"key": key, "done": True, **info}
        write_json(self.path(MANIFEST), m)

    def invalidate(self, *stages: str) -> None:
        m = self.manifest()
        for s in stages:
            m["stages"].pop(s, None)
        write_json(self.path(MANIFEST), m)


# -- one process per run directory ------------------------------------------------------------

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
