"""The paper's comparison as one resumable command: methods x budgets x seeds, each cell
selection -> fine-tune -> evaluate, then a results table and a plot.

Why cells: a GPU-day experiment must survive a crash. Each cell writes its stages into its own
folder and ``done.json`` last, atomically; a re-run skips finished cells and, inside an unfinished
one, finished stages (the selection, the adapter). A cell whose configuration changed (its key) is
redone from scratch. Everything a cell depends on is validated before the first heavy step, so a
typo in the config fails in a second, not after an hour of fine-tuning. This module is the loop
over the cells and their resume (which cells are finished, which start afresh); one cell's stages
are in ``stages.py``.

Seeds: by default a cell selects with its own seed, so every stochastic selection (random
draws, the k-means plan, display and permutation order) is redrawn per seed and "± std" covers
selection and training noise; ``selection_seed`` overrides it (one selection for all seeds).
A plan directory is named by the seed it was made with, so a cached plan serves only that seed.

Fairness: ``select`` and the baselines that need the plan (``cluster-random``) or the embeddings
(``kcenter``) share one plan directory per (budget, seed), so they see the same pool, embeddings,
clusters and subsets; every method trains the same base model with the same recipe and seed.

Run directory::

    experiment.json               resolved config + environment
    models/                       tiny random models (``tiny:<shape>``), built once
    data/pool.jsonl               the pool used (limit applied, test rows removed)
    plans/b<budget>-s<seed>/      plan_run / select_run / baseline_run directories
    plans/b<budget>-s<seed>-select-<mode>/  the same plan, selected by a select:<mode> method
    plans/<plan dir>/selection_seconds.json  each selection's own seconds, summed over resumes
    data/test_rows.json           the test rows answered and the rows NLL-scored
    scores/ifd_scores.jsonl       IFD of the pool rows ([engine] model; seed-free, scored once)
    cells/<method>/b<budget>-s<seed>/{selection.json, finetune/, eval/, done.json}
        eval/: predictions.jsonl, reference_nll.jsonl, scores.json (``evaluate.evaluate_run``)
    results.csv, summary.csv, results.md, results.png
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectllm_local.experiment.cells import Cell
from selectllm_local.experiment.config import ExperimentConfig, load_experiment_config
from selectllm_local.experiment.inputs import ExperimentInputs, load_inputs
from selectllm_local.experiment.keys import _cell_key, _finished, _nll_key
from selectllm_local.experiment.stages import local_model, run_cell
from selectllm_local.run.store import (
    marker_matches,
    read_json,
    read_marker,
    stable_hash,
    write_json,
    write_jsonl,
    write_marker,
)
from selectllm_local.testhooks import hold_after

log = logging.getLogger(__name__)


@dataclass
class ExperimentOutcome:
    run_dir: Path
    cells_total: int
    cells_run: list[str] = field(default_factory=list)
    cells_skipped: list[str] = field(default_factory=list)
    cells_pending: list[str] = field(default_factory=list)
    table_md: Path | None = None
    results_csv: Path | None = None
    summary_csv: Path | None = None
    plot: Path | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """What ``--json`` prints: the cells and where the results are."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def run_experiment(
    config_path: Path | str,
    *,
    run_dir: Path | str | None = None,
    max_cells: int | None = None,
    progress: bool = True,
) -> ExperimentOutcome:
    """Run (or resume) the experiment described by ``config_path``.

    ``max_cells`` stops after that many cells have been *run* in this call (finished cells that
    are skipped do not count), which is how a long experiment can be run in slices.
    """
    from selectllm_local.run.lock import run_lock

    cfg = load_experiment_config(Path(config_path), run_dir=run_dir)  # validates the file
    data = load_inputs(cfg)  # the pool and test set (budgets checked), before anything is written
    with run_lock(cfg.run_dir):  # two experiments on one folder would redo each other's cells
        return _run_experiment(cfg, data, max_cells=max_cells, progress=progress)


def _run_experiment(
    cfg: ExperimentConfig, data: ExperimentInputs, *, max_cells: int | None, progress: bool
) -> ExperimentOutcome:
    t0 = time.perf_counter()
    root = cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    from selectllm_local.progress import track
    from selectllm_local.run.rundir import environment

    info = {"config": cfg.to_dict(), "data": data.summary.to_dict(), "environment": environment()}
    write_json(root / "experiment.json", info)
    pool_path = _write_pool(cfg, data)
    _write_test_rows(cfg, data)
    base_model = local_model(cfg.base_model, root, role="base")
    cells = [Cell(m, b, s) for m in cfg.methods for b in cfg.budgets for s in cfg.seeds_of(m)]
    outcome = ExperimentOutcome(run_dir=root, cells_total=len(cells))
    hold = hold_after("cells")
    shown = track(cells, "experiment cells", enabled=progress, note=lambda c: c.name)  # i of n
    nll_key = _nll_key(cfg, data)
    from selectllm_local.training.worker import shared_process

    with shared_process():  # one fine-tuning process for every cell (started at the first)
        for i, cell in enumerate(shown, 1):
            cell_dir = root / "cells" / cell.name
            key = _cell_key(cfg, data, cell, pool_path)
            done = read_marker(cell_dir / "done.json")
            if done is not None and _finished(done, key, nll_key):
                outcome.cells_skipped.append(cell.name)
                continue
            if max_cells is not None and len(outcome.cells_run) >= max_cells:
                outcome.cells_pending.append(cell.name)
                continue
            log.info("cell %d/%d: %s", i, len(cells), cell.name)
            _prepare_cell_dir(cell_dir, key)
            run_cell(cfg, data, cell, cell_dir, key, pool_path, base_model, progress=progress)
            outcome.cells_run.append(cell.name)
            hold()  # a test's stop point (testhooks); a no-op otherwise
    from selectllm_local.experiment.results import write_results

    paths = write_results(
        root,
        cfg.methods,
        cfg.budgets,
        sorted({c.seed for c in cells}),
        cells=[c.name for c in cells],
        selection_seed=cfg.selection_seed,
        finished={*outcome.cells_skipped, *outcome.cells_run},
    )
    outcome.table_md, outcome.results_csv, outcome.summary_csv, outcome.plot = paths
    outcome.seconds = time.perf_counter() - t0
    return outcome


# -- set-up ------------------------------------------------------------------------------------


def _write_pool(cfg: ExperimentConfig, data: ExperimentInputs) -> Path:
    """The pool every method selects from, as original records (limit applied, test rows out)."""
    path = cfg.run_dir / "data" / "pool.jsonl"
    rows = [it.raw for it in data.pool_items]
    key = stable_hash([it.uid for it in data.pool_items])
    marker = cfg.run_dir / "data" / "pool.key.json"
    removed = {"total": data.test_overlap, **data.test_removed}
    log.info(
        "experiment pool: %d rows; test rows removed: %s",
        len(rows), ", ".join(f"{k} {v}" for k, v in removed.items()),
    )  # fmt: skip
    info = {"rows": len(rows), "test_rows_removed": removed}
    if not (path.exists() and marker_matches(marker, key, **info)):
        write_jsonl(path, rows)
        write_marker(marker, key, **info)
    return path


def _write_test_rows(cfg: ExperimentConfig, data: ExperimentInputs) -> None:
    """Which rows of the test set are answered and which NLL-scored (for the reader: every
    ``predictions.jsonl`` and ``reference_nll.jsonl`` line names its row too)."""
    path = cfg.run_dir / "data" / "test_rows.json"
    rows = {"test_set": str(cfg.test_set), "rows": data.test_rows, "nll_rows": data.nll_rows}
    if not (path.exists() and read_json(path) == rows):
        write_json(path, rows)


def _prepare_cell_dir(cell_dir: Path, key: str) -> None:
    """Keep a cell's finished stages only if they were made with the same key."""
    marker = cell_dir / "cell.json"
    if cell_dir.exists() and not marker_matches(marker, key):
        log.info("configuration of %s changed: starting it afresh", cell_dir)
        shutil.rmtree(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_marker(marker, key)
