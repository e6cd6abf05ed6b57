"""Human summaries the CLI prints: rich renderables over the results the library returns.

The same results are what ``--json`` prints, so what a person reads and what a script parses
never disagree. Nothing here prints; the CLI does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selectllm_local.baselines.run import BaselineOutcome
    from selectllm_local.data.splits import SplitOutcome
    from selectllm_local.evaluation.evaluate import EvalOutcome
    from selectllm_local.experiment.runner import ExperimentOutcome
    from selectllm_local.models.registry import ModelsList
    from selectllm_local.review.compare import Comparison, SelectionDiagnostics
    from selectllm_local.review.diagnostics import PositionBias
    from selectllm_local.run.pipeline import SelectOutcome
    from selectllm_local.summaries import FinetuneSummary, PlanSummary, RaySummary, TieCounts


def _table(title: str, rows: list[tuple[str, Any]]):  # noqa: ANN202 - rich type
    from rich.table import Table

    t = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def plan_text(s: PlanSummary) -> Any:
    """Pool, embeddings and clusters, and the prompt plan of a ``plan_run`` summary."""
    from rich.console import Group

    pool, emb, cl, sub, tok = s.pool, s.embeddings, s.clusters, s.subsets, s.prompt_tokens_estimate
    rounds = sub.rounds_expected
    return Group(
        _table(
            "Pool",
            [
                ("file", f"{pool.path} ({pool.format}, schema: {pool.schema})"),
                ("rows read", pool.rows_read),
                ("kept", pool.kept),
                (
                    "dropped",
                    f"{pool.duplicates_dropped} duplicates, {pool.empty_dropped} empty, "
                    f"{pool.bad_rows_skipped} bad rows skipped",
                ),
            ],
        ),
        _table(
            "Embeddings and clusters",
            [
                ("embedder", f"{emb.model} (dim {emb.dim})"),
                ("embeddings", "reused from cache" if emb.cached else "computed and cached"),
                ("K (clusters = candidates per prompt)", cl.k),
                ("cluster sizes", f"{cl.min_size}..{cl.max_size}"),
            ],
        ),
        _table(
            "Prompt plan",
            [
                ("layout", sub.layout),
                ("subsets (prompts)", sub.count),
                ("candidates per subset", f"{sub.candidates_min}..{sub.candidates_max}"),
                ("picks per subset", f"{sub.picks_min}..{sub.picks_max} (total {sub.picks_total})"),
                ("budget", s.budget),
                ("rounds", "1" if rounds == 1 else f"{rounds} (tournament: budget < subsets)"),
                ("subsets needing no LLM call", sub.subsets_needing_no_call),
                (
                    "prompt tokens (round one)",
                    f"{tok.total:,} in {tok.prompts} prompts, "
                    f"max {tok.max_per_prompt:,} per prompt ({tok.method})",
                ),
            ],
        ),
        f"[dim]Run directory: {s.run_dir}  "
        f"({', '.join(f'{k} {v:.1f}s' for k, v in s.seconds.items())})[/]",
    )


def select_text(outcome: SelectOutcome) -> str:
    """Counts, tokens, files and report of a ``select_run`` outcome (the run wrote them all)."""
    s = outcome.summary
    c, tp, tokens = s.counts, s.throughput, s.tokens_this_run
    rate = (
        f"; {tp.prompts_per_s} prompts/s, {tp.prompt_tokens_per_s} prompt tokens/s"
        if tp.prompts_per_s is not None
        else ""
    )
    lines = [
        f"Selected [bold]{s.selected}[/] of {s.pool} instructions "
        f"({s.rounds} round(s), backend {s.backend}, mode {s.mode}).",
        *([s.note] if s.note else []),
        f"Subsets: {c.subsets} ({c.no_call} needed no call, {c.resumed} resumed), "
        f"valid first try {c.valid_first_try}, retried {c.retried}, fallback {c.fallback}.",
        f"Tokens this run: {tokens.prompt} prompt, {tokens.output} output{rate}. "
        f"Total {s.seconds.total} s.",
        *_ray_lines(s.ray),
        *_tie_lines(c.ties),
        *_position_markup(s.position_bias, s.llm_called),
        f"Wrote {outcome.files.selected} and {outcome.run_dir / 'summary.json'}.",
        *([f"Report: {outcome.report} (open it in a browser)."] if outcome.report else []),
    ]
    return "\n".join(lines)


def _ray_lines(ray: RaySummary | None) -> list[str]:
    if ray is None:
        return []
    return [
        f"Ray: {ray.actors} actors, {ray.shards} shards, {ray.shards_requeued} "
        f"re-queued, {ray.actor_restarts} actor restarts."
    ]


def _tie_lines(ties: TieCounts | None) -> list[str]:
    if ties is None:
        return []
    return [
        f"Near-ties: {ties.decided_by_tie_rule} of {ties.scored} scored subsets within "
        f"{ties.tolerance:g} nats of the cut, decided by the seeded tie rule; smallest margin "
        f"{ties.min_margin:.2g}."
    ]


def _position_markup(bias: PositionBias | None, llm_called: bool) -> list[str]:
    """The position-bias lines of a summary, the warning in bold yellow."""
    from rich.markup import escape

    from selectllm_local.review.diagnostics import position_lines

    if bias is None and not llm_called:
        return []
    return [
        f"[bold yellow]{escape(line)}[/]" if line.startswith("Warning:") else escape(line)
        for line in position_lines(bias)
    ]


def compare_text(result: Comparison) -> Any:
    """Overlap with its random expectation, then both selections' diagnostics side by side."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    a, b, ov, pool = result.a, result.b, result.overlap, result.same_pool
    parts: list[Any] = [
        f"A: {escape(a.run_dir)} ({escape(a.name)})",
        f"B: {escape(b.run_dir)} ({escape(b.name)})",
        f"Same pool of {pool.rows} rows (checked by {pool.checked_by}).",
        f"[bold]Overlap: {ov.intersection} of {ov.a} and {ov.b} picks shared "
        f"(Jaccard {ov.jaccard:.3f}).[/] Two independent random selections of these sizes "
        f"share {ov.expected_intersection:.1f} on average (|A|·|B|/N): "
        + (f"{ov.ratio_to_random:.2f}x chance." if ov.ratio_to_random is not None else "-"),
    ]
    t = Table(title="Diagnostics", title_justify="left", box=None, pad_edge=False)
    for col in ("", "A", "B", "pool"):
        t.add_column(col, style="bold cyan" if not col else None)
    for row in _diagnostic_rows(a, b):
        t.add_row(*(escape(str(x)) for x in row))
    parts.append(t)
    for tag, d in (("A", a), ("B", b)):
        if d.position_bias and d.position_bias.warning:
            parts.append(f"[bold yellow]{tag}: {escape(d.position_bias.warning)}[/]")
    return Group(*parts)


def _diagnostic_rows(
    a: SelectionDiagnostics, b: SelectionDiagnostics
) -> list[tuple[str, str, str, str]]:
    def pos(d: SelectionDiagnostics, what: str) -> str:
        pb = d.position_bias
        if pb is None:
            return "-"
        if what == "flag":
            return "yes" if pb.position_bias else "no"
        if what == "p":
            return f"{pb.p_value:.3g}"
        first = pb.positions[0]
        return f"{first.share:.0%} (exp {first.expected_share:.0%})"

    def words(d: SelectionDiagnostics, which: str) -> str:
        p = d.preferences
        return "-" if p is None else str(getattr(p.length_words, which))

    def shares(d: SelectionDiagnostics, group: str) -> str:
        g = None if d.preferences is None else getattr(d.preferences, group)
        return "-" if g is None else f"{g.covered} of {g.of}, TV {g.total_variation:.3f}"

    prefs = a.preferences or b.preferences
    pool_len = prefs.length_words if prefs is not None else None
    return [
        ("picks", str(a.selected), str(b.selected), str(a.pool)),
        ("position bias flagged", pos(a, "flag"), pos(b, "flag"), ""),
        ("position chi-square p", pos(a, "p"), pos(b, "p"), ""),
        ("position 1 share", pos(a, "first"), pos(b, "first"), ""),
        ("mean words (instr.+input)", words(a, "selected_mean"), words(b, "selected_mean"),
         str(pool_len.pool_mean) if pool_len is not None else "-"),
        ("median words", words(a, "selected_median"), words(b, "selected_median"),
         str(pool_len.pool_median) if pool_len is not None else "-"),
        ("categories covered, TV vs pool", shares(a, "categories"), shares(b, "categories"), ""),
        ("clusters covered, TV vs pool", shares(a, "clusters"), shares(b, "clusters"), ""),
    ]  # fmt: skip


def baseline_text(outcome: BaselineOutcome) -> str:
    return (
        f"{outcome.name}: selected {len(outcome.indices)} of {outcome.summary.pool} "
        f"instructions -> {outcome.out_dir / 'selected.jsonl'}"
    )


def split_text(outcome: SplitOutcome) -> str:
    return (
        f"{outcome.source_rows} rows -> {outcome.pool_rows} in {outcome.pool_path}, "
        f"{outcome.test_rows} in {outcome.test_path} (seed {outcome.seed})"
    )


def finetune_text(s: FinetuneSummary) -> str:
    trained = ""
    if s.train_loss is not None:
        trained = (
            f"trained {s.optimizer_steps} steps in {s.seconds or 0:.0f} s, "
            f"final train loss {s.train_loss:.4f}; "
        )
    return f"{trained}adapter written to {s.adapter}; training log {s.train_log}"


def evaluate_text(outcome: EvalOutcome) -> str:
    nll = outcome.reference_nll
    return (
        f"Rouge-L F1 {outcome.rougeL_f1:.4f}, cosine {outcome.cosine:.4f} on {outcome.n} "
        f"examples ({outcome.backend}); per-example outputs in {outcome.out_dir / 'predictions.jsonl'}"
        + (
            f"\nReference NLL {nll:.4f} nats per token on {outcome.nll_rows} examples (lower is "
            f"better); per-row values in {outcome.out_dir / 'reference_nll.jsonl'}"
            if nll is not None
            else ""
        )
    )


def experiment_text(outcome: ExperimentOutcome) -> Any:
    """The results table (when written) and what ran, was skipped or is left."""
    from rich.console import Group
    from rich.text import Text

    table = outcome.table_md.read_text("utf-8") if outcome.table_md is not None else ""
    return Group(
        Text(table),
        f"{len(outcome.cells_run)} cells run, {len(outcome.cells_skipped)} already done, "
        f"{len(outcome.cells_pending)} left; table {outcome.table_md}, plot {outcome.plot}",
    )


def models_text(doc: ModelsList) -> str:
    lines = [f"Known models (cache: {doc.cache}):"]
    for m in doc.models:
        lines.append(f"  {m.name}  {m.kind}, {m.params} parameters, {m.license}")
        where = m.path and f"cached at {m.path}"
        lines.append(f"      {where or 'not cached: selectllm models fetch ' + m.name}")
    lines.append("Use one with --model NAME (or --model FILE.gguf for any GGUF file).")
    return "\n".join(lines)
