"""The experiment file, read and checked in full before any heavy work starts.

A TOML file read by the one config loader, with the same tables as a ``--config`` file:
``[experiment]`` (pool, test set, base model, methods x budgets x seeds), ``[plan]`` (less the
pool, budget, seed and run directory, which each cell sets), ``[selector]``, ``[engine]`` (the
selector model and its engine), ``[baseline]``, ``[finetune]`` and ``[evaluate]``. Relative paths
are relative to the file. Every error names the table and key to fix.
``configs/paper_dolly.toml`` shows every key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectllm_local.config import (
    SECTIONS,
    BaselineConfig,
    EngineConfig,
    EvaluateConfig,
    FinetuneConfig,
    PlanConfig,
    Section,
    SelectConfig,
    SelectorConfig,
    check_keys,
    read_toml,
)
from selectllm_local.config.loader import RENAMED
from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem

PLAN_PER_CELL = {"pool", "budget", "seed", "run_dir"}  # set by each cell, not by the file
VARIANTS = {"length": ("shortest", "longest"), "perplexity": ("high", "low", "middle")}


@dataclass
class ExperimentTable(Section):
    """The ``[experiment]`` table: what is compared, on what, how often."""

    SECTION = "experiment"

    pool: str = ""
    """Pool file to select from (every row needs a response: each method trains on its picks)."""
    test_set: str = ""
    """Held-out test set: JSONL, or a folder with prompt_format.json + test_gts.json."""
    base_model: str = ""
    """Local folder of the model every method fine-tunes, or tiny:<shape> (a random test model)."""
    methods: list[str] = field(default_factory=list)
    """select and baselines (random, length, length:shortest, perplexity:low|middle|high, ...)."""
    budgets: list[int] | int = field(default_factory=list)
    """Selection sizes to compare."""
    seeds: list[int] | int = field(default_factory=lambda: [0])
    """Seeds; each (method, budget, seed) is one resumable cell."""
    name: str | None = None
    """Name of the experiment [default: the file's stem]."""
    pool_limit: int | None = None
    """Use only the first N usable pool rows."""
    exclude_test_from_pool: bool = True
    """Drop pool rows equal to a test example."""
    run_dir: str | None = None
    """Run directory [default: runs/experiment-<name>]."""
    finetune_subprocess: bool = True
    """Fine-tune in a fresh process, so GPU memory of the selection is surely free."""


@dataclass
class ExperimentConfig:
    """The validated experiment: resolved paths, the loaded pool, and one object per section."""

    path: Path
    run_dir: Path
    name: str
    pool: Path
    pool_items: list[PoolItem]
    test_set: Path
    test_key: str
    test_overlap: int
    base_model: str
    methods: list[str]
    budgets: list[int]
    seeds: list[int]
    finetune_subprocess: bool
    plan: dict[str, Any]
    selector: SelectorConfig
    engine: EngineConfig
    baseline: BaselineConfig
    finetune: FinetuneConfig
    evaluate: EvaluateConfig

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if isinstance(v, Section) else v
        d.pop("pool_items")
        d["pool_rows"] = len(self.pool_items)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    def select_config(self, plan: PlanConfig, selector: Path) -> SelectConfig:
        """One cell's select run: the cell's plan, the file's selector and engine (cell seed)."""
        return SelectConfig(
            plan=plan,
            selector=dataclasses.replace(self.selector, seed=plan.seed),
            engine=dataclasses.replace(
                self.engine,
                model=str(selector),
                seed=plan.seed,
                device=self.engine.device or plan.device,
            ),
        )


def _int_list(path: Path, key: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UserError(
            f"{path}: [experiment] {key} must be a non-empty list of integers (got {value!r})."
        )
    return list(dict.fromkeys(value))


def _model(spec: str, here: Path, path: Path, key: str) -> str:
    """``tiny:<shape>`` as is; a path made absolute (relative to the file) and checked."""
    from selectllm_local.tinymodel import SHAPES

    if spec.startswith("tiny:"):
        if spec.removeprefix("tiny:") not in SHAPES:
            raise UserError(f"{path}: {key} = '{spec}': unknown shape; known: {', '.join(SHAPES)}.")
        return spec
    resolved = (here / spec).resolve()
    if not resolved.exists():
        raise UserError(
            f"{path}: {key} = '{spec}' does not exist. Give a local model directory (download it "
            "first), or 'tiny:<shape>' for a random-weight test model."
        )
    return str(resolved)


def _section(path: Path, raw: dict[str, Any], cls: type, **extra: Any) -> Any:
    table = raw.get(cls.SECTION, {})  # type: ignore[attr-defined]
    if not isinstance(table, dict):
        raise UserError(f"{path}: [{cls.SECTION}] must be a table.")  # type: ignore[attr-defined]
    check_keys(cls, table, where=f"{path}: [{cls.SECTION}]")  # type: ignore[attr-defined]
    try:
        return cls(**{**table, **extra})
    except UserError as exc:  # name the file too
        raise UserError(f"{path}: {exc}") from None


def _read(path: Path) -> dict[str, Any]:
    raw = read_toml(path, what="Experiment config", flag="CONFIG")
    known = ["experiment", *SECTIONS]
    unknown = sorted(k for k in raw if k not in known)
    for old in unknown:
        if old in RENAMED:
            raise UserError(f"{path}: the section [{old}] is now {RENAMED[old]}.")
    if unknown:
        raise UserError(
            f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(known)}."
        )
    return raw


def load_experiment_config(path: Path, *, run_dir: Path | str | None = None) -> ExperimentConfig:
    """Read and validate everything (files, models, methods, budgets, recipe) up front."""
    from selectllm_local import data
    from selectllm_local.evaluate import load_testset
    from selectllm_local.runstore import stable_hash

    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"Experiment config {path} does not exist. Check the CONFIG argument.")
    raw = _read(path)
    exp: ExperimentTable = _section(path, raw, ExperimentTable)
    here = path.parent
    for key in ("pool", "test_set", "base_model"):
        if not getattr(exp, key):
            raise UserError(f"{path}: [experiment] {key} is missing.")
    pool, test_set = (here / exp.pool).resolve(), (here / exp.test_set).resolve()
    if not pool.exists():
        raise UserError(f"{path}: [experiment] pool = {exp.pool!r}: {pool} does not exist.")
    if not test_set.exists():
        raise UserError(
            f"{path}: [experiment] test_set = {exp.test_set!r}: {test_set} does not exist."
        )
    evaluate: EvaluateConfig = _section(path, raw, EvaluateConfig)
    tests = load_testset(test_set, limit=evaluate.limit)
    items, _stats = data.load_pool(pool)
    overlap = 0
    if exp.exclude_test_from_pool:
        seen = {(t.instruction.strip(), t.input.strip()) for t in tests}
        kept = [it for it in items if (it.instruction.strip(), it.input.strip()) not in seen]
        overlap = len(items) - len(kept)
        items = kept
    if exp.pool_limit is not None:
        if not isinstance(exp.pool_limit, int) or exp.pool_limit < 1:
            raise UserError(
                f"{path}: [experiment] pool_limit must be a positive integer (got {exp.pool_limit!r})."
            )
        items = items[: exp.pool_limit]
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items)]
    missing = [it for it in items if not (it.output and it.output.strip())]
    if missing:
        raise UserError(
            f"{path}: [experiment] pool = {exp.pool!r}: {len(missing)} of {len(items)} rows have no "
            f"response (first: source row {missing[0].source_row}). Every method fine-tunes on the "
            "responses of its picks, so the pool must be annotated."
        )
    methods = _methods(path, exp.methods)
    budgets = _int_list(path, "budgets", exp.budgets)
    seeds = _int_list(path, "seeds", exp.seeds)
    bad = [b for b in budgets if not 1 <= b <= len(items)]
    if bad:
        raise UserError(
            f"{path}: [experiment] budgets {bad} outside 1..{len(items)}: the pool has {len(items)} "
            f"usable rows{' after pool_limit' if exp.pool_limit else ''}"
            f"{f' ({overlap} test rows removed)' if overlap else ''}."
        )
    base_model = _model(exp.base_model, here, path, "[experiment] base_model")

    engine: EngineConfig = _section(path, raw, EngineConfig)
    if "select" in methods:
        if not engine.model:
            raise UserError(
                f"{path}: method 'select' needs [engine] model (a local model directory)."
            )
        engine.model = _model(engine.model, here, path, "[engine] model")
    baseline: BaselineConfig = _section(path, raw, BaselineConfig)
    baseline.scorer_model = (
        _model(baseline.scorer_model, here, path, "[baseline] scorer_model")
        if baseline.scorer_model
        else base_model
    )
    plan = dict(raw.get("plan", {}))
    check_keys(
        [f.name for f in dataclasses.fields(PlanConfig) if f.name not in PLAN_PER_CELL],
        plan,
        where=f"{path}: [plan]",
    )
    PlanConfig(pool=pool, budget=min(budgets), **plan)  # field validation, names the key
    name = exp.name or path.stem
    out = Path(run_dir) if run_dir is not None else None
    out = out or (
        (here / exp.run_dir).resolve() if exp.run_dir else Path("runs") / f"experiment-{name}"
    )
    return ExperimentConfig(
        path=path,
        run_dir=out,
        name=name,
        pool=pool,
        pool_items=items,
        test_set=test_set,
        test_key=stable_hash([(t.instruction, t.input, t.reference) for t in tests]),
        test_overlap=overlap,
        base_model=base_model,
        methods=methods,
        budgets=budgets,
        seeds=seeds,
        finetune_subprocess=bool(exp.finetune_subprocess),
        plan=plan,
        selector=_section(path, raw, SelectorConfig),
        engine=engine,
        baseline=baseline,
        finetune=_section(path, raw, FinetuneConfig),
        evaluate=evaluate,
    )


def _methods(path: Path, methods: Any) -> list[str]:
    from selectllm_local.baselines import BASELINES

    if not isinstance(methods, list) or not methods:
        raise UserError(
            f'{path}: [experiment] methods must be a non-empty list, e.g. ["select", "random"].'
        )
    for m in methods:
        name, _, variant = str(m).partition(":")
        if name != "select" and name not in BASELINES:
            raise UserError(
                f"{path}: [experiment] methods: unknown method '{m}'. Known: select, {', '.join(BASELINES)} "
                "(variants: length:shortest, perplexity:low|middle|high)."
            )
        if variant and variant not in VARIANTS.get(name, ()):
            raise UserError(
                f"{path}: [experiment] methods: '{m}' has an unknown variant '{variant}'."
            )
    return [str(m) for m in methods]
