"""Typed records that flow between pipeline stages.

Stages are plain functions over these records; they never read or write files themselves
(``pipeline.py`` and ``runstore.py`` do the I/O). Every record converts to and from a JSON-able
dict so the run directory is plain text a user can inspect. What a run reports (its summaries)
is typed in ``summaries.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any


def text_hash(text: str) -> str:
    """Stable short hash of a text (used for ids, embedding cache keys, dedup)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PoolItem:
    """One instruction of the pool, normalized.

    ``index`` is the position in the normalized pool (0..N-1, after duplicates and empty rows are
    dropped) and is what every later stage refers to. ``uid`` is a content hash, stable across
    re-orderings of the source file. ``source_row`` is the 1-based line (JSONL/CSV) or 0-based row
    (JSON list, Parquet, datasets) in the source, for error messages and provenance.
    """

    index: int
    uid: str
    source_row: int
    instruction: str
    input: str = ""
    output: str | None = None
    category: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PoolItem:
        return cls(**d)


@dataclass
class PoolStats:
    """What loading the pool found (shown by ``plan`` and saved in the manifest)."""

    path: str
    format: str
    schema: str  # "dolly" | "alpaca" | "sharegpt" | "custom"
    fields: dict[str, str | None]  # instruction/input/output/category -> source field name
    rows_read: int
    kept: int
    duplicates: int
    empty: int
    bad_rows: list[dict[str, Any]] = field(default_factory=list)  # {"row": n, "error": "..."}


@dataclass
class Subset:
    """One prompt: ``k`` picks to make among ``candidates`` (pool indices, in display order)."""

    id: int
    candidates: list[int]
    k: int
    clusters: list[int]  # cluster id of each candidate, aligned with ``candidates``
    round: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Subset:
        return cls(**d)


@dataclass
class Plan:
    """Output of the planning stages: balanced clusters and the round-one prompt plan."""

    n_clusters: int  # K = candidates per diverse subset
    labels: list[int]  # balanced cluster id per pool index
    layout: str  # "diverse" | "cluster" | "random"
    budget: int
    subsets: list[Subset]
    rounds_expected: int  # 1 unless budget < number of subsets (tournament)

    @property
    def cluster_sizes(self) -> list[int]:
        sizes = [0] * self.n_clusters
        for lab in self.labels:
            sizes[lab] += 1
        return sizes


@dataclass
class Generation:
    """What a backend returns for one prompt."""

    text: str
    prompt_tokens: int
    output_tokens: int
    # logprob mode: score per candidate label (higher = more preferred), aligned with candidates
    scores: list[float] | None = None
    # the generated token ids, where the engine reports them (a final stop token may be included)
    token_ids: list[int] | None = None


@dataclass
class SubsetResult:
    """One finished subset: appended to ``responses.jsonl`` as soon as it is done."""

    subset_id: int
    round: int
    picks: list[int]  # pool indices chosen, in the order the model gave them
    positions: list[int]  # 1-based display positions of the picks
    raw: list[str]  # raw answer text of every attempt
    attempts: int  # LLM calls spent on this subset (0 = no call needed)
    fallback: bool  # True if picks came from the deterministic fallback
    errors: list[str]  # validation error of each failed attempt
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    reasons: dict[int, str] = field(default_factory=dict)  # pool index -> reason (reasons prompt)
    scores: list[float] | None = None  # logprob mode: score per candidate (display order)
    # logprob mode: k-th best minus (k+1)-th best score, and whether it was within the tie
    # tolerance, so the seeded tie rule chose (``picks.top_k_tied``)
    margin: float | None = None
    tie_rule: bool = False
    # the stable name of each error in ``errors``, set where it was found (``selection.parse``)
    error_kinds: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = {str(k): v for k, v in self.reasons.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubsetResult:
        d = dict(d)
        d["reasons"] = {int(k): v for k, v in d.get("reasons", {}).items()}
        if len(d.get("error_kinds", [])) != len(d.get("errors", [])):  # written before kinds
            d["error_kinds"] = [_legacy_error_kind(e) for e in d.get("errors", [])]
        return cls(**d)


def _legacy_error_kind(message: str) -> str:
    """The kind of an error in a ``responses.jsonl`` line written before kinds were recorded:
    read from the message, whose wording that code fixed (new lines carry ``error_kinds``)."""
    for prefix, kind in (
        ("empty", "empty"),
        ("no identifiers", "no_ids"),
        ("id 0", "zero"),
        ("id out of range", "out_of_range"),
        ("duplicate", "duplicate"),
        ("too few", "too_few"),
        ("too many", "too_many"),
        ("not an integer", "not_integer"),
        ("no answer", "no_answer"),
    ):
        if message.startswith(prefix):
            return kind
    return "other"
