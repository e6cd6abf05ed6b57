"""The data an experiment runs on: its pool and test set, loaded from the validated file.

Why apart from the config: the file is settings; reading a 15k-row pool and cleaning it against
the test set is work the runner (and the dry run) does once it starts. What is loaded here is
fixed by the file alone (``sample_seed``), so every cell sees the same rows and a resumed run
the same ones as the first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selectllm_local.errors import UserError
from selectllm_local.experiment.config import ExperimentConfig, ExperimentTable
from selectllm_local.records import PoolItem
from selectllm_local.summaries import InputsSummary

if TYPE_CHECKING:
    from selectllm_local.evaluation.testset import TestExample


@dataclass
class ExperimentInputs:
    """The pool every method selects from and the test rows every cell is scored on."""

    pool_items: list[PoolItem]
    """Usable pool rows (test rows removed, limit or sample applied), re-indexed 0..n-1."""
    all_test_examples: list[TestExample]
    test_rows: list[int]
    """Rows of the test set that are answered (Rouge-L, cosine): indices into the test set."""
    nll_rows: list[int]
    """Rows whose reference NLL is scored (a superset of ``test_rows``; empty: NLL off)."""
    test_overlap: int
    test_removed: dict[str, int]
    """Pool rows removed as test examples, by reason (``splits.TestOverlap``)."""

    @property
    def test_examples(self) -> list[TestExample]:
        return [self.all_test_examples[r] for r in self.test_rows]

    @property
    def test_key(self) -> str:
        """What the answered rows are (part of every cell's key)."""
        from selectllm_local.run.store import stable_hash

        return stable_hash([(t.instruction, t.input, t.reference) for t in self.test_examples])

    @property
    def summary(self) -> InputsSummary:
        """What ``experiment.json`` records of the data (its ``data`` block)."""
        return InputsSummary(
            pool_rows=len(self.pool_items),
            test_rows=len(self.test_rows),
            nll_test_rows=len(self.nll_rows),
            test_overlap=self.test_overlap,
            test_removed=dict(self.test_removed),
        )


def load_inputs(cfg: ExperimentConfig) -> ExperimentInputs:
    """Load and clean the pool, pick the test rows; check the budgets against the pool."""
    from selectllm_local.data import pool as data
    from selectllm_local.data.splits import TestOverlap
    from selectllm_local.evaluation.testset import load_testset

    exp, path = cfg.experiment, cfg.path
    all_tests = load_testset(cfg.test_set)
    # against the whole test set, not only the rows scored; before de-duplication
    leak = TestOverlap(all_tests if exp.exclude_test_from_pool else [])
    items, _stats = data.load_pool(cfg.pool, exclude=leak if exp.exclude_test_from_pool else None)
    if exp.exclude_test_from_pool:
        leak.report(str(cfg.pool))
    if exp.pool_limit is not None:
        items = items[: exp.pool_limit]
    if exp.pool_sample is not None:
        items = sample(items, exp.pool_sample, exp.sample_seed)
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items)]
    missing = [it for it in items if not (it.output and it.output.strip())]
    if missing:
        raise UserError(
            f"{path}: [experiment] pool = {cfg.pool}: {len(missing)} of {len(items)} rows have no "
            f"response (first: source row {missing[0].source_row}). Every method fine-tunes on the "
            "responses of its picks, so the pool must be annotated."
        )
    bad = [b for b in cfg.budgets if not 1 <= b <= len(items)]
    if bad:
        raise UserError(
            f"{path}: [experiment] budgets {bad} outside 1..{len(items)}: the pool has {len(items)} "
            f"usable rows{' after pool_limit' if exp.pool_limit else ''}"
            f"{f' ({leak.total} test rows removed)' if leak.total else ''}."
        )
    test_rows, nll_rows = _test_rows(cfg, len(all_tests))
    return ExperimentInputs(
        pool_items=items,
        all_test_examples=all_tests,
        test_rows=test_rows,
        nll_rows=nll_rows,
        test_overlap=leak.total,
        test_removed=dict(leak.removed),
    )


def _test_rows(cfg: ExperimentConfig, n: int) -> tuple[list[int], list[int]]:
    """(answered rows, NLL rows) as indices into the test set.

    Answered: the first ``[evaluate] limit`` rows, or ``test_sample`` of them. NLL: those rows
    plus, up to ``nll_sample`` rows in all, a seeded draw of the rest of the first
    ``[evaluate] nll_limit`` rows (default: of the same rows as the answers); without
    ``nll_sample`` all of them when ``nll_limit`` is given, else the answered rows alone;
    ``nll_limit = 0`` turns the NLL off. Adding NLL rows never changes the answered rows.
    """
    exp: ExperimentTable = cfg.experiment
    evaluate, path = cfg.evaluate, cfg.path
    answerable = list(range(min(n, evaluate.limit or n)))
    rows = (
        answerable
        if exp.test_sample is None
        else sample(answerable, exp.test_sample, exp.sample_seed)
    )
    if evaluate.nll_limit == 0:
        if exp.nll_sample is not None:
            raise UserError(
                f"{path}: [experiment] nll_sample needs the NLL on ([evaluate] nll_limit = 0 turns it off)."
            )
        return rows, []
    pool = answerable if evaluate.nll_limit is None else list(range(min(n, evaluate.nll_limit)))
    taken = set(rows)
    rest = [r for r in pool if r not in taken]
    if exp.nll_sample is None:
        extra = rest if evaluate.nll_limit is not None else []
    elif exp.nll_sample < len(rows):
        raise UserError(
            f"{path}: [experiment] nll_sample = {exp.nll_sample} is less than the {len(rows)} rows "
            "answered (test_sample): the Rouge-L/cosine rows must be a subset of the NLL rows."
        )
    else:
        extra = sample(rest, exp.nll_sample - len(rows), exp.sample_seed + 1)
    return rows, sorted(taken | set(extra))


def sample(rows: list[Any], n: int, seed: int) -> list[Any]:
    """``n`` rows drawn without replacement by ``seed``, in their original order (all if fewer)."""
    import numpy as np

    if n >= len(rows):
        return list(rows)
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return [rows[int(i)] for i in keep]
