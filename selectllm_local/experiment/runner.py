"""The paper's comparison as one resumable command: methods x budgets x seeds, each cell
selection -> fine-tune -> evaluate, then a results table and a plot.

Why cells: a GPU-day experiment must survive a crash. Each cell writes its stages into its own
folder and ``done.json`` last, atomically; a re-run skips finished cells and, inside an unfinished
one, finished stages (the selection, the adapter). A cell whose configuration changed (its key) is
redone from scratch. Everything a cell depends on is validated before the first heavy step, so a
typo in the config fails in a second, not after an hour of fine-tuning.

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

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.experiment.cells import Cell, plan_dir_of
from selectllm_local.experiment.config import (
    ENGINE_METHODS,
    ExperimentConfig,
    load_experiment_config,
)
from selectllm_local.experiment.inputs import ExperimentInputs, load_inputs
from selectllm_local.experiment.keys import (
    _cell_key,
    _finished,
    _nll_key,
    _selection_key,
    selection_seed,
)
from selectllm_local.run.store import (
    build_once,
    marker_matches,
    read_json,
    read_jsonl,
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

    info = {"config": cfg.to_dict(), "data": data.summary(), "environment": environment()}
    write_json(root / "experiment.json", info)
    pool_path = _write_pool(cfg, data)
    _write_test_rows(cfg, data)
    base_model = _resolve_model(cfg.base_model, root, role="base")
    cells = [Cell(m, b, s) for m in cfg.methods for b in cfg.budgets for s in cfg.seeds_of(m)]
    outcome = ExperimentOutcome(run_dir=root, cells_total=len(cells))
    hold = hold_after("cells")
    shown = track(cells, "experiment cells", enabled=progress, note=lambda c: c.name)  # i of n
    keys: dict[str, str] = {}
    for i, cell in enumerate(shown, 1):
        cell_dir = root / "cells" / cell.name
        key = keys[cell.name] = _cell_key(cfg, data, cell, pool_path)
        done = read_marker(cell_dir / "done.json")
        if done is not None and _finished(done, key, _nll_key(cfg, data)):
            outcome.cells_skipped.append(cell.name)
            continue
        if max_cells is not None and len(outcome.cells_run) >= max_cells:
            outcome.cells_pending.append(cell.name)
            continue
        log.info("cell %d/%d: %s", i, len(cells), cell.name)
        _prepare_cell_dir(cell_dir, key)
        _run_cell(cfg, data, cell, cell_dir, key, pool_path, base_model, progress=progress)
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
        keys=keys,
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


def _resolve_model(spec: str, root: Path, *, role: str) -> Path:
    """A local model path, or ``tiny:<shape>``: a random-weight model built once in the run dir."""
    if not spec.startswith("tiny:"):
        return Path(spec)
    shape = spec.removeprefix("tiny:")
    out = root / "models" / f"{role}-{shape}"

    def build(tmp: Path) -> None:
        from selectllm_local.models.random_weights import build_random_model

        # float32 for a model that is fine-tuned (CPU training), bfloat16 for a selector.
        build_random_model(tmp, shape, seed=0, dtype="float32" if role == "base" else "bfloat16")

    return build_once(out, build, done=lambda p: (p / "selectllm_model.json").exists())


def _prepare_cell_dir(cell_dir: Path, key: str) -> None:
    """Keep a cell's finished stages only if they were made with the same key."""
    marker = cell_dir / "cell.json"
    if cell_dir.exists() and not marker_matches(marker, key):
        log.info("configuration of %s changed: starting it afresh", cell_dir)
        shutil.rmtree(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_marker(marker, key)


# -- one cell ----------------------------------------------------------------------------------


def _run_cell(
    cfg: ExperimentConfig,
    data: ExperimentInputs,
    cell: Cell,
    cell_dir: Path,
    key: str,
    pool_path: Path,
    base_model: Path,
    *,
    progress: bool,
) -> None:
    from selectllm_local.evaluation.evaluate import evaluate_run
    from selectllm_local.training.finetune import finetune_run

    # A stage finished by an earlier run is reused, and its time is the one that run recorded
    # (the selection's, the trainer's and the evaluation's own seconds), not the instant of
    # reading it back.
    reused: list[str] = []
    picks, selection_seconds, selection_reused = _selection(
        cfg, data, cell, cell_dir, pool_path, progress=progress
    )
    if selection_reused:
        reused.append("selection")
    records = [data.pool_items[i] for i in picks]

    t = time.perf_counter()
    ft_dir = cell_dir / "finetune"
    adapter = ft_dir / "adapter"
    if (adapter / "adapter_config.json").exists() and (ft_dir / "train_summary.json").exists():
        reused.append("finetune")
    else:
        adapter = finetune_run(
            records,
            base_model=base_model,
            out_dir=ft_dir,
            config=cfg.finetune.replace(seed=cell.seed),
            subprocess=cfg.experiment.finetune_subprocess,
            progress=progress,
        )
    ft_seconds = time.perf_counter() - t

    ev = evaluate_run(  # resumes: answers and NLL already in eval/ are kept
        cfg.test_set,
        base_model=base_model,
        adapter=adapter,
        out_dir=cell_dir / "eval",
        config=dataclasses.replace(
            cfg.evaluate, engine=dataclasses.replace(cfg.evaluate.engine, seed=cell.seed)
        ),
        progress=progress,
        rows=data.test_rows,
        nll_rows=data.nll_rows,
        resume=True,
    )
    reused += ["evaluate" if s == "answers" else s for s in ev.reused]
    train = read_json(ft_dir / "train_summary.json")
    if "finetune" in reused and isinstance(train.get("seconds"), int | float):
        ft_seconds = float(train["seconds"])
    timings = {"selection": selection_seconds, "finetune": ft_seconds, "evaluate": ev.seconds}
    # (a selection made before times were recorded has none: left out rather than shown as 0)
    if ev.nll_rows:
        timings["reference_nll"] = ev.nll_seconds
    write_json(
        cell_dir / "done.json",
        {
            "key": key,
            "nll_key": _nll_key(cfg, data),
            "method": cell.method,
            "budget": cell.budget,
            "seed": cell.seed,
            "selection_seed": selection_seed(cfg, cell),
            "rougeL_f1": ev.rougeL_f1,
            "cosine": ev.cosine,
            "n_test": ev.n,
            "reference_nll": ev.reference_nll,
            "nll_rows": ev.nll_rows,
            "train_loss": train.get("train_loss"),
            "selection_seconds": selection_seconds,
            "seconds": {k: round(v, 3) for k, v in timings.items() if v is not None},
            "reused": reused,
        },
    )


def _selection(
    cfg: ExperimentConfig,
    data: ExperimentInputs,
    cell: Cell,
    cell_dir: Path,
    pool_path: Path,
    *,
    progress: bool,
) -> tuple[list[int], float | None, bool]:
    """(pool indices, seconds the selection took, whether it was made by an earlier run).

    The seconds are the selection's own, summed over every run that worked on it (a resumed
    LLM selection counts each stretch), also when this cell finds it finished in the plan
    directory's cache; None for a selection.json written before times were recorded."""
    from selectllm_local.experiment.clock import SelectionClock

    sel_path = cell_dir / "selection.json"
    if sel_path.exists():
        sel = read_json(sel_path)
        return [int(i) for i in sel["indices"]], sel.get("seconds"), True
    plan_dir = plan_dir_of(cfg.run_dir, cell.method, cell.budget, selection_seed(cfg, cell))
    clock = SelectionClock(plan_dir, cell.method, _selection_key(cfg, cell, pool_path))
    with clock:
        picks = _select(cfg, data, cell, pool_path, progress=progress)
    seconds = round(clock.seconds, 3)
    items = data.pool_items
    write_json(
        sel_path,
        {
            "method": cell.method,
            "budget": cell.budget,
            "seed": cell.seed,
            "selection_seed": selection_seed(cfg, cell),
            "indices": picks,
            "uids": [items[i].uid for i in picks],
            "seconds": seconds,
            "cached": clock.was_complete,
        },
    )
    return picks, seconds, clock.was_complete


def _select(
    cfg: ExperimentConfig, data: ExperimentInputs, cell: Cell, pool_path: Path, *, progress: bool
) -> list[int]:
    """Pool indices chosen by ``cell.method`` (select or a baseline) in the shared plan dir."""
    from selectllm_local.baselines.ifd import IFD_FILE
    from selectllm_local.config import PlanConfig

    seed = selection_seed(cfg, cell)
    plan_dir = plan_dir_of(cfg.run_dir, cell.method, cell.budget, seed)
    _seed_embedding_cache(cfg.run_dir / "plans", plan_dir)
    plan_cfg = PlanConfig(
        pool=pool_path, budget=cell.budget, seed=seed, run_dir=plan_dir, **cfg.plan
    )
    if cell.method.partition(":")[0] == "select":
        from selectllm_local.run.pipeline import select_run

        selector = _resolve_model(str(cfg.engine.model), cfg.run_dir, role="selector")
        selected = select_run(cfg.select_config(plan_cfg, selector, cell.method), progress=progress)
        picks = [int(i) for i in selected.selected]
    else:
        from selectllm_local.baselines.run import baseline_run

        name, _, variant = cell.method.partition(":")
        scorer = _resolve_model(str(cfg.baseline.scorer_model), cfg.run_dir, role="base")
        likely: dict[str, Any] = {}
        if name in ENGINE_METHODS:  # ifd, cluster-ifd: scored once per experiment, on [engine]
            selector = _resolve_model(str(cfg.engine.model), cfg.run_dir, role="selector")
            engine = dataclasses.replace(
                cfg.engine, model=str(selector), device=cfg.engine.device or plan_cfg.device
            )
            likely = {"engine": engine, "score_cache": cfg.run_dir / "scores" / IFD_FILE}
        picks = baseline_run(
            name,
            plan_cfg,
            scorer=scorer if name.endswith("perplexity") else None,
            progress=progress,
            **likely,
            **cfg.baseline.options(name, variant),
        ).indices
    _check_same_pool(data, plan_dir)
    return picks


def _seed_embedding_cache(plans: Path, plan_dir: Path) -> None:
    """Give a new plan dir the embeddings another cell already computed (one embed per pool).

    The cache itself checks the model and every row's text hash, so a copy that does not fit is
    simply not used; the key file is copied last, so a crash leaves no half-valid cache.
    """
    from selectllm_local.embed.encoder import CACHE_FILE, CACHE_KEY_FILE

    if (plan_dir / CACHE_KEY_FILE).exists():
        return
    for other in sorted(plans.glob("*/" + CACHE_KEY_FILE)):
        src = other.parent
        if src == plan_dir or not (src / CACHE_FILE).exists():
            continue
        plan_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / CACHE_FILE, plan_dir / CACHE_FILE)
        shutil.copyfile(src / CACHE_KEY_FILE, plan_dir / CACHE_KEY_FILE)
        log.info("re-using the embeddings of %s for %s", src.name, plan_dir.name)
        return


def _check_same_pool(data: ExperimentInputs, plan_dir: Path) -> None:
    """Indices from the plan dir must mean the same rows as the experiment's pool."""

    p = plan_dir / "pool.jsonl"
    if p.exists():
        uids = [r["uid"] for r in read_jsonl(p)]
        if uids != [it.uid for it in data.pool_items]:
            raise UserError(
                f"The pool cached in {plan_dir} differs from the experiment's pool; delete that "
                "folder and run the experiment again."
            )
