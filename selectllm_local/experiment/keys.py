"""The keys of an experiment's cells: what a cell's results, its selection and its reference-NLL
stage depend on (a changed key redoes that part, an equal one reuses it).

These hashes name the work already done in a run directory, so they must not change for a given
configuration: a resumed experiment finds its finished cells by them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selectllm_local.config import EngineConfig, EvaluateConfig
from selectllm_local.config.training import MOVED_TO_ENGINE, NLL_SETTINGS
from selectllm_local.experiment.cells import Cell
from selectllm_local.experiment.config import ENGINE_METHODS, ExperimentConfig
from selectllm_local.experiment.inputs import ExperimentInputs
from selectllm_local.run.store import stable_hash


def _cell_key(cfg: ExperimentConfig, data: ExperimentInputs, cell: Cell, pool_path: Path) -> str:
    from selectllm_local.run.store import file_hash

    is_select = cell.method.partition(":")[0] == "select"
    uses_engine = cell.method.partition(":")[0] in ENGINE_METHODS
    return stable_hash(
        {
            "cell": [cell.method, cell.budget, cell.seed]
            + ([] if cfg.selection_seed is None else [f"selection_seed={cfg.selection_seed}"]),
            "pool": file_hash(pool_path),
            "test": data.test_key,
            "base_model": cfg.base_model,
            "plan": cfg.plan,
            "selector": cfg.selector_for(cell.method).to_dict() if is_select else None,
            "engine": cfg.engine.to_dict() if uses_engine else None,
            "baseline": None if is_select else cfg.baseline.to_dict(),
            "finetune": cfg.finetune.to_dict(),
            "evaluate": evaluate_key(cfg.evaluate),
        }
    )


def evaluate_key(evaluate: EvaluateConfig) -> dict[str, Any]:
    """The ``[evaluate]`` settings that go into a cell's key, in the shape they had before the
    engine was nested (commit 0edf93f: backend, batch_size and seed were ``[evaluate]`` keys), so
    finished cells keep their keys (tests/test_experiment_keys.py). Any other engine setting is
    added only when it differs from its default. The NLL settings have their own key
    (``_nll_key``): changing them keeps the answers."""
    engine = evaluate.engine.to_dict()
    flat = {k: v for k, v in evaluate.to_dict().items() if k not in (*NLL_SETTINGS, "engine")}
    flat.update({k: engine.pop(k) for k in MOVED_TO_ENGINE})
    defaults = EngineConfig().to_dict()
    changed = {k: v for k, v in engine.items() if v != defaults[k]}
    return {**flat, "engine": changed} if changed else flat


def _nll_key(cfg: ExperimentConfig, data: ExperimentInputs) -> str | None:
    """The key of the cells' reference-NLL stage (None: the NLL is off)."""
    from selectllm_local.evaluation.evaluate import nll_key

    return nll_key(data.all_test_examples, data.nll_rows, cfg.evaluate) if data.nll_rows else None


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
