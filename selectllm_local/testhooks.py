"""Deterministic stop points for tests that kill or interrupt a run (environment variables).

A test of "killed midway, then resumed" must kill the run while work certainly remains, whatever
the machine's speed; waiting for the first output and racing the rest is not that. These hooks
make a run hold still after a given amount of finished work until a signal ends it:

* ``SELECTLLM_HOLD_AFTER_SUBSETS=N``: ``select`` waits after writing its N-th response row in
  this process (any backend);
* ``SELECTLLM_HOLD_AFTER_CELLS=N``: ``experiment`` waits after its N-th finished cell.

Unset (the default) they cost one dictionary lookup per run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def hold_after(name: str) -> Callable[[], None]:
    """A counter for ``SELECTLLM_HOLD_AFTER_<NAME>``: call it once per finished unit of work; at
    the N-th call it blocks until a signal (SIGINT raises KeyboardInterrupt, SIGKILL ends it)."""
    var = f"SELECTLLM_HOLD_AFTER_{name.upper()}"
    limit = int(os.environ.get(var) or 0)
    if limit <= 0:
        return lambda: None
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if done >= limit:
            log.warning("%s=%d: holding until a signal ends the run", var, limit)
            while True:
                time.sleep(3600)

    return tick
