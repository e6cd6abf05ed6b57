"""Typed, validated configuration.

Precedence: defaults < config file (TOML, ``--config``) < command-line flags. Each config is a
dataclass validated in ``__post_init__`` with messages that name the flag to change, and the fully
resolved config is saved with every output (``config.json`` in the run directory).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from selectllm_local.errors import UserError

LAYOUTS = ("diverse", "cluster", "random")
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_MAX_K = 32

T = TypeVar("T")


# Config fields whose command-line flag is not simply --field-name.
FLAG_NAMES = {"n_clusters": "--k", "pool": "POOL (argument)"}


def _flag(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


@dataclass
class PlanConfig:
    """Stages 1-5: load the pool, embed, cluster, balance, lay out subsets, allocate picks."""

    pool: Path
    """Pool file: JSONL, JSON list, CSV, Parquet, or a datasets folder saved with save_to_disk."""
    budget: int
    """How many instructions to select in the end (1 .. pool size)."""
    run_dir: Path | None = None
    """Run directory; default runs/<pool file stem>. Re-running on it resumes and reuses caches."""
    layout: str = "diverse"
    """Subset layout: diverse (one candidate per cluster, the paper), cluster (within one cluster), random."""
    n_clusters: int | None = None
    """K = candidates per diverse prompt; default round(pool/1000), at least 2, at most max_k."""
    max_k: int = DEFAULT_MAX_K
    """Cap on the default K so a prompt stays short (the paper's rule gives 1,000 for a 1M pool)."""
    seed: int = 0
    """Seed for k-means, layouts and pick allocation."""
    kmeans_iters: int = 20
    """FAISS k-means iterations."""
    embedder: str = DEFAULT_EMBEDDER
    """Sentence embedding model: the packaged all-MiniLM-L6-v2, a local path, or a hub id."""
    embed_batch_size: int = 64
    """Sentences per embedding batch (64 was fastest on a 2-core CPU)."""
    device: str | None = None
    """Device for embedding (cpu, cuda); default cuda when available."""
    instruction_field: str | None = None
    """Source field holding the instruction (default: auto-detected schema)."""
    input_field: str | None = None
    """Source field holding the input/context (optional)."""
    output_field: str | None = None
    """Source field holding the response (optional; never shown to the selector)."""
    category_field: str | None = None
    """Source field holding a category label (optional; used in reports)."""
    skip_bad_rows: bool = False
    """Skip malformed rows (reported with their line numbers) instead of stopping."""
    tokenizer: str | None = None
    """Tokenizer (local path) for the prompt-token estimate; default: a chars/4 heuristic."""
    offline: bool = False
    """Refuse any hub id (embedder, tokenizer): only local paths and packaged models."""

    def __post_init__(self) -> None:
        self.pool = Path(self.pool)
        if self.run_dir is not None:
            self.run_dir = Path(self.run_dir)
        if self.budget < 1:
            raise UserError(f"--budget must be at least 1 (got {self.budget}).")
        if self.layout not in LAYOUTS:
            raise UserError(f"--layout must be one of {', '.join(LAYOUTS)} (got '{self.layout}').")
        if self.n_clusters is not None and self.n_clusters < 2:
            raise UserError(
                f"--k (candidates per prompt) must be at least 2 (got {self.n_clusters})."
            )
        if self.max_k < 2:
            raise UserError(f"--max-k must be at least 2 (got {self.max_k}).")
        if self.kmeans_iters < 1:
            raise UserError(f"--kmeans-iters must be at least 1 (got {self.kmeans_iters}).")
        if self.embed_batch_size < 1:
            raise UserError(f"--embed-batch-size must be at least 1 (got {self.embed_batch_size}).")

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.pool.stem

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


BACKENDS = ("auto", "vllm", "transformers")
OUTPUT_FORMATS = ("jsonl", "parquet", "hf")


@dataclass
class SelectConfig(PlanConfig):
    """``select``: the plan stages, then the LLM's picks (``selection.py``) and the outputs."""

    model: str | None = None
    """Selector model: a local folder (never touches the network) or a hub id (not with --offline)."""
    backend: str = "auto"
    """LLM backend: auto (vLLM when installed, else transformers), vllm, transformers."""
    mode: str = "generate"
    """generate (the model writes ids) or logprobs (read label log-probabilities: a full ranking)."""
    reasons: bool = False
    """Also ask for a one-sentence reason per pick (prompts/select_reasons.j2; generate mode)."""
    prompt: Path | None = None
    """Jinja2 prompt template replacing prompts/select_ids.j2 (variables: prompts/README.md)."""
    criteria: Path | None = None
    """Criteria file replacing prompts/criteria/default.md (what 'worth annotating' means)."""
    max_candidate_tokens: int = 256
    """Candidates longer than this many tokens are cut (and marked) in the prompt."""
    min_candidate_tokens: int = 32
    """Floor when candidates are cut further to fit the model's context."""
    temperature: float = 0.0
    """Sampling temperature of the first attempt (0 = greedy, reproducible)."""
    retries: int = 1
    """Extra attempts for a subset whose answer is invalid, before the recorded fallback."""
    retry_temperature: float = 0.7
    """Temperature of retries (seeded)."""
    constrained: bool = True
    """Constrain decoding to the answer grammar (vLLM structured outputs; light gate in transformers)."""
    max_tokens: int | None = None
    """Answer length limit; default: enough for k ids (or k reasons)."""
    permutations: int = 1
    """Logprob mode: score this many cyclic shifts of each subset and average (position bias)."""
    dtype: str = "auto"
    """Model dtype: auto, bfloat16, float16, float32."""
    max_model_len: int | None = None
    """Context length to run the model with (default: the model's own)."""
    tensor_parallel_size: int = 1
    """vLLM: GPUs per model."""
    gpu_memory_utilization: float = 0.85
    """vLLM: share of GPU memory the engine may take."""
    max_num_seqs: int | None = None
    """vLLM: most sequences in flight at once (default: vLLM's)."""
    enable_prefix_caching: bool = True
    """vLLM: reuse the computed shared prompt prefix (system message, criteria)."""
    batch_size: int | None = None
    """transformers: most prompts per batch (batches group prompts of similar length); None:
    16 on CPU, sized from free GPU memory and prompt length on CUDA."""
    format: str = "jsonl"
    """Extra output format besides selected.jsonl: jsonl (none), parquet, hf (datasets folder)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt is not None:
            self.prompt = Path(self.prompt)
        if self.criteria is not None:
            self.criteria = Path(self.criteria)
        if self.backend not in BACKENDS:
            raise UserError(
                f"--backend must be one of {', '.join(BACKENDS)} (got '{self.backend}')."
            )
        if self.format not in OUTPUT_FORMATS:
            raise UserError(
                f"--format must be one of {', '.join(OUTPUT_FORMATS)} (got '{self.format}')."
            )
        if self.temperature < 0 or self.retry_temperature < 0:
            raise UserError("--temperature and --retry-temperature must be 0 or more.")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {self.batch_size}).")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise UserError("--gpu-memory-utilization must be in (0, 1].")
        self.selection_settings()  # validates mode, retries, token limits, permutations

    def selection_settings(self):  # noqa: ANN201 - selection.SelectionSettings (lazy import)
        from selectllm_local.selection import SelectionSettings

        return SelectionSettings(
            mode=self.mode,
            reasons=self.reasons,
            prompt=self.prompt,
            criteria=self.criteria,
            max_candidate_tokens=self.max_candidate_tokens,
            min_candidate_tokens=self.min_candidate_tokens,
            temperature=self.temperature,
            retries=self.retries,
            retry_temperature=self.retry_temperature,
            constrained=self.constrained,
            max_tokens=self.max_tokens,
            permutations=self.permutations,
            seed=self.seed,
        )

    def backend_options(self):  # noqa: ANN201 - backends.base.BackendOptions
        from selectllm_local.backends.base import BackendOptions

        return BackendOptions(
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            seed=self.seed,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_prefix_caching=self.enable_prefix_caching,
            max_num_seqs=self.max_num_seqs,
            batch_size=self.batch_size,
            device=self.device,
        )


def to_jsonable(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


def load_config_file(path: Path | None, section: str | None = None) -> dict[str, Any]:
    """Read a TOML config file (optionally one ``[section]`` of it); keys use field names."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise UserError(f"Config file {path} does not exist. Check the --config path.")
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"Config file {path} is not valid TOML: {exc}. Fix the file and retry."
        ) from exc
    if section is not None and isinstance(data.get(section), dict):
        data = {**{k: v for k, v in data.items() if not isinstance(v, dict)}, **data[section]}
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(
    cls: type[T], config_file: Path | None, flags: dict[str, Any], *, section: str | None = None
) -> T:
    """defaults < config file < flags (flags that are None were not given)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    from_file = load_config_file(config_file, section)
    unknown = sorted(k for k in from_file if k not in names and not isinstance(from_file[k], dict))
    if unknown:
        raise UserError(
            f"Config file {config_file} has unknown key(s): {', '.join(unknown)}. "
            f"Known keys: {', '.join(sorted(names))}."
        )
    merged = {k: v for k, v in from_file.items() if k in names}
    merged.update({k: v for k, v in flags.items() if v is not None and k in names})
    required = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in merged]
    if missing:
        raise UserError(
            f"Missing {', '.join(FLAG_NAMES.get(m, _flag(m)) for m in missing)}: give it on the command "
            f"line or as '{missing[0]}' in the --config file."
        )
    return cls(**merged)
