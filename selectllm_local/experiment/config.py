"""The experiment config file, read and checked in full before any heavy work starts.

A TOML (or YAML, when PyYAML is installed) file with sections ``[experiment]`` (pool, test set,
models, methods x budgets x seeds), ``[plan]`` (PlanConfig keys), ``[select]`` (the selector:
``model`` plus select options), ``[baselines]``, ``[finetune]`` (FinetuneConfig keys) and
``[evaluate]``. Relative paths are relative to the config file. Every error names the section and
key to fix. ``configs/paper_dolly.toml`` documents every key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectllm_local.baselines import BASELINES, PERPLEXITY_BANDS
from selectllm_local.errors import UserError
from selectllm_local.finetune import FinetuneConfig
from selectllm_local.records import PoolItem

SECTIONS = ("experiment", "plan", "select", "baselines", "finetune", "evaluate")
EXPERIMENT_KEYS = {
    "name",
    "pool",
    "pool_limit",
    "test_set",
    "test_limit",
    "exclude_test_from_pool",
    "base_model",
    "methods",
    "budgets",
    "seeds",
    "run_dir",
    "finetune_subprocess",
}
BASELINE_KEYS = {"perplexity_model", "perplexity_band", "perplexity_batch_size", "diversity_sample"}
EVALUATE_KEYS = {"backend", "max_new_tokens", "batch_size", "max_prompt_tokens"}
PLAN_EXCLUDED = {"pool", "budget", "seed", "run_dir"}  # set per cell by the experiment
VARIANTS = {"length": ("shortest", "longest"), "perplexity": PERPLEXITY_BANDS}


@dataclass
class ExperimentConfig:
    path: Path
    run_dir: Path
    name: str
    pool: Path
    pool_items: list[PoolItem]
    test_set: Path
    test_limit: int | None
    test_key: str
    test_overlap: int
    base_model: str
    methods: list[str]
    budgets: list[int]
    seeds: list[int]
    finetune: FinetuneConfig
    finetune_subprocess: bool
    plan: dict[str, Any] = field(default_factory=dict)
    select: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "pool_items"
        }
        d["finetune"] = self.finetune.to_dict()
        d["pool_rows"] = len(self.pool_items)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    def finetune_for_seed(self, seed: int) -> FinetuneConfig:
        return dataclasses.replace(self.finetune, seed=seed)

    def baseline_options(self, name: str, variant: str) -> dict[str, Any]:
        b = self.baselines
        if name == "length":
            return {"shortest": variant == "shortest"}
        if name == "perplexity":
            return {
                "scorer": b.get("perplexity_model", self.base_model),
                "band": variant or b.get("perplexity_band", "high"),
                "batch_size": int(b.get("perplexity_batch_size", 16)),
            }
        if name == "diversity" and "diversity_sample" in b:
            return {"sample_size": int(b["diversity_sample"])}
        return {}

    def select_config(self, plan_cfg: Any, selector: Path) -> Any:
        """The select run's config for one cell (plan fields shared with the baselines)."""
        from selectllm_local.config import SelectConfig

        opts = {k: v for k, v in self.select.items() if k != "model"}
        fields = {f.name for f in dataclasses.fields(SelectConfig)}
        plan_fields = {k: v for k, v in plan_cfg.to_dict().items() if k in fields}
        return SelectConfig(**plan_fields, model=str(selector), **opts)


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"Experiment config {path} does not exist. Check the CONFIG argument.")
    text = path.read_text("utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise UserError(
                    f"{path} is YAML, which needs PyYAML (pip install pyyaml); or write it as TOML."
                ) from exc
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"Experiment config {path} is not valid TOML: {exc}.") from exc
    if not isinstance(data, dict):
        raise UserError(f"Experiment config {path} must be a table of sections.")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(
            f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}."
        )
    return {s: {k.replace("-", "_"): v for k, v in (data.get(s) or {}).items()} for s in SECTIONS}


def _check_keys(path: Path, section: str, values: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"{path}: [{section}] has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
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


def _model_ok(spec: str, path: Path, key: str) -> None:
    from selectllm_local.tinymodel import SHAPES

    if spec.startswith("tiny:"):
        if spec.removeprefix("tiny:") not in SHAPES:
            raise UserError(f"{path}: {key} = '{spec}': unknown shape; known: {', '.join(SHAPES)}.")
    elif not Path(spec).exists():
        raise UserError(
            f"{path}: {key} = '{spec}' does not exist. Give a local model directory (download it "
            "first), or 'tiny:<shape>' for a random-weight test model."
        )


def load_experiment_config(path: Path, *, run_dir: Path | str | None = None) -> ExperimentConfig:
    """Read and validate everything (files, models, methods, budgets, recipe) up front."""
    from selectllm_local import data
    from selectllm_local.evaluate import EVAL_BACKENDS, load_testset
    from selectllm_local.runstore import stable_hash

    path = Path(path).resolve()
    raw = _read(path)
    exp = raw["experiment"]
    _check_keys(path, "experiment", exp, EXPERIMENT_KEYS)
    here = path.parent

    def rel(key: str, required: bool = True) -> Path | None:
        if key not in exp:
            if required:
                raise UserError(f"{path}: [experiment] {key} is missing.")
            return None
        return (here / str(exp[key])).resolve()

    pool = rel("pool")
    test_set = rel("test_set")
    assert pool is not None and test_set is not None
    if not pool.exists():
        raise UserError(f"{path}: [experiment] pool = {exp['pool']!r}: {pool} does not exist.")
    if not test_set.exists():
        raise UserError(
            f"{path}: [experiment] test_set = {exp['test_set']!r}: {test_set} does not exist."
        )
    test_limit = exp.get("test_limit")
    tests = load_testset(test_set, limit=test_limit)
    items, _stats = data.load_pool(pool)
    overlap = 0
    if exp.get("exclude_test_from_pool", True):
        seen = {(t.instruction.strip(), t.input.strip()) for t in tests}
        kept = [it for it in items if (it.instruction.strip(), it.input.strip()) not in seen]
        overlap = len(items) - len(kept)
        items = kept
    limit = exp.get("pool_limit")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise UserError(
                f"{path}: [experiment] pool_limit must be a positive integer (got {limit!r})."
            )
        items = items[:limit]
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items)]
    missing = [it for it in items if not (it.output and it.output.strip())]
    if missing:
        raise UserError(
            f"{path}: [experiment] pool = {exp['pool']!r}: {len(missing)} of {len(items)} rows have no "
            f"response (first: source row {missing[0].source_row}). Every method fine-tunes on the "
            "responses of its picks, so the pool must be annotated."
        )

    methods = exp.get("methods")
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
    budgets = _int_list(path, "budgets", exp.get("budgets"))
    seeds = _int_list(path, "seeds", exp.get("seeds", [0]))
    bad = [b for b in budgets if not 1 <= b <= len(items)]
    if bad:
        raise UserError(
            f"{path}: [experiment] budgets {bad} outside 1..{len(items)}: the pool has {len(items)} "
            f"usable rows{' after pool_limit' if limit else ''}{f' ({overlap} test rows removed)' if overlap else ''}."
        )
    if "base_model" not in exp:
        raise UserError(f"{path}: [experiment] base_model is missing (the model to fine-tune).")
    base_model = str(exp["base_model"])
    if not base_model.startswith("tiny:"):
        base_model = (
            str((here / base_model).resolve()) if not Path(base_model).is_absolute() else base_model
        )
    _model_ok(base_model, path, "[experiment] base_model")

    select = dict(raw["select"])
    if "select" in methods:
        if "model" not in select:
            raise UserError(
                f"{path}: method 'select' needs [select] model (a local model directory)."
            )
        if (
            not str(select["model"]).startswith("tiny:")
            and not Path(str(select["model"])).is_absolute()
        ):
            select["model"] = str((here / str(select["model"])).resolve())
        _model_ok(str(select["model"]), path, "[select] model")
    baselines = dict(raw["baselines"])
    _check_keys(path, "baselines", baselines, BASELINE_KEYS)
    if "perplexity_model" in baselines and not str(baselines["perplexity_model"]).startswith(
        "tiny:"
    ):
        baselines["perplexity_model"] = str((here / str(baselines["perplexity_model"])).resolve())
    if any(str(m).startswith("perplexity") for m in methods):
        _model_ok(
            str(baselines.get("perplexity_model", base_model)), path, "[baselines] perplexity_model"
        )
    evaluate = dict(raw["evaluate"])
    _check_keys(path, "evaluate", evaluate, EVALUATE_KEYS)
    if evaluate.get("backend", "auto") not in EVAL_BACKENDS:
        raise UserError(f"{path}: [evaluate] backend must be one of {', '.join(EVAL_BACKENDS)}.")
    finetune = FinetuneConfig.from_mapping(raw["finetune"], where=f"{path}: [finetune]")

    from selectllm_local.config import PlanConfig

    plan = dict(raw["plan"])
    plan_keys = {f.name for f in dataclasses.fields(PlanConfig)} - PLAN_EXCLUDED
    _check_keys(path, "plan", plan, plan_keys)
    PlanConfig(pool=pool, budget=min(budgets), **plan)  # field validation, names the key
    if "select" in methods:
        try:
            from selectllm_local.config import SelectConfig
        except ImportError as exc:
            raise UserError("Method 'select' needs the selection engine, missing here.") from exc
        select_keys = {f.name for f in dataclasses.fields(SelectConfig)} - set(plan_keys)
        _check_keys(path, "select", select, select_keys - PLAN_EXCLUDED)

    default_dir = Path("runs") / f"experiment-{exp.get('name') or path.stem}"
    out = Path(run_dir) if run_dir is not None else (rel("run_dir", required=False) or default_dir)
    return ExperimentConfig(
        path=path,
        run_dir=out,
        name=str(exp.get("name") or path.stem),
        pool=pool,
        pool_items=items,
        test_set=test_set,
        test_limit=test_limit,
        test_key=stable_hash([(t.instruction, t.input, t.reference) for t in tests]),
        test_overlap=overlap,
        base_model=base_model,
        methods=[str(m) for m in methods],
        budgets=budgets,
        seeds=seeds,
        finetune=finetune,
        finetune_subprocess=bool(exp.get("finetune_subprocess", True)),
        plan=plan,
        select=select,
        baselines=baselines,
        evaluate=evaluate,
    )
