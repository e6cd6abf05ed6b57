"""How long a selection took, summed over every run that worked on it.

Why a ledger: a selection lives in a plan directory shared across runs. An LLM selection of an
hour may be resumed after a stop, and a later cell may find it finished and read it back in a
fraction of a second; the time a cell reports must be the selection's own, not that instant.
``selection_seconds.json`` in the plan directory holds, per method, the key of what the selection
depends on, the seconds spent on it so far and whether it finished. A selection whose key
changed starts from zero. While a selection runs, a heartbeat writes its time every
``HEARTBEAT`` seconds, so a run killed outright loses at most that much of it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from selectllm_local.run.store import read_json, write_json

LEDGER = "selection_seconds.json"
HEARTBEAT = 30.0


class SelectionClock:
    """``with SelectionClock(plan_dir, method, key) as c: ...``; then ``c.seconds`` (the total)
    and ``c.was_complete`` (it had finished before: nothing was added)."""

    def __init__(self, plan_dir: Path, method: str, key: str) -> None:
        self.path = Path(plan_dir) / LEDGER
        self.method, self.key = method, key
        entry = self._ledger().get(method)
        if not isinstance(entry, dict) or entry.get("key") != key:
            entry = {"key": key, "seconds": 0.0, "complete": False}
        self.earlier = float(entry["seconds"])
        self.was_complete = bool(entry["complete"])
        self.seconds = self.earlier
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _ledger(self) -> dict[str, Any]:
        try:
            data = read_json(self.path) if self.path.exists() else {}
        except ValueError:  # a torn file cannot happen (atomic writes); a hand-edited one can
            data = {}
        return data if isinstance(data, dict) else {}

    def _write(self, complete: bool) -> None:
        with self._lock:
            if not self.was_complete:
                self.seconds = self.earlier + time.perf_counter() - self._t0
            ledger = self._ledger()
            ledger[self.method] = {
                "key": self.key,
                "seconds": self.seconds,
                "complete": complete or self.was_complete,
            }
            write_json(self.path, ledger)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            self._write(complete=False)

    def __enter__(self) -> SelectionClock:
        self._t0 = time.perf_counter()
        if not self.was_complete:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self._write(complete=exc_type is None)
