"""Human summaries printed by the CLI (rich tables over the JSON summaries the pipeline returns)."""

from __future__ import annotations

from typing import Any


def _table(title: str, rows: list[tuple[str, Any]]):  # noqa: ANN202 - rich type
    from rich.table import Table

    t = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def print_plan_summary(s: dict[str, Any], console: Any) -> None:
    pool, emb, cl, sub, tok = (
        s["pool"],
        s["embeddings"],
        s["clusters"],
        s["subsets"],
        s["prompt_tokens_estimate"],
    )
    console.print(
        _table(
            "Pool",
            [
                ("file", f"{pool['path']} ({pool['format']}, schema: {pool['schema']})"),
                ("rows read", pool["rows_read"]),
                ("kept", pool["kept"]),
                (
                    "dropped",
                    f"{pool['duplicates_dropped']} duplicates, {pool['empty_dropped']} empty, "
                    f"{pool['bad_rows_skipped']} bad rows skipped",
                ),
            ],
        )
    )
    console.print(
        _table(
            "Embeddings and clusters",
            [
                ("embedder", f"{emb['model']} (dim {emb['dim']})"),
                ("embeddings", "reused from cache" if emb["cached"] else "computed and cached"),
                ("K (clusters = candidates per prompt)", cl["k"]),
                ("cluster sizes", f"{cl['min_size']}..{cl['max_size']}"),
            ],
        )
    )
    rounds = sub["rounds_expected"]
    console.print(
        _table(
            "Prompt plan",
            [
                ("layout", sub["layout"]),
                ("subsets (prompts)", sub["count"]),
                ("candidates per subset", f"{sub['candidates_min']}..{sub['candidates_max']}"),
                (
                    "picks per subset",
                    f"{sub['picks_min']}..{sub['picks_max']} (total {sub['picks_total']})",
                ),
                ("budget", s["budget"]),
                ("rounds", "1" if rounds == 1 else f"{rounds} (tournament: budget < subsets)"),
                ("subsets needing no LLM call", sub["subsets_needing_no_call"]),
                (
                    "prompt tokens (round one)",
                    f"{tok.get('total', 0):,} in {tok.get('prompts', 0)} prompts, "
                    f"max {tok.get('max_per_prompt', 0):,} per prompt ({tok.get('method', '')})",
                ),
            ],
        )
    )
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items())
    console.print(f"[dim]Run directory: {s['run_dir']}  ({secs})[/]")
