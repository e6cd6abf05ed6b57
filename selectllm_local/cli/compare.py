"""``compare``: overlap and diagnostics of two selections of one pool, or the paired metric
differences of two experiment cells."""

from __future__ import annotations

from typing import Any

from selectllm_local.cli.app import app
from selectllm_local.cli.options import command, emit
from selectllm_local.config import CompareCommand


@command(app, CompareCommand)
def compare(cfg: CompareCommand, *, json_out: bool) -> None:
    """Compare two selections (select runs or baselines) of one pool: overlap vs chance, position
    bias, length, category and cluster preferences. Given two finished experiment cells (or two
    method folders of cells), print their paired metric differences with 95% intervals over seeds
    and test rows, verdicts and minimum detectable effects."""
    from selectllm_local.cli import summaries
    from selectllm_local.review.compare import Comparison, compare_runs

    result = compare_runs(cfg.run_dir_a, cfg.run_dir_b)
    if isinstance(result, Comparison):
        runs = result
        emit(runs.to_dict(), json_out, lambda: summaries.compare_text(runs))
    else:
        cells = result
        emit(cells, json_out, lambda: _cells_text(cells))


def _cells_text(result: dict[str, Any]) -> Any:
    """The paired differences A - B as a table, then the overlap of the picks."""
    from rich.console import Group
    from rich.markup import escape

    from selectllm_local.experiment import stats
    from selectllm_local.experiment.stats import DRAWS, MDE_FACTOR

    a, b = result["a"], result["b"]
    parts: list[Any] = [
        f"A: {escape(a['path'])} ({len(a['cells'])} cell{'s' * (len(a['cells']) > 1)})",
        f"B: {escape(b['path'])} ({len(b['cells'])} cell{'s' * (len(b['cells']) > 1)})",
    ]
    if result["paired"]:
        for r in result["paired"]:
            rel = "" if r["relative_pct"] is None else f" ({r['relative_pct']:+.1f}%)"
            held = " (holds after Holm)" if r["survives_holm"] else ""
            parts += [
                f"[bold cyan]{r['label']}[/]" + ("" if r["higher_is_better"] else
                ", lower is better") + f" (budget {r['budget']}, {r['seeds']} seed"
                f"{'s' * (r['seeds'] > 1)} x {r['rows']} rows): A {r['a_mean']:.4f}, "
                f"B {r['b_mean']:.4f}",
                f"  A - B = {r['difference']:+.4f}{rel}, 95% interval "
                f"[{r['low']:+.4f}, {r['high']:+.4f}]: [bold]{r['verdict']}[/]{held}",
                f"  p = {stats.format_p(r['p_value'])} (Holm {stats.format_p(r['holm_p'])}), "
                f"minimum detectable effect "
                f"{r['mde']:.4f}",
            ]  # fmt: skip
        parts.append(
            f"Interval: {DRAWS} bootstrap draws resampling seeds and test rows; the verdict is "
            "better/worse only when it excludes zero. Minimum detectable effect: with 80% power "
            f"at two-sided 5% ({MDE_FACTOR:.2f} x the bootstrap standard error)."
            + (" With one seed per side the interval holds the test-row noise only, not the "
               "seed-to-seed noise: compare method folders to pair every seed."
               if max(r["seeds"] for r in result["paired"]) == 1 else "")
        )  # fmt: skip
    else:
        parts.append(f"[bold yellow]{escape(result['note'])}[/]")
    ov = result["overlap"]
    if ov is not None:
        parts.append(
            f"Overlap of the picks: {ov['intersection']} of {ov['a']} and {ov['b']} shared "
            f"(two random selections share {ov['expected_intersection']:.1f} on average)."
        )
    return Group(*parts)
