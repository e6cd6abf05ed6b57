"""Typed summaries: what a run reports (``summary.json``, ``plan_summary.json`` and ``--json``).

One dataclass per summary, nested like the JSON it writes: ``to_dict()`` is the only way a
summary becomes JSON, so the file and ``--json`` cannot disagree, and the CLI renders from the
typed fields (``cli/summaries.py``). ``from_dict`` reads a summary back (the run report and
``compare`` read old runs). The records that flow between the stages are in ``records.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from selectllm_local.records import Plan, PoolStats

if TYPE_CHECKING:
    from selectllm_local.baselines.ifd import IFDScores
    from selectllm_local.review.diagnostics import PositionBias
    from selectllm_local.selection.prompttokens import PromptTokenEstimate


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
    prompt_tokens_estimate: PromptTokenEstimate
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
class SelectSeconds:
    """Wall seconds of a ``select`` run, flat in the JSON: the planning stages as ``plan_run``
    timed them, then the engine's start, the selection (less that start), the engine's own
    seconds, the writing and the total."""

    planning: dict[str, float]
    model_load: float
    select: float
    engine: float
    write: float
    total: float

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        return {**d.pop("planning"), **d}


@dataclass
class SelectFiles:
    """The files a ``select`` run wrote, flat in the JSON (``extra``: the ``--format`` file, by
    its format)."""

    selected: str
    responses: str
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, str]:
        return {"selected": self.selected, "responses": self.responses, **self.extra}


@dataclass
class RaySummary:
    """A run served by Ray actors (``Backend.ray_summary``): the actors, and how the shards of
    prompts went (``ray_dispatch.ShardDispatcher.counters``)."""

    address: str | None
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    shards: int
    shards_requeued: int
    actor_restarts: int
    prompts_unanswered: int
    actor_seconds: float


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
    position_bias: PositionBias | None
    tokens_this_run: TokenCounts
    throughput: Throughput
    seconds: SelectSeconds
    files: SelectFiles
    ray: RaySummary | None = None

    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
        d["counts"] = self.counts.to_dict()
        d["seconds"] = self.seconds.to_dict()
        d["files"] = self.files.to_dict()
        return d


@dataclass
class IfdSummary:
    """How a likelihood baseline's IFD scores came out (``baselines.ifd.IFDScores``)."""

    rows_scored: int
    rows_unscorable: int
    rows_ifd_at_least_1: int  # noise by Superfiltering's rule: dropped
    scored_now: int
    from_cache: int
    scoring_seconds: float

    @classmethod
    def of(cls, scores: IFDScores) -> IfdSummary:
        valid = np.isfinite(scores.ifd)
        return cls(
            rows_scored=int(valid.sum()),
            rows_unscorable=int((~valid).sum()),
            rows_ifd_at_least_1=int((scores.ifd[valid] >= 1).sum()),
            scored_now=scores.scored_now,
            from_cache=scores.cached,
            scoring_seconds=round(scores.seconds, 3),
        )


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
    ifd: IfdSummary | None = None  # the likelihood baselines: how the IFD scores came out

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


@dataclass(frozen=True)
class InputsSummary:
    """The ``data`` block of ``experiment.json``: how many rows each part of the data has."""

    pool_rows: int
    test_rows: int
    """Test rows answered (Rouge-L, cosine)."""
    nll_test_rows: int
    """Test rows whose reference NLL is scored (0: NLL off)."""
    test_overlap: int
    """Pool rows removed because they are test examples."""
    test_removed: dict[str, int]
    """Those rows by reason (``splits.TestOverlap``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
