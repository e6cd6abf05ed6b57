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
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

MANIFEST = "manifest.json"
T = TypeVar("T")


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


# -- completion markers ----------------------------------------------------------------------
#
# One format for every "this work is finished" file: a JSON object whose ``key`` is the hash of
# what the work was computed from, plus whatever facts it records. The manifest's stage entries,
# an experiment's ``data/pool.key.json``, a cell's ``cell.json`` and ``done.json`` all have this
# shape (``done.json`` adds ``nll_key``), so one reader serves them all, old runs included.


def write_marker(path: Path, key: str, **info: Any) -> None:
    """Record that the work at ``path``'s folder is finished for inputs hashed to ``key``."""
    write_json(path, {"key": key, **info})


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker at ``path``, or None when there is none (or it is not a marker)."""
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return None  # a marker is written atomically; anything else is not ours
    return doc if isinstance(doc, dict) and "key" in doc else None


def marker_matches(path: Path, key: str, **info: Any) -> bool:
    """True if ``path`` marks work finished for ``key`` (and with these ``info`` values)."""
    doc = read_marker(path)
    return doc is not None and doc["key"] == key and all(doc.get(k) == v for k, v in info.items())


# -- build in a temporary folder, then rename -----------------------------------------------


def build_once(
    out: Path,
    build: Callable[[Path], None],
    *,
    done: Callable[[Path], bool] | None = None,
) -> Path:
    """Build the folder ``out`` by ``build(tmp)`` in a sibling temporary folder, then rename it.

    ``done(out)`` says whether a finished ``out`` is already there (then nothing is built); by
    default an existing ``out`` counts as finished, and ``done=lambda _: False`` rebuilds every
    time. A killed build leaves only a hidden ``.<name>.*.tmp`` folder behind, never a half
    ``out``; a leftover ``out`` that is not ``done`` is replaced. When two processes build the
    same ``out`` at once, the rename that loses is ignored if the winner's ``out`` is ``done``.
    """
    is_done = done if done is not None else Path.exists
    if is_done(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
    try:
        build(tmp)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out, ignore_errors=True)
        elif out.exists():
            out.unlink()
        try:
            os.replace(tmp, out)
        except OSError:
            if not is_done(out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# -- timing ------------------------------------------------------------------------------------


@dataclass
class Timer:
    """Wall and CPU seconds of one ``timed`` block (filled in when the block ends)."""

    wall: float = 0.0
    cpu: float = 0.0


@contextlib.contextmanager
def timed(
    name: str | None = None,
    into: dict[str, float] | None = None,
    *,
    cpu_into: dict[str, float] | None = None,
) -> Iterator[Timer]:
    """Time a block: ``into[name]`` gets its wall seconds, ``cpu_into[name]`` its CPU seconds
    (this process's user + system time). The yielded ``Timer`` holds both once the block ends,
    also when it raised."""
    timer = Timer()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield timer
    finally:
        timer.wall = time.perf_counter() - wall
        timer.cpu = time.process_time() - cpu
        if name is not None and into is not None:
            into[name] = timer.wall
        if name is not None and cpu_into is not None:
            cpu_into[name] = timer.cpu


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

    def cached(
        self,
        stage: str,
        key: str,
        *,
        outputs: Sequence[str],
        load: Callable[[dict[str, Any]], T],
        compute: Callable[[], T],
        save: Callable[[T], dict[str, Any] | None],
    ) -> tuple[T, bool]:
        """A cached stage: ``load`` its saved result if it finished with ``key``, else
        ``compute`` it, ``save`` it and mark the stage done. Returns (result, reused).

        ``outputs`` are the stage's files (relative to the run directory); all must exist for
        the saved result to count. ``load`` receives the stage's manifest entry; what ``save``
        returns is recorded in that entry, beside the key.
        """
        if self.stage_done(stage, key) and all(self.path(f).exists() for f in outputs):
            return load(self.stage_info(stage)), True
        value = compute()
        info = save(value) or {}
        self.mark_done(stage, key, **info)
        return value, False

    def invalidate(self, *stages: str) -> None:
        m = self.manifest()
        for s in stages:
            m["stages"].pop(s, None)
        write_json(self.path(MANIFEST), m)
