"""Two selections of one pool side by side (``selectllm compare``), and a run's diagnostics.

Why apart from ``diagnostics``: that module holds the measures (pure functions over rows); this
one finds and checks the files a finished selection leaves, for a ``select`` run directory or a
``baseline`` output folder (``RUN_DIR/baselines/NAME-bB-sS``, whose pool and clusters are two
levels up), and refuses, as a user error, a folder that is not a finished selection or two
selections of different pools. Uses: agreement (logprobs vs generate on one plan), stability
(two seeds), and how far the LLM's picks are from a baseline's.

Two finished cells of an experiment (or two method folders of cells) are compared on their
scores instead: the paired difference on the same test rows per metric, with its interval over
seeds and rows and its verdict (``experiment.stats``), and the overlap of their picks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.errors import UserError
from selectllm_local.review import diagnostics
from selectllm_local.run.store import read_json, read_jsonl, stable_hash

WHAT_TO_PASS = (
    "Pass the --run-dir of a finished `selectllm select` run, or a baseline's output folder "
    "(RUN_DIR/baselines/NAME-bBUDGET-sSEED)."
)


@dataclass
class Selection:
    """The files of one finished selection: its summary, picks and (when found) the pool."""

    root: Path
    kind: str  # "select" | "baseline"
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    pool_root: Path | None  # the folder holding pool.jsonl and clusters.npy
    pool: list[dict[str, Any]] | None

    @property
    def indices(self) -> list[int]:
        return [int(r["selectllm"]["index"]) for r in self.rows]

    @property
    def uids(self) -> dict[int, str]:
        return {int(r["selectllm"]["index"]): str(r["selectllm"].get("uid")) for r in self.rows}

    @property
    def pool_size(self) -> int:
        return int(self.summary["pool"])

    def labels(self) -> np.ndarray | None:
        p = self.pool_root / "clusters.npy" if self.pool_root else None
        return np.load(p) if p is not None and p.exists() else None

    def pool_fingerprint(self) -> str | None:
        return stable_hash([r.get("uid") for r in self.pool]) if self.pool is not None else None

    def name(self) -> str:
        s = self.summary
        if self.kind == "baseline":
            return f"baseline {s.get('method')} (seed {s.get('seed')})"
        return f"select, mode {s.get('mode')}, model {s.get('model')}"


def load_selection(path: Path | str) -> Selection:
    """Read a finished selection's folder; a missing or unfinished one is a ``UserError``."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"Run directory {root} does not exist. {WHAT_TO_PASS}")
    missing = [n for n in ("selected.jsonl", "summary.json") if not (root / n).is_file()]
    if missing:
        raise UserError(
            f"{root} is not a finished selection: it has no {' and no '.join(missing)} (a plan-only "
            "run, an interrupted select, or another folder). Run select (or baseline) on it to the "
            f"end first. {WHAT_TO_PASS}"
        )
    summary = read_json(root / "summary.json")
    rows = read_jsonl(root / "selected.jsonl")
    if not isinstance(summary, dict) or not isinstance(summary.get("pool"), int):
        raise UserError(
            f"{root / 'summary.json'} is not the summary of a select or baseline run (no 'pool' "
            f"count). {WHAT_TO_PASS}"
        )
    for n, r in enumerate(rows, 1):
        if not isinstance(r.get("selectllm"), dict) or "index" not in r["selectllm"]:
            raise UserError(
                f"{root / 'selected.jsonl'} line {n} has no selectllm.index (the pool index every "
                f"selectllm output row carries). {WHAT_TO_PASS}"
            )
    kind = "baseline" if "method" in summary else "select"
    pool_root = None
    for cand in (root, root.parent.parent if root.parent.name == "baselines" else None):
        if cand is not None and (cand / "pool.jsonl").is_file():
            pool_root = cand
            break
    pool = read_jsonl(pool_root / "pool.jsonl") if pool_root is not None else None
    return Selection(root, kind, summary, rows, pool_root, pool)


def run_position_bias(
    root: Path, *, mode: str | None = None, permutations: int | None = None
) -> diagnostics.PositionBias | None:
    """Position bias of a select run directory's model picks (``diagnostics.position_bias``).

    ``mode`` and ``permutations`` default to what ``summary.json`` and ``config.json`` recorded.
    """
    summary = read_json(root / "summary.json") if (root / "summary.json").exists() else {}
    config = read_json(root / "config.json") if (root / "config.json").exists() else {}
    if mode is None:
        mode = str(summary.get("mode") or "generate")
    if permutations is None:
        selector = (config.get("select") or {}).get("selector") or {}
        permutations = int(selector.get("permutations", 1))  # 0: every shift
    k = 0
    if (root / "clusters.npy").exists():
        k = int(np.load(root / "clusters.npy").max()) + 1
    elif (root / "plan_summary.json").exists():
        k = int(read_json(root / "plan_summary.json").get("clusters", {}).get("k") or 0)
    pairs = diagnostics.position_pairs(
        read_jsonl(root / "subsets.jsonl"), read_jsonl(root / "responses.jsonl"), k
    )
    return diagnostics.position_bias(pairs, mode=mode, permutations=permutations)


@dataclass
class SelectionDiagnostics:
    """One side of ``compare``: what the selection is, its position bias and preferences."""

    run_dir: str
    kind: str  # "select" | "baseline"
    name: str
    selected: int
    pool: int
    position_bias: diagnostics.PositionBias | None  # select runs with model picks
    preferences: diagnostics.Preferences | None  # when the pool is found


@dataclass
class SamePool:
    """How ``compare`` made sure both selections come from one pool."""

    rows: int
    fingerprint: str | None
    checked_by: str


@dataclass
class Comparison:
    """``compare`` of two selections (and its ``--json``): both sides and their overlap."""

    a: SelectionDiagnostics
    b: SelectionDiagnostics
    overlap: diagnostics.Overlap
    same_pool: SamePool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summary_position_bias(summary: dict[str, Any], root: Path) -> diagnostics.PositionBias | None:
    """The position bias a select run's ``summary.json`` recorded (computed from the run's files
    for a summary written before diagnostics)."""
    if "position_bias" not in summary:
        return run_position_bias(root)
    bias = summary["position_bias"]
    return diagnostics.PositionBias.from_dict(bias) if bias is not None else None


def selection_diagnostics(sel: Selection) -> SelectionDiagnostics:
    """Position bias (select runs) and preferences (when the pool is found) of one selection."""
    bias = None
    if sel.kind == "select":
        bias = summary_position_bias(sel.summary, sel.root)
    prefs = diagnostics.preferences(sel.pool, sel.indices, sel.labels()) if sel.pool else None
    return SelectionDiagnostics(
        run_dir=str(sel.root),
        kind=sel.kind,
        name=sel.name(),
        selected=len(sel.rows),
        pool=sel.pool_size,
        position_bias=bias,
        preferences=prefs,
    )


def compare_runs(a: Path | str, b: Path | str) -> Comparison | dict[str, Any]:
    """Overlap of two selections of one pool (with the random expectation) and both diagnostics;
    for two experiment cells (or method folders), their paired metric differences
    (``compare_cells``).

    The pools must match: by the ids of every pool row when both ``pool.jsonl`` files are found,
    else by the pool size and the ids of the rows both selections hold.
    """
    if is_experiment_cell(a) or is_experiment_cell(b):
        return compare_cells(a, b)
    sa, sb = load_selection(a), load_selection(b)
    fa, fb = sa.pool_fingerprint(), sb.pool_fingerprint()
    ua, ub = sa.uids, sb.uids
    clash = [i for i in set(ua) & set(ub) if ua[i] != ub[i]]
    if sa.pool_size != sb.pool_size or (fa and fb and fa != fb) or clash:
        raise UserError(
            f"{sa.root} and {sb.root} select from different pools ({sa.pool_size} and "
            f"{sb.pool_size} rows{', different row ids' if fa != fb or clash else ''}). An overlap "
            "means something only within one pool: compare runs made from the same pool file "
            "with the same field mapping."
        )
    verified = "pool.jsonl of both" if fa and fb else "pool size and the shared rows' ids"
    return Comparison(
        a=selection_diagnostics(sa),
        b=selection_diagnostics(sb),
        overlap=diagnostics.overlap(sa.indices, sb.indices, sa.pool_size),
        same_pool=SamePool(rows=sa.pool_size, fingerprint=fa or fb, checked_by=verified),
    )


# -- experiment cells: the paired metric differences ------------------------------------------

CELLS_TO_PASS = (
    "Pass two finished cells of an experiment (RUN_DIR/cells/METHOD/bBUDGET-sSEED), or two "
    "method folders (RUN_DIR/cells/METHOD) to pair every budget and seed both hold."
)


def experiment_cells(path: Path | str) -> dict[tuple[int, int], Path] | None:
    """The finished cells a folder stands for, keyed by (budget, seed): the cell itself, or the
    cells of a method folder; None for a folder that is neither. An unfinished cell is a
    ``UserError``."""
    root = Path(path)
    if not root.is_dir():
        return None
    if (root / "done.json").is_file():
        d = read_json(root / "done.json")
        return {(int(d.get("budget", 0)), int(d.get("seed", 0))): root}
    if (root / "selection.json").is_file() or (root / "cell.json").is_file():
        raise UserError(
            f"{root} is an experiment cell that has not finished (no done.json): run the "
            f"experiment to the end first. {CELLS_TO_PASS}"
        )
    cells = {}
    for c in sorted(root.glob("b*-s*")):
        if (c / "done.json").is_file():
            d = read_json(c / "done.json")
            cells[(int(d.get("budget", 0)), int(d.get("seed", 0)))] = c
    return cells or None


def _cell_overlap(a: Path, b: Path) -> diagnostics.Overlap | None:
    """Overlap of two single cells' picks, when both record the same pool (``pool.key.json``)."""
    keys = []
    for cell in (a, b):
        root = cell.parent.parent.parent
        found = [
            p for p in (root / "data" / "pool.key.json", root / "pool.key.json") if p.is_file()
        ]
        if not found or not (cell / "selection.json").is_file():
            return None
        keys.append(read_json(found[0]))
    if keys[0].get("key") != keys[1].get("key"):
        return None
    ia, ib = (read_json(c / "selection.json")["indices"] for c in (a, b))
    return diagnostics.overlap(ia, ib, int(keys[0]["rows"]))


def compare_cells(a: Path | str, b: Path | str) -> dict[str, Any]:
    """A against B on every metric both cells scored per row: the paired difference, its 95%
    interval over seeds and rows, the verdict and the minimum detectable effect (the numbers
    ``results.md`` gives), with Holm over this command's comparisons. Two single cells are paired
    whatever their seeds; two method folders pair the cells of equal budget and seed."""
    from selectllm_local.experiment import paired, stats

    ca, cb = experiment_cells(a), experiment_cells(b)
    if not ca or not cb:
        bad = a if not ca else b
        raise UserError(f"{bad} is not a finished experiment cell nor a method folder holding "
                        f"finished cells. {CELLS_TO_PASS}")  # fmt: skip
    single = all((Path(x) / "done.json").is_file() for x in (a, b))
    if single:  # two cells: paired whatever their seeds
        budget = next(iter(ca))[0]
        ca, cb = {(budget, 0): next(iter(ca.values()))}, {(budget, 0): next(iter(cb.values()))}
    rows_a = {k: paired.cell_rows(p) for k, p in ca.items()}
    rows_b = {k: paired.cell_rows(p) for k, p in cb.items()}
    for k in set(rows_a) & set(rows_b):
        clash = paired.same_rows(rows_a[k], rows_b[k])
        if clash:
            raise UserError(
                f"{ca[k]} and {cb[k]} were scored on different test rows (rows {clash[:5]} differ "
                "in prompt or reference): compare cells of one experiment, or of two experiments "
                "with the same test set."
            )
    out: list[dict[str, Any]] = []
    for budget in sorted({k[0] for k in set(rows_a) & set(rows_b)}):
        sub_a = {k[1]: v for k, v in rows_a.items() if k[0] == budget}
        sub_b = {k[1]: v for k, v in rows_b.items() if k[0] == budget}
        for metric in stats.METRICS:
            p = paired.compare_cells(sub_a, sub_b, metric)
            if p is not None:
                out.append({"budget": budget, "metric": metric.key, "label": metric.label,
                            "higher_is_better": metric.higher_is_better, **p.to_dict()})  # fmt: skip
    for row, adj in zip(out, stats.holm([r["p_value"] for r in out]), strict=True):
        row["holm_p"] = adj
        row["survives_holm"] = row["verdict"] != stats.NO_DIFFERENCE and adj <= stats.ALPHA
    overlap = _cell_overlap(*ca.values(), *cb.values()) if single else None
    return {
        "a": {"path": str(a), "cells": [str(p) for p in ca.values()]},
        "b": {"path": str(b), "cells": [str(p) for p in cb.values()]},
        "paired": out,
        "overlap": overlap.to_dict() if overlap is not None else None,
        "note": None
        if out
        else "These cells share no per-row scores of the same test rows "
        "(predictions.jsonl with rougeL_f1 and cosine, or reference_nll.jsonl).",
    }


def is_experiment_cell(path: Path | str) -> bool:
    """A finished cell, an unfinished one (to refuse it clearly) or a method folder of cells."""
    p = Path(path)
    return p.is_dir() and (
        (p / "done.json").is_file()
        or (p / "selection.json").is_file()
        or any((c / "done.json").is_file() for c in p.glob("b*-s*"))
    )
