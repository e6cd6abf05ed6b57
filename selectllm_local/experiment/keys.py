"""The keys of an experiment's cells: what a cell's results, its selection and its reference-NLL
stage depend on (a changed key redoes that part, an equal one reuses it).

These hashes name the work already done in a run directory, so they must not change for a given
configuration: a resumed experiment finds its finished cells by them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selectllm_local.config.training import NLL_SETTINGS
from selectllm_local.experiment.cells import Cell
from selectllm_local.experiment.config import ENGINE_METHODS, ExperimentConfig
from selectllm_local.run.store import stable_hash


def _cell_key(cfg: ExperimentConfig, cell: Cell, pool_path: Path) -> str:
    from selectllm_local.run.store import file_hash

    is_select = cell.method.partition(":")[0] == "select"
    uses_engine = cell.method.partition(":")[0] in ENGINE_METHODS
    return stable_hash(
        {
            "cell": [cell.method, cell.budget, cell.seed]
            + ([] if cfg.selection_seed is None else [f"selection_seed={cfg.selection_seed}"]),
            "pool": file_hash(pool_path),
            "test": cfg.test_key,
            "base_model": cfg.base_model,
            "plan": cfg.plan,
            "selector": cfg.selector_for(cell.method).to_dict() if is_select else None,
            "engine": cfg.engine.to_dict() if uses_engine else None,
            "baseline": None if is_select else cfg.baseline.to_dict(),
            "finetune": cfg.finetune.to_dict(),
            # the NLL settings have their own key (``_nll_key``): changing them keeps the answers
            "evaluate": {k: v for k, v in cfg.evaluate.to_dict().items() if k not in NLL_SETTINGS},
        }
    )


def _nll_key(cfg: ExperimentConfig) -> str | None:
    """The key of the cells' reference-NLL stage (None: the NLL is off)."""
    from selectllm_local.evaluation.evaluate import nll_key

    return nll_key(cfg.all_test_examples, cfg.nll_rows, cfg.evaluate) if cfg.nll_rows else None


def _finished(done: dict[str, Any], key: str, nll_key: str | None) -> bool:
    """A cell is finished when its key matches and it holds the NLL asked for (a cell finished
    before the NLL existed is run again: it reuses every stage and adds the NLL)."""
    return done.get("key") == key and done.get("nll_key") == nll_key


def _selection_key(cfg: ExperimentConfig, cell: Cell, pool_path: Path) -> str:
    """What a cell's selection depends on (not the training or the evaluation)."""
    from selectllm_local.run.store import file_hash

    is_select = cell.method.partition(":")[0] == "select"
    uses_engine = cell.method.partition(":")[0] in ENGINE_METHODS
    return stable_hash(
        {
            "method": cell.method,
            "budget": cell.budget,
            "seed": selection_seed(cfg, cell),
            "pool": file_hash(pool_path),
            "plan": cfg.plan,
            "selector": cfg.selector_for(cell.method).to_dict() if is_select else None,
            "engine": cfg.engine.to_dict() if uses_engine else None,
            "baseline": None if is_select else cfg.baseline.to_dict(),
        }
    )


def selection_seed(cfg: ExperimentConfig, cell: Cell) -> int:
    """The seed a cell selects with: its own seed, unless ``selection_seed`` overrides it."""
    return cell.seed if cfg.selection_seed is None else cfg.selection_seed
