"""Hold out a test set before selecting, so evaluation uses data the selector never saw.

The test rows are drawn (seeded) only from rows that have a response, since a test example without
a reference cannot be scored; every other row stays in the pool. Both files keep the original
records unchanged, so they load with the same schema detection as the source.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem

log = logging.getLogger(__name__)


def split_pool(
    items: Sequence[PoolItem], *, test_size: int, seed: int
) -> tuple[list[PoolItem], list[PoolItem]]:
    """Split into (pool, test): ``test_size`` seeded random rows with a response, the rest pool.

    Both lists keep the source order. Refuses a test set that would leave the pool empty.
    """
    n = len(items)
    if test_size < 1:
        raise UserError(f"--test must be at least 1 (got {test_size}).")
    if test_size >= n:
        raise UserError(
            f"--test {test_size} must be smaller than the pool ({n} usable rows): "
            "the rest of the rows is the selection pool."
        )
    labelled = np.array([i for i, it in enumerate(items) if it.output and it.output.strip()])
    if len(labelled) < test_size:
        raise UserError(
            f"--test {test_size}: only {len(labelled)} of {n} rows have a response, and test rows need "
            "one as the reference. Choose a smaller --test, or name the response column with "
            "--output-field."
        )
    rng = np.random.default_rng(seed)
    test_idx = set(rng.choice(labelled, size=test_size, replace=False).tolist())
    pool = [it for i, it in enumerate(items) if i not in test_idx]
    test = [it for i, it in enumerate(items) if i in test_idx]
    return pool, test


@dataclass
class SplitOutcome:
    pool_path: Path
    test_path: Path
    pool_rows: int
    test_rows: int
    source_rows: int
    seed: int

    def summary(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def split_run(
    pool: Path,
    *,
    test_size: int,
    out_dir: Path,
    seed: int = 0,
    fields: Any = None,
    skip_bad_rows: bool = False,
) -> SplitOutcome:
    """Load ``pool``, split it, write ``out_dir/pool.jsonl`` and ``out_dir/test.jsonl`` (original
    records, atomically) and ``out_dir/split.json`` (what was done, for provenance)."""
    from selectllm_local import data
    from selectllm_local.runstore import write_json, write_jsonl

    if not Path(pool).exists():
        raise UserError(f"Pool file {pool} does not exist. Check the path (POOL argument).")
    items, stats = data.load_pool(Path(pool), fields=fields, skip_bad_rows=skip_bad_rows)
    pool_items, test_items = split_pool(items, test_size=test_size, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "pool.jsonl", (it.raw for it in pool_items))
    write_jsonl(out / "test.jsonl", (it.raw for it in test_items))
    outcome = SplitOutcome(
        pool_path=out / "pool.jsonl",
        test_path=out / "test.jsonl",
        pool_rows=len(pool_items),
        test_rows=len(test_items),
        source_rows=len(items),
        seed=seed,
    )
    write_json(
        out / "split.json",
        {
            **outcome.summary(),
            "source": str(pool),
            "schema": stats.schema,
            "duplicates_dropped": stats.duplicates,
            "empty_dropped": stats.empty,
        },
    )
    log.info("split %d rows: %d pool, %d test", len(items), len(pool_items), len(test_items))
    return outcome


# -- keeping a shipped test set out of the pool -----------------------------------------------

_CITATION = re.compile(r"\[\d+\]")


def normalise_text(text: str) -> str:
    """Text as compared for test-set overlap: no ``[315]`` markers, one space, case-folded.

    The paper's Dolly test split was made from Dolly 15k with citation markers removed and a few
    contexts dropped or edited, so an exact (instruction, input) match misses 167 of its 1,000
    examples; instruction + normalised response finds them.
    """
    return " ".join(_CITATION.sub("", text).split()).casefold()


def overlap_key(instruction: str, response: str) -> tuple[str, str]:
    return normalise_text(instruction), normalise_text(response)


def remove_test_rows(
    items: Sequence[PoolItem], tests: Sequence[Any], *, source: str = "the pool"
) -> tuple[list[PoolItem], int]:
    """Drop pool rows whose instruction and normalised response equal a test example's.

    ``tests`` are ``evaluate.TestExample``s (``instruction``, ``reference``). Returns the kept rows
    and how many were removed; warns when fewer rows were removed than there are test examples,
    since then some test examples may sit in the pool in a form this match does not catch (or
    the test set was not drawn from this pool at all).
    """
    keys = {overlap_key(t.instruction, t.reference) for t in tests}
    kept = [it for it in items if overlap_key(it.instruction, it.output or "") not in keys]
    removed = len(items) - len(kept)
    if removed < len(tests):
        log.warning(
            "only %d rows of %s match one of the %d test examples (instruction + response, "
            "citation markers and case ignored): the other test examples are either not in the "
            "pool or differ from their pool row in more than that; check the test set's source",
            removed,
            source,
            len(tests),
        )
    return kept, removed
