"""The benchmark's table and plot read well at any width (issue 21).

The documents are real benchmark results kept in ``benchmarks/results`` (one from this CPU, one
from an H200 with the extra datasheet column); laying them out is pure formatting.
"""

from __future__ import annotations

import json
import re

import pytest

from selectllm_local.bench import output
from tests.helpers import REPO

DOCS = ["select_tiny.json", "select_gpu_h200_issue10_after.json"]


def load(name: str) -> dict:
    return json.loads((REPO / "benchmarks" / "results" / name).read_text())


@pytest.mark.parametrize("name", DOCS)
def test_table_at_80_columns_has_every_header_whole(name: str) -> None:
    doc = load(name)
    _title, cols, rows = output.results_rows(doc)
    assert len(cols) >= 13
    text = output.results_text(doc, width=80, markdown=False)
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    lines = text.splitlines()
    for c in cols[1:]:  # each header whole, at the start of its own line, in every block
        whole = re.compile(rf"\s+{re.escape(c)}\s{{2,}}\S")
        assert sum(1 for line in lines if whole.match(line)) == len(rows), c
    for cells in rows:
        assert cells[0] in lines and all(v in text for v in cells[1:])


@pytest.mark.parametrize("name", DOCS)
def test_piped_table_is_markdown_with_whole_headers(name: str) -> None:
    doc = load(name)
    _title, cols, rows = output.results_rows(doc)
    text = output.results_text(doc)  # stdout is not a terminal under pytest: Markdown
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| setting"))
    assert [c.strip() for c in header.strip("|").split("|")] == cols
    body = [line for line in lines if line.startswith("| ") and line != header]
    assert len(body) == len(rows) and "…" not in text


def test_wide_terminal_gets_the_boxed_table() -> None:
    doc = load(DOCS[0])
    _title, cols, _rows = output.results_rows(doc)
    text = output.results_text(doc, width=250, markdown=False)
    header = next(line for line in text.splitlines() if "setting" in line)
    assert [c.strip() for c in header.strip("┃").split("┃")] == cols


@pytest.mark.parametrize(
    ("x", "label"),
    [(0, "0"), (950, "950"), (1200, "1.2k"), (12000, "12k"), (150000, "150k"),
     (1_200_000, "1.2M"), (2e9, "2G")],
)  # fmt: skip
def test_readable_count(x: float, label: str) -> None:
    assert output.readable_count(x) == label


@pytest.mark.parametrize("name", DOCS)
def test_plot_throughput_ticks_are_short_and_apart(name: str) -> None:
    import matplotlib.pyplot as plt

    fig = output.plot_figure(load(name))
    try:
        fig.canvas.draw()
        axis = fig.axes[0]
        ticks = [t for t in axis.get_xticklabels() if t.get_text()]
        assert len(ticks) >= 2
        assert all(re.fullmatch(r"\d{1,3}(\.\d)?[kMG]?", t.get_text()) for t in ticks), [
            t.get_text() for t in ticks
        ]
        boxes = sorted((t.get_window_extent() for t in ticks), key=lambda b: b.x0)
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:], strict=False))
    finally:
        plt.close(fig)
