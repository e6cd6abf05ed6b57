"""One experiment cell, stage by stage: selection -> fine-tune -> evaluation (answers and the
reference NLL), then the cell's ``done.json``.

Each stage first looks for what an earlier run finished in the cell's folder (``selection.json``,
``finetune/adapter``, the files of ``eval/``) and reuses it; its time is then the one that run
recorded (the selection's, the trainer's and the evaluation's own seconds), not the instant of
reading it back. ``done.json`` is written last, so a cell killed at any point is resumed.

The selection runs in the plan directory the cell shares with the other methods of its budget and
seed (``cells.plan_dir_of``): ``select`` through ``run.pipeline.select_run``, a baseline through
``baselines.run.baseline_run``, on the same pool, embeddings, clusters and subsets.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from selectllm_local.errors import UserError
from selectllm_local.experiment.cells import Cell, plan_dir_of
from selectllm_local.experiment.config import ENGINE_METHODS, ExperimentConfig
from selectllm_local.experiment.inputs import ExperimentInputs
from selectllm_local.experiment.keys import _nll_key, _selection_key, selection_seed
from selectllm_local.run.store import build_once, read_json, read_jsonl, write_json

if TYPE_CHECKING:
    from selectllm_local.data.pool import PoolItem
    from selectllm_local.evaluation.evaluate import EvalOutcome

log = logging.getLogger(__name__)


def local_model(spec: str, root: Path, *, role: str) -> Path:
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


def run_cell(
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
    """Run (or resume) every stage of ``cell`` in ``cell_dir``, then write its ``done.json``."""
    reused: list[str] = []
    picks, selection_seconds, selection_reused = _selection(
        cfg, data, cell, cell_dir, pool_path, progress=progress
    )
    if selection_reused:
        reused.append("selection")
    records = [data.pool_items[i] for i in picks]
    trained = _finetune(cfg, cell, cell_dir, records, base_model, progress=progress)
    if trained.reused:
        reused.append("finetune")
    ev = _evaluate(cfg, data, cell, cell_dir, trained.adapter, base_model, progress=progress)
    reused += ["evaluate" if s == "answers" else s for s in ev.reused]
    timings = {"selection": selection_seconds, "finetune": trained.seconds, "evaluate": ev.seconds}
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
            "train_loss": trained.summary.get("train_loss"),
            "selection_seconds": selection_seconds,
            "seconds": {k: round(v, 3) for k, v in timings.items() if v is not None},
            "reused": reused,
        },
    )


# -- fine-tune and evaluate ---------------------------------------------------------------------


class Trained(NamedTuple):
    adapter: Path
    seconds: float  # the trainer's own seconds when an earlier run trained it
    reused: bool  # trained by an earlier run
    summary: dict[str, Any]  # train_summary.json


def _finetune(
    cfg: ExperimentConfig,
    cell: Cell,
    cell_dir: Path,
    records: list[PoolItem],
    base_model: Path,
    *,
    progress: bool,
) -> Trained:
    """The cell's adapter: the one in ``finetune/`` if an earlier run finished it, else trained
    now on ``records`` with the cell's seed."""
    from selectllm_local.training.finetune import finetune_run

    t = time.perf_counter()
    ft_dir = cell_dir / "finetune"
    adapter = ft_dir / "adapter"
    reused = (adapter / "adapter_config.json").exists() and (ft_dir / "train_summary.json").exists()
    if not reused:
        adapter = finetune_run(
            records,
            base_model=base_model,
            out_dir=ft_dir,
            config=cfg.finetune.replace(seed=cell.seed),
            subprocess=cfg.experiment.finetune_subprocess,
            progress=progress,
        )
    seconds = time.perf_counter() - t
    summary = read_json(ft_dir / "train_summary.json")
    if reused and isinstance(summary.get("seconds"), int | float):
        seconds = float(summary["seconds"])
    return Trained(adapter, seconds, reused, summary)


def _evaluate(
    cfg: ExperimentConfig,
    data: ExperimentInputs,
    cell: Cell,
    cell_dir: Path,
    adapter: Path,
    base_model: Path,
    *,
    progress: bool,
) -> EvalOutcome:
    """Answers and reference NLL of the experiment's test rows in ``eval/``; resumes (answers
    and NLL already there are kept). The engine's seed is the cell's."""
    from selectllm_local.evaluation.evaluate import evaluate_run

    return evaluate_run(
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


# -- selection ----------------------------------------------------------------------------------


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

        selector = local_model(str(cfg.engine.model), cfg.run_dir, role="selector")
        selected = select_run(cfg.select_config(plan_cfg, selector, cell.method), progress=progress)
        picks = [int(i) for i in selected.selected]
    else:
        from selectllm_local.baselines.registry import baseline_of, baseline_options
        from selectllm_local.baselines.run import baseline_run

        name, _, variant = cell.method.partition(":")
        scorer = local_model(str(cfg.baseline.scorer_model), cfg.run_dir, role="base")
        likely: dict[str, Any] = {}
        if name in ENGINE_METHODS:  # ifd, cluster-ifd: scored once per experiment, on [engine]
            selector = local_model(str(cfg.engine.model), cfg.run_dir, role="selector")
            engine = dataclasses.replace(
                cfg.engine, model=str(selector), device=cfg.engine.device or plan_cfg.device
            )
            likely = {"engine": engine, "score_cache": cfg.run_dir / "scores" / IFD_FILE}
        picks = baseline_run(
            name,
            plan_cfg,
            scorer=scorer if baseline_of(name).scorer == "base" else None,
            progress=progress,
            **likely,
            **baseline_options(cfg.baseline, name, variant),
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
