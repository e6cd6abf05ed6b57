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
    items: Sequence[PoolItem],
    *,
    test_size: int,
    seed: int,
    removed: dict[str, int] | None = None,
) -> tuple[list[PoolItem], list[PoolItem]]:
    """Split into (pool, test): ``test_size`` seeded random rows with a response, the rest pool,
    less the rows that hold a test prompt in another spelling (case, spacing, citation markers:
    :class:`TestOverlap`); ``removed`` receives their counts by reason.

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
    test = [it for i, it in enumerate(items) if i in test_idx]
    overlap = TestOverlap([_AsTest(it) for it in test])
    pool = [
        it
        for i, it in enumerate(items)
        if i not in test_idx and overlap(it.instruction, it.input, it.output) is None
    ]
    if overlap.total:
        log.info("split: %d pool rows dropped as test prompts (%s)", overlap.total, overlap.removed)
    if removed is not None:
        removed.update(overlap.removed)
    return pool, test


@dataclass(frozen=True)
class _AsTest:
    """A drawn pool row seen as a test example (the fields ``TestOverlap`` reads)."""

    item: PoolItem

    @property
    def instruction(self) -> str:
        return self.item.instruction

    @property
    def input(self) -> str:
        return self.item.input

    @property
    def reference(self) -> str:
        return self.item.output or ""


@dataclass
class SplitOutcome:
    pool_path: Path
    test_path: Path
    pool_rows: int
    test_rows: int
    source_rows: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """``split.json`` and ``split --json``."""
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
    from selectllm_local.data import pool as data
    from selectllm_local.run.store import write_json, write_jsonl

    if not Path(pool).exists():
        raise UserError(f"Pool file {pool} does not exist. Check the path (POOL argument).")
    items, stats = data.load_pool(Path(pool), fields=fields, skip_bad_rows=skip_bad_rows)
    removed: dict[str, int] = {}
    pool_items, test_items = split_pool(items, test_size=test_size, seed=seed, removed=removed)
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
            **outcome.to_dict(),
            "source": str(pool),
            "schema": stats.schema,
            "duplicates_dropped": stats.duplicates,
            "empty_dropped": stats.empty,
            "test_prompts_dropped_from_pool": removed,
        },
    )
    log.info("split %d rows: %d pool, %d test", len(items), len(pool_items), len(test_items))
    return outcome


# -- keeping a shipped test set out of the pool -----------------------------------------------

# Wikipedia's bracketed notes, as Dolly's contexts and responses carry them: numbered citations
# ``[12]``, lettered footnotes ``[b]``, ``[note 3]`` / ``[nb 1]`` / ``[n. 2]``, and maintenance
# tags such as ``[citation needed]``, ``[when?]`` or ``[edit]``.
_CITATION = re.compile(
    r"\[\s*(?:\d+|[a-z]|(?:note|nb|n\.?)\s*(?:\d+|[a-z])|[a-z][a-z \u2013-]*"
    r"(?:needed|verification|discuss|not found)|when\?|edit)\s*\]",
    re.IGNORECASE,
)

SAME_PAIR = "same_pair"
SAME_PROMPT = "same_prompt"
SAME_INPUT_ANSWER = "same_input_answer"
REASONS = {  # reason -> how the run's summary words it
    SAME_PAIR: "same instruction + response",
    SAME_PROMPT: "same instruction + input",
    SAME_INPUT_ANSWER: "same input + response",
}


def normalise_text(text: str) -> str:
    """Text as compared for test-set overlap: no citation markers, one space, case-folded.

    The paper's Dolly test split was made from Dolly 15k with citation markers removed and a few
    contexts dropped or edited, so an exact (instruction, input) match misses some of its 1,000
    examples; this form finds every one. The tests use this same function.
    """
    return " ".join(_CITATION.sub("", text).split()).casefold()


def pair_key(instruction: str, response: str) -> tuple[str, str]:
    """Instruction and response, normalised: the same example even if its input was edited."""
    return normalise_text(instruction), normalise_text(response)


def prompt_key(instruction: str, input_text: str) -> tuple[str, str]:
    """Instruction and input, normalised: what the selector and the fine-tuned model see."""
    return normalise_text(instruction), normalise_text(input_text)


class TestOverlap:
    """Which pool rows a test set forbids, and why, counted as rows go by.

    A row goes if its instruction and response equal a test example's (``same_pair``: the test
    example itself, perhaps with an edited input); or else if its instruction and input equal a
    test example's prompt whatever its answer (``same_prompt``: a second copy of the prompt with
    another answer, which the selector would see and the fine-tune would train on); or else if
    its non-empty input and its response equal a test example's (``same_input_answer``: the same
    passage and answer under a reworded instruction). Apply it before de-duplication
    (``data.load_pool(..., exclude=...)``): a source that holds a prompt twice may have lent its
    second copy to the test set.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, tests: Sequence[Any]) -> None:
        """``tests``: ``evaluation.testset.TestExample``s (``instruction``, ``input``, ``reference``)."""
        self.n_tests = len(tests)
        self._pairs: dict[tuple[str, str], list[int]] = {}
        self._prompts: dict[tuple[str, str], list[int]] = {}
        self._passages: dict[tuple[str, str], list[int]] = {}
        for i, t in enumerate(tests):
            self._pairs.setdefault(pair_key(t.instruction, t.reference), []).append(i)
            self._prompts.setdefault(prompt_key(t.instruction, t.input), []).append(i)
            passage = normalise_text(t.input)
            if passage:
                self._passages.setdefault((passage, normalise_text(t.reference)), []).append(i)
        self.removed = {SAME_PAIR: 0, SAME_PROMPT: 0, SAME_INPUT_ANSWER: 0}
        self._found: set[int] = set()

    def __call__(self, instruction: str, input_text: str, output: str | None) -> str | None:
        """The reason this row must leave the pool (and count it), or None if it may stay."""
        answer = normalise_text(output or "")
        hit, reason = self._pairs.get((normalise_text(instruction), answer)), SAME_PAIR
        if hit is None:
            hit, reason = self._prompts.get(prompt_key(instruction, input_text)), SAME_PROMPT
        if hit is None and input_text.strip():
            passage = (normalise_text(input_text), answer)
            hit, reason = self._passages.get(passage), SAME_INPUT_ANSWER
        if hit is None:
            return None
        self._found.update(hit)
        self.removed[reason] += 1
        return reason

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    @property
    def tests_found(self) -> int:
        """How many test examples matched at least one pool row."""
        return len(self._found)

    def report(self, source: str = "the pool") -> None:
        """Log the counts; warn when most of the test set was found in the pool but not all of
        it: a test set drawn from this pool whose missing examples may sit in it in a form no
        rule catches. A pool that holds none or a minority of the test examples (another source,
        a sample of the source) is normal and only logged."""
        log.info(
            "removed %d rows of %s that hold a test example (%d same instruction + response, "
            "%d same instruction + input with another answer, %d same input + response under "
            "another instruction); %d of %d test examples found",
            self.total, source, self.removed[SAME_PAIR], self.removed[SAME_PROMPT],
            self.removed[SAME_INPUT_ANSWER], self.tests_found, self.n_tests,
        )  # fmt: skip
        if self.n_tests / 2 <= self.tests_found < self.n_tests:
            log.warning(
                "%d of the %d test examples match no row of %s (instruction + response, "
                "instruction + input or input + response; citation markers, spacing and case "
                "ignored), while the others do: those may sit in the pool in an edited form; "
                "check the test set's source",
                self.n_tests - self.tests_found,
                self.n_tests,
                source,
            )


def remove_test_rows(
    items: Sequence[PoolItem], tests: Sequence[Any], *, source: str = "the pool"
) -> tuple[list[PoolItem], TestOverlap]:
    """Drop already-loaded pool rows that a test set forbids (see :class:`TestOverlap`).

    Prefer ``data.load_pool(path, exclude=TestOverlap(tests))``, which removes them before
    de-duplication; this serves pools that are already in memory.
    """
    overlap = TestOverlap(tests)
    kept = [it for it in items if overlap(it.instruction, it.input, it.output) is None]
    overlap.report(source)
    return kept, overlap
