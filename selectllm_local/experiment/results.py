"""The experiment's results: paired comparisons with verdicts (``results.md``, ``results.csv``),
per-cell scores (``cells.csv``), mean ± std tables (``summary.csv``) and a plot.

Read from the cells' files only (``done.json`` and the per-row scores, see ``paired``), so the
tables can be rebuilt at any time, also while an experiment is half done (missing cells show as
"–" and are counted).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

from selectllm_local.experiment import paired, stats
from selectllm_local.run.store import atomic_path, read_json

log = logging.getLogger(__name__)

METRICS = tuple((m.key, m.label) for m in stats.METRICS)
LOWER_IS_BETTER = {m.key for m in stats.METRICS if not m.higher_is_better}
SCORES_NOTE = (
    "Each method's own mean ± std over its seeds. No method is marked best here: which "
    "differences are detectable is what the paired comparisons above say.\n\n"
)


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def stale_cells(root: Path, cells: list[str], finished: Collection[str] | None) -> frozenset[str]:
    """The cells that hold a ``done.json`` but are not in ``finished`` (the runner's verdict,
    ``keys._finished``: key and NLL key both the current config's); none when ``finished`` is
    None (a folder re-rendered from its files alone)."""
    if finished is None:
        return frozenset()
    return frozenset(
        n for n in cells if n not in finished and (root / "cells" / n / "done.json").exists()
    )


def collect(
    root: Path, cells: list[str], skip: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    rows = []
    for name in cells:
        cell = root / "cells" / name
        if name not in skip and (cell / "done.json").exists():
            d = paired.read_done(cell)
            rows.append(
                {
                    k: d.get(k)
                    for k in (
                        "method",
                        "budget",
                        "seed",
                        "rougeL_f1",
                        "cosine",
                        "reference_nll",
                        "n_test",
                        "train_loss",
                        "selection_seconds",
                        "seconds",
                    )
                }
            )
    return rows


def _metrics(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The metrics some finished cell has (the reference NLL only where it was measured)."""
    return [(k, lab) for k, lab in METRICS if any(r.get(k) is not None for r in rows)]


def summarise(
    rows: list[dict[str, Any]], methods: list[str], budgets: list[int]
) -> list[dict[str, Any]]:
    out = []
    for m in methods:
        for b in budgets:
            cell = [r for r in rows if r["method"] == m and r["budget"] == b]
            entry: dict[str, Any] = {"method": m, "budget": b, "seeds": len(cell)}
            for key, _ in METRICS:
                vals = [float(r[key]) for r in cell if r.get(key) is not None]
                if vals:
                    entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std(vals)
                else:
                    entry[f"{key}_mean"] = entry[f"{key}_std"] = None
            out.append(entry)
    return out


def planned_seeds(cells: list[str], methods: list[str]) -> dict[tuple[str, int], int]:
    """(method, budget) -> how many seeds the experiment runs it with (its cells' names)."""
    by_dir = {m.replace(":", "-"): m for m in methods}
    out: dict[tuple[str, int], int] = {}
    for name in cells:
        folder, _, leaf = name.partition("/")
        budget = int(leaf.split("-s")[0].removeprefix("b"))
        key = (by_dir.get(folder, folder), budget)
        out[key] = out.get(key, 0) + 1
    return out


def markdown_table(
    summary: list[dict[str, Any]],
    methods: list[str],
    budgets: list[int],
    planned: dict[tuple[str, int], int],
    metrics: list[tuple[str, str]] | None = None,
) -> str:
    """Mean ± std per method and budget. ``planned``: how many seeds each (method, budget) is
    run with; fewer finished reads "(1/3 seeds)", one planned with fewer seeds than the most
    reads "(2 seeds)" (its complete count)."""
    most = max(planned.values(), default=0)
    lines = []
    for key, label in METRICS if metrics is None else metrics:
        lines += [
            f"### {label} (mean ± std over seeds"
            + (", lower is better)" if key in LOWER_IS_BETTER else ")"),
            "",
        ]
        lines.append("| method | " + " | ".join(f"budget {b}" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for m in methods:
            cells = []
            for b in budgets:
                s = next(x for x in summary if x["method"] == m and x["budget"] == b)
                if s[f"{key}_mean"] is None:
                    cells.append("–")
                    continue
                txt = f"{s[f'{key}_mean']:.4f} ± {s[f'{key}_std']:.4f}"
                want = planned.get((m, b), most)
                if s["seeds"] < want:
                    txt += f" ({s['seeds']}/{want} seeds)"
                elif want < most:
                    txt += f" ({want} seed{'s' if want > 1 else ''})"
                cells.append(txt)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def plot(
    summary: list[dict[str, Any]],
    methods: list[str],
    budgets: list[int],
    path: Path,
    metrics: list[tuple[str, str]] | None = None,
) -> None:
    """Metric vs budget, one line per method, error bars = std over seeds (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(METRICS[:2] if not metrics else metrics)
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], shown, strict=True):
        for m in methods:
            pts = [s for s in summary if s["method"] == m and s[f"{key}_mean"] is not None]
            if not pts:
                continue
            ax.errorbar(
                [s["budget"] for s in pts],
                [s[f"{key}_mean"] for s in pts],
                yerr=[s[f"{key}_std"] for s in pts],
                marker="o",
                capsize=3,
                label=m,
                linewidth=2.5 if m == "select" else 1.2,
            )
        ax.set_xlabel("budget (instructions selected)")
        ax.set_ylabel(label)
        ax.set_xticks(budgets)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def selections_text(
    root: Path,
    methods: list[str],
    budgets: list[int],
    seeds: list[int],
    selection_seed: int | None,
    skip: frozenset[str] = frozenset(),
) -> str:
    """What the methods picked, before any training: pairwise overlap against the overlap two
    random selections would have, and the position bias of the LLM selections."""
    from selectllm_local.experiment.cells import Cell, plan_dir_of
    from selectllm_local.review.compare import run_position_bias
    from selectllm_local.review.diagnostics import overlap

    key = root / "data" / "pool.key.json"
    pool_size = int(read_json(key)["rows"]) if key.exists() else 0
    lines: list[str] = []
    for b in budgets:
        for seed in [selection_seed] if selection_seed is not None else seeds:
            picks: dict[str, list[int]] = {}
            for m in methods:
                cell_seeds = seeds if selection_seed is not None else [seed]
                for s in cell_seeds:  # with a shared selection, any finished seed's picks
                    name = Cell(m, b, s).name
                    p = root / "cells" / name / "selection.json"
                    if name not in skip and p.exists():
                        picks[m] = read_json(p)["indices"]
                        break
            done = [m for m in methods if m in picks]
            if len(done) < 2 or not pool_size:
                continue
            lines += [
                f"### Overlap of the selections (budget {b}, selection seed {seed}, pool {pool_size})",
                "",
                "Two independent random selections of these sizes would share |A|·|B|/N rows.",
                "",
                "| A | B | shared | random expectation | ratio | Jaccard |",
                "|---|---|---|---|---|---|",
            ]
            for i, a in enumerate(done):
                for m in done[i + 1 :]:
                    o = overlap(picks[a], picks[m], pool_size)
                    lines.append(
                        f"| {a} | {m} | {o.intersection} | {o.expected_intersection:.1f} | "
                        f"{o.ratio_to_random:.2f} | {o.jaccard:.3f} |"
                    )
            lines.append("")
            biased = []
            for m in (m for m in done if m.partition(":")[0] == "select"):
                run = plan_dir_of(root, m, b, seed)
                if (run / "responses.jsonl").exists() and (run / "subsets.jsonl").exists():
                    d = run_position_bias(run)
                    if d is not None:
                        top = max(d.positions, key=lambda r: r.share)
                        biased.append(
                            f"| {m} | {d.picks} | {top.position}: {top.share:.0%} "
                            f"(exp {top.expected_share:.0%}) | {d.p_value:.3g} | "
                            f"{'yes' if d.position_bias else 'no'} |"
                        )
            if biased:
                lines += [
                    f"### Position of the LLM's picks (budget {b}, selection seed {seed})",
                    "",
                    "| method | model picks | most picked position | chi-square p | flagged |",
                    "|---|---|---|---|---|",
                    *biased,
                    "",
                ]
    return "\n".join(lines)


def times_text(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """Mean wall seconds per stage and method: the selection's own time (``selection_seconds``,
    "–" where a cell did not record it), fine-tune, the answers and their scores (``evaluate``)
    and the reference NLL (``seconds``; "–" in a cell made before NLL was timed)."""
    lines = [
        "### Wall time per cell (mean seconds over seeds)",
        "",
        "| method | selection | finetune | evaluate | reference NLL | total |",
        "|---|---|---|---|---|---|",
    ]
    unknown = False
    for m in methods:
        cell = [r for r in rows if r["method"] == m]
        if not cell:
            continue
        sel = [float(r["selection_seconds"]) for r in cell
               if isinstance(r.get("selection_seconds"), int | float)]  # fmt: skip
        stages = [
            [float(r["seconds"][st]) for r in cell if isinstance(r.get("seconds"), dict)
             and isinstance(r["seconds"].get(st), int | float)]
            for st in ("finetune", "evaluate", "reference_nll")
        ]  # fmt: skip
        means = [sum(v) / len(v) if v else None for v in (sel, *stages)]
        known = [v for v in means if v is not None]
        whole = len(known) == len(means)
        total = f"{sum(known):.0f}" if whole else f"≥ {sum(known):.0f}"
        unknown = unknown or not whole
        cells = ["–" if v is None else f"{v:.0f}" for v in means]
        if sel and len(sel) < len(cell):
            cells[0] += f" ({len(sel)} of {len(cell)} cells)"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {total} |")
    if unknown:
        lines += [
            "",
            "–: the cells did not record that stage's time (`selection_seconds` or `seconds` in "
            "done.json); such totals are lower bounds.",
        ]
    return "\n".join(lines) + "\n"


def write_results(
    root: Path,
    methods: list[str],
    budgets: list[int],
    seeds: list[int],
    *,
    cells: list[str],
    selection_seed: int | None = None,
    finished: Collection[str] | None = None,
) -> tuple[Path, Path, Path, Path]:
    """Write results.md, results.csv (the paired comparisons), summary.csv, cells.csv and
    results.png into ``root``; returns the paths of results.md, results.csv, summary.csv and
    results.png.

    ``finished`` (the cells the runner found finished under the current config): a cell with a
    ``done.json`` outside it was made under an older config (a run stopped by ``--max-cells``
    after a config change); it is left out of every table and named in a note. None: every cell
    with a ``done.json`` counts (an exported folder re-rendered from its files).
    """
    stale = stale_cells(root, cells, finished)
    rows = collect(root, cells, stale)
    metrics = _metrics(rows)
    summary = summarise(rows, methods, budgets)
    comparisons, notes = paired.run_comparisons(root, methods, budgets, seeds, skip=stale)
    if stale:
        notes.append(
            f"{len(stale)} finished cell(s) hold results of an older config (their key or NLL "
            f"key differs from this config's) and are left out: {', '.join(sorted(stale))}. Re-run the "
            "experiment to redo them."
        )
    _write_csv(root / "results.csv", comparisons)
    _write_csv(root / "cells.csv", [{k: v for k, v in r.items() if k != "seconds"} for r in rows])
    _write_csv(root / "summary.csv", summary)
    md = paired.comparisons_text(comparisons, notes, budgets)
    md += (
        "\n## Scores per method\n\n"
        + SCORES_NOTE
        + markdown_table(summary, methods, budgets, planned_seeds(cells, methods), metrics)
    )
    md += "\n" + selections_text(root, methods, budgets, seeds, selection_seed, stale)
    md += "\n" + times_text(rows, methods)
    missing = len(cells) - len(rows)
    head = f"# Results: {len(rows)} of {len(cells)} cells done" + (
        f" ({missing} still to run: re-run the same command to finish them)" if missing else ""
    )
    with atomic_path(root / "results.md") as tmp:
        tmp.write_text(head + "\n\n" + md, "utf-8")
    plot(summary, methods, budgets, root / "results.png", metrics)
    return root / "results.md", root / "results.csv", root / "summary.csv", root / "results.png"
