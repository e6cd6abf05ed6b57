"""Python's cycle collector paused while the selection does its own CPU work.

Preparing a round (tokenizing and cutting every candidate, building every prompt) allocates tens
of thousands of small lists and tuples that hold no reference cycles, so reference counting frees
all of them. Each allocation still counts towards the cycle collector's thresholds, and the
collections it triggers walk the young objects, then now and then the whole heap (torch,
transformers, the engine: millions of objects in a real run). On the overhead benchmark
(``benchmarks/ab_gcpause.py``: one process, cold selects of 96 prompts, paused and not
alternating, 20 pairs), those full passes made about one select in five nearly twice as slow.
Over two runs, pausing cut the total CPU time of the selects by 8.5% and 18% in generate mode and
by 13% and 15% in logprobs mode; the median select showed a difference in one of the four
comparisons (generate, 0.33 ms per prompt, 95% CI 0.16-0.62). The engine's own calls run with the
collector on: they may build cycles, and they run for as long as the model takes.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cycle collector off for the ``with`` block, then as it was (nesting is harmless: an
    inner block finds it off and leaves it so)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
