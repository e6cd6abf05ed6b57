"""The per-row scores of experiment cells, and the run's paired comparisons with their verdicts.

A cell's evaluation folder (``eval/``, or the cell folder itself in a copied result) holds
``predictions.jsonl`` (one line per test row: ``row``, ``rougeL_f1``, ``cosine``) and, when the
reference NLL was measured, ``reference_nll.jsonl`` (``row``, ``nll`` in nats per token,
``tokens``). ``row`` is the test example's index, the same in every cell; a file written before
it existed is read by position. Cells with no per-row file take no part in a comparison, and the
report says so rather than guessing.

Every method is compared with ``random`` and with ``cluster-random`` (those present), on each
metric and budget, over the seeds both have; ``stats`` computes the interval and verdict, and one
Holm correction runs over the whole family of comparisons the run made.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectllm_local.errors import UserError
from selectllm_local.experiment import stats
from selectllm_local.run.store import read_json, read_jsonl

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
NLL_ROWS = "reference_nll.jsonl"
REFERENCES = ("random", "cluster-random")
PER_ROW = {"rougeL_f1": (PREDICTIONS, "rougeL_f1"), "cosine": (PREDICTIONS, "cosine"),
           "reference_nll": (NLL_ROWS, "nll")}  # fmt: skip


@dataclass
class CellRows:
    """One cell's per-row scores: ``values[metric][row]``, and each row's prompt and reference
    text (to check that two cells were scored on the same test rows)."""

    cell: Path
    values: dict[str, dict[int, float]] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)


def find_file(cell: Path, name: str) -> Path | None:
    """``name`` in the cell's ``eval/`` folder, else in the cell folder (a copied result)."""
    for d in (cell / "eval", cell):
        if (d / name).is_file():
            return d / name
    return None


def cell_rows(cell: Path) -> CellRows:
    """Read a cell's per-row files; a malformed line is a ``UserError`` naming file, line, field."""
    out = CellRows(cell)
    for metric, (name, fld) in PER_ROW.items():
        path = find_file(cell, name)
        if path is None:
            continue
        try:
            rows = read_jsonl(path)
        except ValueError as e:
            raise UserError(
                f"{path} is not valid JSONL ({e}); re-run the cell's evaluation."
            ) from e
        values: dict[int, float] = {}
        for pos, r in enumerate(rows):
            v, i = r.get(fld), r.get("row", pos)
            if not isinstance(v, int | float) or isinstance(v, bool) or not isinstance(i, int):
                raise UserError(
                    f"{path} line {pos + 1}: field '{fld}' (a number) or 'row' (an integer) is "
                    "missing or of the wrong type; re-run the cell's evaluation."
                )
            values[i] = float(v)
            if name == PREDICTIONS and "reference" in r:
                out.texts[i] = f"{r.get('instruction', '')}\n{r.get('input', '')}\n{r['reference']}"
        if values:
            out.values[metric] = values
    return out


def same_rows(a: CellRows, b: CellRows) -> list[int]:
    """Rows that both cells hold with different prompt or reference text (should be none)."""
    return sorted(i for i in set(a.texts) & set(b.texts) if a.texts[i] != b.texts[i])


def compare_cells(
    a: dict[int, CellRows], b: dict[int, CellRows], metric: stats.Metric
) -> stats.Paired | None:
    """A against B on one metric, seeds paired by key; None when they share no scored row."""
    va = {s: c.values[metric.key] for s, c in a.items() if metric.key in c.values}
    vb = {s: c.values[metric.key] for s, c in b.items() if metric.key in c.values}
    ma, mb, seeds, rows = stats.paired_matrices(va, vb)
    if not seeds or not rows:
        return None
    return stats.compare(ma, mb, higher_is_better=metric.higher_is_better)


def run_comparisons(
    root: Path,
    methods: list[str],
    budgets: list[int],
    seeds: list[int],
    *,
    skip: frozenset[str] = frozenset(),
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every method against each reference present, per budget and metric, with Holm over all.

    Returns the comparison rows (``results.csv``) and notes on what could not be compared.
    Cells named in ``skip`` (stale: made under another config) are left out.
    """
    from selectllm_local.experiment.cells import Cell

    refs = [r for r in REFERENCES if r in methods]
    cells: dict[tuple[str, int], dict[int, CellRows]] = {}
    for m in methods:
        for b in budgets:
            for s in seeds:
                name = Cell(m, b, s).name
                d = root / "cells" / name
                if name not in skip and (d / "done.json").exists():
                    cells.setdefault((m, b), {})[s] = cell_rows(d)
    out: list[dict[str, Any]] = []
    notes: list[str] = (
        [] if refs else ["The run has neither random nor cluster-random: no reference."]
    )
    for b in budgets:
        for ref in refs:
            for m in methods:
                if m == ref or (m in refs and refs.index(m) < refs.index(ref)):
                    continue  # the same pair, the other way round, is already in the table
                ca, cb = cells.get((m, b), {}), cells.get((ref, b), {})
                clash = [i for s in set(ca) & set(cb) for i in same_rows(ca[s], cb[s])]
                if clash:
                    notes.append(f"{m} vs {ref} (budget {b}): test rows {clash[:5]} differ in "
                                 "text between the cells; not compared.")  # fmt: skip
                    continue
                made = 0
                for metric in stats.METRICS:
                    p = compare_cells(ca, cb, metric)
                    if p is not None:
                        made += 1
                        out.append({"budget": b, "method": m, "reference": ref,
                                    "metric": metric.key, "higher_is_better":
                                    metric.higher_is_better, **p.to_dict()})  # fmt: skip
                if ca and cb and not made:
                    notes.append(f"{m} vs {ref} (budget {b}): no seed of both has per-row "
                                 "scores of the same test rows; not compared.")  # fmt: skip
    for metric in stats.METRICS:
        if not any(r["metric"] == metric.key for r in out):
            notes.append(f"{metric.label}: no per-row scores in these cells, so no comparison.")
    for row, adj in zip(out, stats.holm([r["p_value"] for r in out]), strict=True):
        row["holm_p"] = adj
        row["survives_holm"] = row["verdict"] != stats.NO_DIFFERENCE and adj <= stats.ALPHA
    return out, notes


def _num(x: float | None, fmt: str = "+.4f") -> str:
    """``x`` formatted (a trailing "%" is printed after the number), or "–" when unknown."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, fmt[:-1]) + "%" if fmt.endswith("%") else format(x, fmt)


def comparisons_text(rows: list[dict[str, Any]], notes: list[str], budgets: list[int]) -> str:
    """The paired comparisons, the minimum detectable effects and the verdict count (Markdown)."""
    labels = {m.key: m.label for m in stats.METRICS}
    pairs = len({(r["budget"], r["method"], r["reference"]) for r in rows})
    refs = " and ".join(dict.fromkeys(r["reference"] for r in rows))
    n_metrics = len({r["metric"] for r in rows})
    lines = ["## Paired comparisons (method − reference, on the same test rows)", ""]
    if not rows:
        return "\n".join(
            [*lines, "No comparison could be made.", "", *(f"- {n}" for n in notes), ""]
        )
    decided = [r for r in rows if r["verdict"] != stats.NO_DIFFERENCE]
    held = [r for r in decided if r["survives_holm"]]
    lines += [
        f"{len(rows)} comparisons were made: {pairs} method–reference pairs (every method "
        f"against {refs}, each pair once"
        + (f", at {len(budgets)} budgets" if len(budgets) > 1 else "")
        + f") × {n_metrics} metrics. "
        f"Verdicts: {sum(r['verdict'] == stats.BETTER for r in rows)} better, "
        f"{sum(r['verdict'] == stats.WORSE for r in rows)} worse, "
        f"{len(rows) - len(decided)} no detectable difference"
        + (
            f"; {len(held)} of the {len(decided)} better/worse verdicts hold after the Holm "
            "correction."
            if decided
            else "."
        ),
        "",
        *_method_text(),
        "",
    ]
    for b in budgets:
        for ref in dict.fromkeys(r["reference"] for r in rows):
            part = [r for r in rows if r["budget"] == b and r["reference"] == ref]
            if not part:
                continue
            lines += [
                f"### Against {ref} (budget {b})",
                "",
                "| method | metric | Δ | 95% interval | Δ % of ref | verdict | p | Holm p | "
                "holds after Holm | seeds × rows |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in part:
                lines.append(
                    f"| {r['method']} | {labels[r['metric']]} | {_num(r['difference'])} | "
                    f"[{_num(r['low'])}, {_num(r['high'])}] | {_num(r['relative_pct'], '+.1f%')} | "
                    f"{r['verdict']} | {stats.format_p(r['p_value'])} | {stats.format_p(r['holm_p'])} | "
                    f"{'yes' if r['survives_holm'] else '–'} | {r['seeds']} × {r['rows']} |"
                )
            lines.append("")
    lines += [*mde_text(rows, budgets), *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def _method_text() -> list[str]:
    return [
        "How to read it: Δ is the method's score minus the reference's, averaged over the seeds "
        "both have (seed s against seed s) and the test rows both scored. The 95% interval "
        "comes from "
        f"{stats.DRAWS} bootstrap draws that each resample the seeds and, independently, the test "
        "rows (with replacement), so it holds both the test-set noise and the seed-to-seed "
        "noise (with 2 seeds the seed part is crude). The verdict is better or worse only when "
        "the interval excludes zero; for the reference NLL lower is better, so a negative Δ is "
        "better. p is two-sided, from the bootstrap draws (twice the smaller share on either "
        "side of zero, read off the same draws as the interval, so p ≤ 0.05 exactly when the "
        "interval excludes zero; ≤ when no draw crossed zero); Holm's step-down correction over every "
        "comparison in this table keeps the family-wise error at 5% (holds: Holm p ≤ 0.05).",
    ]


def mde_text(rows: list[dict[str, Any]], budgets: list[int]) -> list[str]:
    """Per budget, reference and metric: the median minimum detectable effect of the comparisons."""
    labels = {m.key: m.label for m in stats.METRICS}
    lines = [
        "### Minimum detectable effect",
        "",
        f"The smallest true difference this run detects with 80% power at two-sided 5%: "
        f"(z₀.₉₇₅ + z₀.₈₀) × bootstrap standard error = {stats.MDE_FACTOR:.2f} × SE of the paired "
        "difference; the median over the methods compared, absolute and as a percentage of the "
        "reference method's mean.",
        "",
        "| budget | reference | metric | MDE | % of reference mean | reference mean | comparisons |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in budgets:
        for ref in dict.fromkeys(r["reference"] for r in rows):
            for key, label in labels.items():
                part = [
                    r for r in rows if (r["budget"], r["reference"], r["metric"]) == (b, ref, key)
                ]
                if not part:
                    continue
                mde = _median([r["mde"] for r in part])
                mean = _median([r["b_mean"] for r in part])
                rel = 100 * mde / abs(mean) if mean else None
                lines.append(f"| {b} | {ref} | {label} | {mde:.4f} | {_num(rel, '.1f%')} | "
                             f"{mean:.4f} | {len(part)} |")  # fmt: skip
    return [*lines, ""]


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def read_done(cell: Path) -> dict[str, Any]:
    """A cell's ``done.json``, with ``reference_nll`` from its ``scores.json`` when done.json
    has none."""
    d = read_json(cell / "done.json")
    if d.get("reference_nll") is None:
        p = find_file(cell, "scores.json")
        if p is not None:
            d["reference_nll"] = read_json(p).get("reference_nll")
    return d
