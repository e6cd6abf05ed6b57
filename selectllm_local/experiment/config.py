"""The experiment file, read and checked in full before any heavy work starts.

A TOML file read by the one config loader, with the same tables as a ``--config`` file:
``[experiment]`` (pool, test set, base model, methods x budgets x seeds), ``[plan]`` (less the
pool, budget, seed and run directory, which each cell sets), ``[selector]``, ``[engine]`` (the
selector model and its engine), ``[baseline]``, ``[finetune]`` and ``[evaluate]``, each held as
the section it is. Relative paths are relative to the file. Every error names the table and key
to fix. The pool and the test set are data, loaded by the runner (``experiment/inputs.py``).
``configs/paper_dolly.toml`` shows every key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from selectllm_local.baselines.registry import BASELINES, DEPRECATED, LIKELIHOOD_METHODS, REGISTRY
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
from selectllm_local.config.loader import RENAMED, section_table
from selectllm_local.config.vocab import MODES, Mode
from selectllm_local.errors import UserError

PLAN_PER_CELL = {"pool", "budget", "seed", "run_dir"}  # set by each cell, not by the file
# The methods, their variants and which of them run the [engine] model, from the baseline
# registry (``select`` is the one method that is not a baseline).
ENGINE_METHODS = ("select", *LIKELIHOOD_METHODS)
VARIANTS: dict[str, tuple[str, ...]] = {
    "select": MODES,
    **{name: b.variants for name, b in REGISTRY.items() if b.variants},
    **{old: REGISTRY[new].variants for old, new in DEPRECATED.items() if REGISTRY[new].variants},
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
    """Fine-tune in another process (``training.worker``: one for every cell on a CPU, a fresh
    one after a job that used a GPU), so GPU memory of the selection is surely free."""

    def _bad(self, name: str, message: str) -> UserError:
        return UserError(f"[experiment] {name} {message}")  # no flag: a key of the file only

    def __post_init__(self) -> None:
        for key in ("pool", "test_set", "base_model"):
            if not getattr(self, key):
                raise self._bad(key, "is missing.")
        for key in ("pool_limit", "pool_sample", "test_sample", "nll_sample"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise self._bad(key, f"must be a positive integer (got {v!r}).")
        if self.pool_limit is not None and self.pool_sample is not None:
            raise UserError("[experiment] give pool_limit or pool_sample, not both.")
        self.methods = _methods(self.methods)
        self.budgets = _int_list("budgets", self.budgets)
        self.seeds = _int_list("seeds", self.seeds)
        if not isinstance(self.method_seeds, dict):
            raise self._bad(
                "method_seeds",
                f"must be a table of method = [seeds] (got {self.method_seeds!r}).",
            )
        for m, v in self.method_seeds.items():
            if m not in self.methods:
                raise self._bad(
                    "method_seeds",
                    f"names '{m}', which is not in methods {self.methods}. Add it to methods "
                    "or remove it from method_seeds.",
                )
            self.method_seeds[m] = _int_list(f"method_seeds.{m}", v)


@dataclass
class ExperimentConfig:
    """The validated experiment file: its tables as they are, paths and models resolved.

    It holds settings only; the pool and the test set are loaded by the runner (and the dry run)
    with :func:`experiment.inputs.load_inputs`.
    """

    path: Path
    run_dir: Path
    experiment: ExperimentTable
    """``pool``, ``test_set`` and ``base_model`` resolved (absolute paths, loadable models)."""
    plan: dict[str, Any]
    """The ``[plan]`` keys as written: each cell adds its pool, budget, seed and run directory."""
    selector: SelectorConfig
    engine: EngineConfig
    baseline: BaselineConfig
    finetune: FinetuneConfig
    evaluate: EvaluateConfig

    @property
    def name(self) -> str:
        return self.experiment.name or self.path.stem

    @property
    def pool(self) -> Path:
        return Path(self.experiment.pool)

    @property
    def test_set(self) -> Path:
        return Path(self.experiment.test_set)

    @property
    def base_model(self) -> str:
        return self.experiment.base_model

    @property
    def methods(self) -> list[str]:
        return self.experiment.methods

    @property
    def budgets(self) -> list[int]:
        return cast(list[int], self.experiment.budgets)

    @property
    def seeds(self) -> list[int]:
        return cast(list[int], self.experiment.seeds)

    @property
    def selection_seed(self) -> int | None:
        return self.experiment.selection_seed

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": str(self.path), "run_dir": str(self.run_dir)}
        for f in dataclasses.fields(self)[2:]:
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if isinstance(v, Section) else v
        return d

    def seeds_of(self, method: str) -> list[int]:
        """The seeds a method runs: its own from ``method_seeds``, else ``seeds``."""
        return self.experiment.method_seeds.get(method, self.seeds)

    def selector_for(self, method: str) -> SelectorConfig:
        """The file's selector, with the mode of a ``select:<mode>`` method."""
        mode = cast(Mode, method.partition(":")[2])
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


def _int_list(key: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UserError(f"[experiment] {key} must be a non-empty list of integers (got {value!r}).")
    return list(dict.fromkeys(value))


def _model(spec: str, path: Path, key: str, *, required: bool = True) -> str:
    """``tiny:<shape>`` as is; a known model's name (``selectllm models``) or a path (relative to
    the file; a ``.gguf`` file or folder is converted once) made a loadable folder. With
    ``required=False`` (a dry run) a model that is not here is returned as its resolved path."""
    from selectllm_local.models.random_weights import SHAPES
    from selectllm_local.models.registry import KNOWN_MODELS, resolve_model_path

    if spec.startswith("tiny:"):
        if spec.removeprefix("tiny:") not in SHAPES:
            raise UserError(f"{path}: {key} = '{spec}': unknown shape; known: {', '.join(SHAPES)}.")
        return spec
    resolved = (path.parent / spec).resolve()
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
    table = section_table(cls, table, where=f"{path}: [{cls.SECTION}]")  # type: ignore[attr-defined]
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
    """Read and validate the file (tables, paths, models, methods, recipe); load no data.

    For a dry run (nothing loaded, nothing written): ``require_models=False`` accepts model
    folders that are not on this machine, and ``pool`` replaces the file's pool (e.g. a local copy
    of Dolly); a real run passes neither. The budgets are checked against the pool's size when
    the runner loads it (``experiment.inputs.load_inputs``).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"Experiment config {path} does not exist. Check the CONFIG argument.")
    raw = _read(path)
    exp: ExperimentTable = _section(path, raw, ExperimentTable)
    _resolve_paths(path, exp, pool)
    need = require_models
    exp.base_model = _model(exp.base_model, path, "[experiment] base_model", required=need)
    engine: EngineConfig = _section(path, raw, EngineConfig)
    engine_methods = [m for m in exp.methods if m.partition(":")[0] in ENGINE_METHODS]
    if engine_methods:
        if not engine.model:
            raise UserError(
                f"{path}: method '{engine_methods[0]}' needs [engine] model (a local model "
                "directory, a .gguf file or a known name): select asks it for picks, "
                f"{' and '.join(LIKELIHOOD_METHODS)} score the pool with it."
            )
        engine.model = _model(engine.model, path, "[engine] model", required=need)
    baseline: BaselineConfig = _section(path, raw, BaselineConfig)
    baseline.scorer_model = (
        _model(baseline.scorer_model, path, "[baseline] scorer_model", required=need)
        if baseline.scorer_model
        else exp.base_model
    )
    plan = dict(raw.get("plan", {}))
    check_keys(
        [f.name for f in dataclasses.fields(PlanConfig) if f.name not in PLAN_PER_CELL],
        plan,
        where=f"{path}: [plan]",
    )
    try:  # field validation, naming the key
        PlanConfig(pool=Path(exp.pool), budget=min(cast(list[int], exp.budgets)), **plan)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    name = exp.name or path.stem
    out = Path(run_dir) if run_dir is not None else None
    out = out or (
        (path.parent / exp.run_dir).resolve()
        if exp.run_dir
        else Path("runs") / f"experiment-{name}"
    )
    return ExperimentConfig(
        path=path,
        run_dir=out,
        experiment=exp,
        plan=plan,
        selector=_section(path, raw, SelectorConfig),
        engine=engine,
        baseline=baseline,
        finetune=_section(path, raw, FinetuneConfig),
        evaluate=_section(path, raw, EvaluateConfig),
    )


def _resolve_paths(path: Path, exp: ExperimentTable, pool: Path | str | None) -> None:
    """The pool (or the dry run's ``pool``) and the test set, relative to the file, must exist."""
    here = path.parent
    found = Path(pool).resolve() if pool is not None else (here / exp.pool).resolve()
    if not found.exists():
        raise UserError(
            f"{path}: [experiment] pool = {exp.pool!r}: {found} does not exist. Download it, or "
            "for a dry run point --pool at a copy."
        )
    test_set = (here / exp.test_set).resolve()
    if not test_set.exists():
        raise UserError(
            f"{path}: [experiment] test_set = {exp.test_set!r}: {test_set} does not exist."
        )
    exp.pool, exp.test_set = str(found), str(test_set)


def _methods(methods: Any) -> list[str]:
    if not isinstance(methods, list) or not methods:
        raise UserError('[experiment] methods must be a non-empty list, e.g. ["select", "random"].')
    for m in methods:
        name, _, variant = str(m).partition(":")
        if name != "select" and name not in BASELINES and name not in DEPRECATED:
            raise UserError(
                f"[experiment] methods: unknown method '{m}'. Known: select, {', '.join(BASELINES)} "
                f"(variants: {_variants_help()})."
            )
        if variant and variant not in VARIANTS.get(name, ()):
            raise UserError(
                f"[experiment] methods: '{m}' has an unknown variant '{variant}'. Known: "
                f"{_variants_help()}."
            )
    return [str(m) for m in methods]


def _variants_help() -> str:
    return ", ".join(
        f"{name}:{'|'.join(v)}" for name, v in VARIANTS.items() if name not in DEPRECATED
    )
