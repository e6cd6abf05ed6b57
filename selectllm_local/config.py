"""Typed, validated configuration.

Precedence: defaults < config file (TOML, ``--config``) < command-line flags. Each config is a
dataclass validated in ``__post_init__`` with messages that name the flag to change, and the fully
resolved config is saved with every output (``config.json`` in the run directory).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomllib

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
