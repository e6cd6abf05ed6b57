"""Typed records that flow between pipeline stages.

Stages are plain functions over these records; they never read or write files themselves
(``pipeline.py`` and ``runstore.py`` do the I/O). Every record converts to and from a JSON-able
dict so the run directory is plain text a user can inspect.
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


# -- summaries: what a run reports (summary.json, plan_summary.json and ``--json``) ----------
#
# One dataclass per summary, nested like the JSON it writes: ``to_dict()`` is the only way a
# summary becomes JSON, so the file and ``--json`` cannot disagree, and the CLI renders from the
# typed fields. ``from_dict`` reads a summary back (the run report and ``compare`` read old runs).


def _plain(obj: Any) -> Any:
    """``asdict`` that leaves out optional sections that are None (``ray``, ``ties``)."""
    return {k: v for k, v in asdict(obj).items() if v is not None or k not in obj.OPTIONAL}


@dataclass
class PoolSummary:
    path: str
    format: str
    schema: str
    fields: dict[str, str | None]
    rows_read: int
    kept: int
    duplicates_dropped: int
    empty_dropped: int
    bad_rows_skipped: int

    @classmethod
    def of(cls, stats: PoolStats) -> PoolSummary:
        return cls(
            path=stats.path,
            format=stats.format,
            schema=stats.schema,
            fields=stats.fields,
            rows_read=stats.rows_read,
            kept=stats.kept,
            duplicates_dropped=stats.duplicates,
            empty_dropped=stats.empty,
            bad_rows_skipped=len(stats.bad_rows),
        )


@dataclass
class EmbeddingSummary:
    model: str
    dim: int
    cached: bool


@dataclass
class ClusterSummary:
    k: int
    min_size: int
    max_size: int
    reused: bool
    kmeans_device: str


@dataclass
class SubsetSummary:
    layout: str
    count: int
    candidates_min: int
    candidates_max: int
    picks_total: int
    picks_min: int
    picks_max: int
    rounds_expected: int
    subsets_needing_no_call: int

    @classmethod
    def of(cls, plan: Plan) -> SubsetSummary:
        picks = [s.k for s in plan.subsets]
        cand = [len(s.candidates) for s in plan.subsets]
        return cls(
            layout=plan.layout,
            count=len(plan.subsets),
            candidates_min=min(cand),
            candidates_max=max(cand),
            picks_total=sum(picks),
            picks_min=min(picks),
            picks_max=max(picks),
            rounds_expected=plan.rounds_expected,
            subsets_needing_no_call=sum(1 for s in plan.subsets if s.k >= len(s.candidates)),
        )


@dataclass
class PlanSummary:
    """``plan_summary.json`` and ``plan --json``: the pool, embeddings, clusters and prompts."""

    run_dir: str
    pool: PoolSummary
    embeddings: EmbeddingSummary
    clusters: ClusterSummary
    subsets: SubsetSummary
    budget: int
    prompt_tokens_estimate: dict[str, Any]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TieCounts:
    """Logprob mode: how many scored subsets the seeded tie rule decided (``picks.top_k_tied``)."""

    tolerance: float
    scored: int
    decided_by_tie_rule: int
    min_margin: float
    median_margin: float


@dataclass
class SelectionCounts:
    """What happened to the subsets: answered first try, retried, fallen back, resumed."""

    OPTIONAL = ("ties",)

    subsets: int
    asked: int
    no_call: int
    valid_first_try: int
    retried: int
    fallback: int
    invalid_answers: int
    errors: dict[str, int]  # error kind -> count (``selection.parse`` names the kinds)
    sent_this_run: int
    resumed: int
    prompt_tokens: int
    output_tokens: int
    rounds: int
    ties: TieCounts | None = None
    prompts_sent_this_run: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectionCounts:
        d = dict(d)
        ties = d.pop("ties", None)
        return cls(**d, ties=TieCounts(**ties) if ties else None)


@dataclass
class TokenCounts:
    """Tokens the engine read and wrote in this run (its counters' change)."""

    prompt: int
    output: int
    cached_prompt: int
    padding: int


@dataclass
class Throughput:
    """Rates over the engine's own seconds; None when it reported none (no call made)."""

    prompts_per_s: float | None
    prompt_tokens_per_s: float | None
    output_tokens_per_s: float | None


@dataclass
class SelectSummary:
    """``summary.json`` and ``select --json``: what the selection did, cost and wrote."""

    OPTIONAL = ("ray",)

    run_dir: str
    pool: int
    budget: int
    selected: int
    model: str | None
    backend: str
    mode: str
    reasons: bool
    llm_called: bool
    note: str | None
    rounds: int
    kmeans_device: str
    counts: SelectionCounts
    position_bias: dict[str, Any] | None
    tokens_this_run: TokenCounts
    throughput: Throughput
    seconds: dict[str, float]
    files: dict[str, str]
    ray: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
        d["counts"] = self.counts.to_dict()
        return d


@dataclass
class BaselineSummary:
    """A baseline's ``summary.json`` and ``baseline --json``."""

    OPTIONAL = ("ifd",)

    method: str
    pool: int
    budget: int
    selected: int
    seed: int
    options: dict[str, str]
    scorer: str | None
    seconds: float
    files: dict[str, str]
    ifd: dict[str, Any] | None = None  # the likelihood baselines: how the IFD scores came out

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class FinetuneSummary:
    """``finetune --json``: the adapter, the training log, and how training went (when this
    process trained; the numbers come from ``train_summary.json``)."""

    OPTIONAL = ("train_loss", "optimizer_steps", "seconds")

    adapter: str
    train_log: str
    train_loss: float | None = None
    optimizer_steps: int | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)
