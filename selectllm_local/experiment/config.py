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
from selectllm_local.config.sections import MODES
from selectllm_local.config.training import PERPLEXITY_BANDS
from selectllm_local.errors import UserError
from selectllm_local.records import PoolItem

PLAN_PER_CELL = {"pool", "budget", "seed", "run_dir"}  # set by each cell, not by the file
ENGINE_METHODS = ("select", "ifd", "cluster-ifd")  # methods that run the [engine] model
PERPLEXITY_NAMES = ("answer-perplexity", "instruction-perplexity", "perplexity")  # last: deprecated
VARIANTS = {
    "select": MODES,
    "length": ("shortest", "longest"),
    **dict.fromkeys(PERPLEXITY_NAMES, PERPLEXITY_BANDS),
}


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
    """select and baselines (random, length, length:shortest, answer-perplexity:low|middle|high,
    the same for instruction-perplexity, ifd and cluster-ifd (scored by the [engine] model),
    ...)."""
    budgets: list[int] | int = field(default_factory=list)
    """Selection sizes to compare."""
    seeds: list[int] | int = field(default_factory=lambda: [0])
    """Seeds; each (method, budget, seed) is one resumable cell."""
    method_seeds: dict[str, list[int]] = field(default_factory=dict)
    """Seeds of the named methods instead of ``seeds`` (an inline table, e.g. ``{ kcenter =
    [0, 1] }``): fewer seeds where time is short. Comparisons pair the seeds both methods ran."""
    name: str | None = None
    """Name of the experiment [default: the file's stem]."""
    pool_limit: int | None = None
    """Use only the first N usable pool rows."""
    pool_sample: int | None = None
    """Use a seeded random sample of N usable pool rows (after test rows are removed), kept in
    the pool's order; ``sample_seed`` fixes it."""
    test_sample: int | None = None
    """Score a seeded random sample of N test examples (``sample_seed``) instead of all of them;
    the pool is still cleaned against the whole test set."""
    nll_sample: int | None = None
    """Score the reference NLL (cheap, low variance) on N test rows: the rows answered
    (``test_sample``) plus a seeded draw (``sample_seed``) of the others, so the Rouge-L/cosine
    rows are a subset of the NLL rows [default: the answered rows only]. At least test_sample."""
    selection_seed: int | None = None
    """Override: select with this seed in every cell (one plan and one selection per budget,
    shared by all seeds), so the cell's seed varies only the fine-tune and evaluation. Default
    (recommended): the selection seed is the cell's seed, so every seed redraws every stochastic
    selection (random draws, k-means plan, display and permutation order)."""
    sample_seed: int = 0
    """Seed of ``pool_sample`` and ``test_sample`` (fixed across cells: every cell sees the same
    rows)."""
    exclude_test_from_pool: bool = True
    """Drop pool rows holding a test example: the same instruction and response, or the same
    instruction and input (``splits.TestOverlap``; citation markers, spacing and case ignored)."""
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
    test_examples: list[Any]
    test_sample: int | None
    test_rows: list[int]
    """Rows of the test set that are answered (Rouge-L, cosine): indices into ``test_set``."""
    nll_rows: list[int]
    """Rows whose reference NLL is scored (a superset of ``test_rows``; empty: NLL off)."""
    all_test_examples: list[Any]
    selection_seed: int | None
    test_key: str
    test_overlap: int
    test_removed: dict[str, int]
    """Pool rows removed as test examples, by reason (``splits.TestOverlap``)."""
    base_model: str
    methods: list[str]
    budgets: list[int]
    seeds: list[int]
    method_seeds: dict[str, list[int]]
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
        for name in ("pool_items", "test_examples", "all_test_examples", "test_rows", "nll_rows"):
            d.pop(name)
        d["nll_test_rows"] = len(self.nll_rows)
        d["pool_rows"] = len(self.pool_items)
        d["test_rows"] = len(self.test_examples)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    def seeds_of(self, method: str) -> list[int]:
        """The seeds a method runs: its own from ``method_seeds``, else ``seeds``."""
        return self.method_seeds.get(method, self.seeds)

    def selector_for(self, method: str) -> SelectorConfig:
        """The file's selector, with the mode of a ``select:<mode>`` method."""
        mode = method.partition(":")[2]
        return dataclasses.replace(self.selector, mode=mode) if mode else self.selector

    def select_config(
        self, plan: PlanConfig, selector: Path, method: str = "select"
    ) -> SelectConfig:
        """One cell's select run: the cell's plan, the file's selector and engine (cell seed)."""
        return SelectConfig(
            plan=plan,
            selector=dataclasses.replace(self.selector_for(method), seed=plan.seed),
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


def _model(spec: str, here: Path, path: Path, key: str, *, required: bool = True) -> str:
    """``tiny:<shape>`` as is; a known model's name (``selectllm models``) or a path (relative to
    the file; a ``.gguf`` file or folder is converted once) made a loadable folder. With
    ``required=False`` (a dry run) a model that is not here is returned as its resolved path."""
    from selectllm_local.models.random_weights import SHAPES
    from selectllm_local.models.registry import KNOWN_MODELS, resolve_model_path

    if spec.startswith("tiny:"):
        if spec.removeprefix("tiny:") not in SHAPES:
            raise UserError(f"{path}: {key} = '{spec}': unknown shape; known: {', '.join(SHAPES)}.")
        return spec
    resolved = (here / spec).resolve()
    if not required and not resolved.exists():
        if spec not in KNOWN_MODELS:
            return str(resolved)
        from selectllm_local.models.registry import cached_model

        found = cached_model(spec)  # in the cache, or its name: a dry run fetches nothing
        return str(found) if found is not None else spec
    if not resolved.exists() and spec not in KNOWN_MODELS:
        raise UserError(
            f"{path}: {key} = '{spec}' does not exist. Give a local model directory or .gguf file "
            f"(download it first), a known model ({', '.join(KNOWN_MODELS)}; selectllm models), "
            "or 'tiny:<shape>' for a random-weight test model."
        )
    try:
        return resolve_model_path(resolved if resolved.exists() else spec, flag=key)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


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


def load_experiment_config(
    path: Path,
    *,
    run_dir: Path | str | None = None,
    require_models: bool = True,
    pool: Path | str | None = None,
) -> ExperimentConfig:
    """Read and validate everything (files, models, methods, budgets, recipe) up front.

    For a dry run (nothing loaded, nothing written): ``require_models=False`` accepts model
    folders that are not on this machine, and ``pool`` replaces the file's pool (e.g. a local copy
    of Dolly); a real run passes neither.
    """
    from selectllm_local.data import pool as data
    from selectllm_local.evaluation.testset import load_testset
    from selectllm_local.run.store import stable_hash

    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"Experiment config {path} does not exist. Check the CONFIG argument.")
    raw = _read(path)
    exp: ExperimentTable = _section(path, raw, ExperimentTable)
    here = path.parent
    for key in ("pool", "test_set", "base_model"):
        if not getattr(exp, key):
            raise UserError(f"{path}: [experiment] {key} is missing.")
    test_set = (here / exp.test_set).resolve()
    pool = Path(pool).resolve() if pool is not None else (here / exp.pool).resolve()
    if not pool.exists():
        raise UserError(
            f"{path}: [experiment] pool = {exp.pool!r}: {pool} does not exist. Download it, or for "
            "a dry run point --pool at a copy."
        )
    if not test_set.exists():
        raise UserError(
            f"{path}: [experiment] test_set = {exp.test_set!r}: {test_set} does not exist."
        )
    evaluate: EvaluateConfig = _section(path, raw, EvaluateConfig)
    all_tests = load_testset(test_set)
    from selectllm_local.data.splits import TestOverlap

    # against the whole test set, not only the rows scored; before de-duplication
    leak = TestOverlap(all_tests if exp.exclude_test_from_pool else [])
    items, _stats = data.load_pool(pool, exclude=leak if exp.exclude_test_from_pool else None)
    if exp.exclude_test_from_pool:
        leak.report(str(pool))
    overlap = leak.total
    for key in ("pool_limit", "pool_sample", "test_sample", "nll_sample"):
        v = getattr(exp, key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise UserError(f"{path}: [experiment] {key} must be a positive integer (got {v!r}).")
    if exp.pool_limit is not None and exp.pool_sample is not None:
        raise UserError(f"{path}: [experiment] give pool_limit or pool_sample, not both.")
    if exp.pool_limit is not None:
        items = items[: exp.pool_limit]
    if exp.pool_sample is not None:
        items = _sample(items, exp.pool_sample, exp.sample_seed)
    test_rows, nll_rows = _test_rows(path, exp, len(all_tests), evaluate)
    tests = [all_tests[r] for r in test_rows]
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
    if not isinstance(exp.method_seeds, dict):
        raise UserError(
            f"{path}: [experiment] method_seeds must be a table of method = [seeds] "
            f"(got {exp.method_seeds!r})."
        )
    method_seeds = {}
    for m, v in exp.method_seeds.items():
        if m not in methods:
            raise UserError(
                f"{path}: [experiment] method_seeds names '{m}', which is not in methods "
                f"{methods}. Add it to methods or remove it from method_seeds."
            )
        method_seeds[m] = _int_list(path, f"method_seeds.{m}", v)
    bad = [b for b in budgets if not 1 <= b <= len(items)]
    if bad:
        raise UserError(
            f"{path}: [experiment] budgets {bad} outside 1..{len(items)}: the pool has {len(items)} "
            f"usable rows{' after pool_limit' if exp.pool_limit else ''}"
            f"{f' ({overlap} test rows removed)' if overlap else ''}."
        )
    need = require_models
    base_model = _model(exp.base_model, here, path, "[experiment] base_model", required=need)

    engine: EngineConfig = _section(path, raw, EngineConfig)
    engine_methods = [m for m in methods if m.partition(":")[0] in ENGINE_METHODS]
    if engine_methods:
        if not engine.model:
            raise UserError(
                f"{path}: method '{engine_methods[0]}' needs [engine] model (a local model "
                "directory, a .gguf file or a known name): select asks it for picks, ifd and "
                "cluster-ifd score the pool with it."
            )
        engine.model = _model(engine.model, here, path, "[engine] model", required=need)
    baseline: BaselineConfig = _section(path, raw, BaselineConfig)
    baseline.scorer_model = (
        _model(baseline.scorer_model, here, path, "[baseline] scorer_model", required=need)
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
        test_examples=tests,
        test_sample=exp.test_sample,
        test_rows=test_rows,
        nll_rows=nll_rows,
        all_test_examples=all_tests,
        selection_seed=exp.selection_seed,
        test_key=stable_hash([(t.instruction, t.input, t.reference) for t in tests]),
        test_overlap=overlap,
        test_removed=dict(leak.removed),
        base_model=base_model,
        methods=methods,
        budgets=budgets,
        seeds=seeds,
        method_seeds=method_seeds,
        finetune_subprocess=bool(exp.finetune_subprocess),
        plan=plan,
        selector=_section(path, raw, SelectorConfig),
        engine=engine,
        baseline=baseline,
        finetune=_section(path, raw, FinetuneConfig),
        evaluate=evaluate,
    )


def _test_rows(
    path: Path, exp: ExperimentTable, n: int, evaluate: EvaluateConfig
) -> tuple[list[int], list[int]]:
    """(answered rows, NLL rows) as indices into the test set.

    Answered: the first ``[evaluate] limit`` rows, or ``test_sample`` of them. NLL: those rows
    plus, up to ``nll_sample`` rows in all, a seeded draw of the rest of the first
    ``[evaluate] nll_limit`` rows (default: of the same rows as the answers); without
    ``nll_sample`` all of them when ``nll_limit`` is given, else the answered rows alone;
    ``nll_limit = 0`` turns the NLL off. Adding NLL rows never changes the answered rows.
    """
    answerable = list(range(min(n, evaluate.limit or n)))
    rows = (
        answerable
        if exp.test_sample is None
        else _sample(answerable, exp.test_sample, exp.sample_seed)
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
        extra = _sample(rest, exp.nll_sample - len(rows), exp.sample_seed + 1)
    return rows, sorted(taken | set(extra))


def _sample(rows: list[Any], n: int, seed: int) -> list[Any]:
    """``n`` rows drawn without replacement by ``seed``, in their original order (all if fewer)."""
    import numpy as np

    if n >= len(rows):
        return list(rows)
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return [rows[int(i)] for i in keep]


def _methods(path: Path, methods: Any) -> list[str]:
    from selectllm_local.baselines.registry import BASELINES, DEPRECATED

    if not isinstance(methods, list) or not methods:
        raise UserError(
            f'{path}: [experiment] methods must be a non-empty list, e.g. ["select", "random"].'
        )
    for m in methods:
        name, _, variant = str(m).partition(":")
        if name != "select" and name not in BASELINES and name not in DEPRECATED:
            raise UserError(
                f"{path}: [experiment] methods: unknown method '{m}'. Known: select, {', '.join(BASELINES)} "
                "(variants: select:generate|logprobs, length:shortest, "
                "answer-perplexity:low|middle|high, the same for instruction-perplexity)."
            )
        if variant and variant not in VARIANTS.get(name, ()):
            raise UserError(
                f"{path}: [experiment] methods: '{m}' has an unknown variant '{variant}'."
            )
    return [str(m) for m in methods]
