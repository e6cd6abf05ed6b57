"""Benchmark outputs: a human table, the JSON document and a PNG plot.

The JSON has fixed keys (``bench.config.TOP_KEYS`` / ``RESULT_KEYS``) so results from different
machines and dates can be compared by a script; the table and the plot are for people.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from selectllm_local.run.store import atomic_path, write_json

log = logging.getLogger(__name__)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def results_rows(doc: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """The measured settings as (title, column headers, rows of cells), ready to lay out."""
    peak = doc["peak"]
    title = (
        f"{doc['model']['shape'] or doc['model']['path']} ({doc['model']['non_embedding_params'] / 1e6:.0f}M "
        f"non-embedding params, {peak['dtype']}), peak {peak['flops'] / 1e9:.1f} GFLOP/s measured"
    )
    cols = [
        "setting", "start s", "prompts/s", "prompt tok/s", "out tok/s", "engine s", "ours s",
        "util", "util (ours)", "padding", "cached", "peak RSS GiB", "fallback",
    ]  # fmt: skip
    if peak.get("datasheet_flops"):
        cols.insert(8, "util (datasheet)")
    rows = []
    for r in doc["results"]:
        cells = [
            r["label"],
            f"{r['startup_seconds']:.1f}",
            f"{r['prompts_per_s']:.2f}",
            f"{r['prompt_tokens_per_s']:.0f}",
            f"{r['output_tokens_per_s']:.1f}",
            f"{r['engine_seconds']:.2f}",
            f"{r['ours_seconds']:.2f}",
            _pct(r["prefill_utilization"]),
            _pct(r["pipeline_utilization"]),
            _pct(r["padding_fraction"]),
            _pct(r["cached_prompt_tokens"] / r["prompt_tokens"] if r["prompt_tokens"] else 0),
            "-" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / 2**30:.1f}",
            str(r["fallbacks"]),
        ]
        if peak.get("datasheet_flops"):
            cells.insert(8, _pct(r["prefill_utilization_datasheet"]))
        rows.append(cells)
    return title, cols, rows


def results_table(doc: dict[str, Any]) -> Any:
    """A rich Table of the measured settings (for a terminal wide enough: see ``results_text``)."""
    from rich.table import Table

    title, cols, rows = results_rows(doc)
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c, justify="left" if c == "setting" else "right", no_wrap=True)
    for cells in rows:
        t.add_row(*cells)
    return t


def results_text(
    doc: dict[str, Any], *, width: int | None = None, markdown: bool | None = None
) -> str:
    """The results as text in which no header or cell is cut, whatever the width.

    Piped (``markdown``, default: stdout is not a terminal): a Markdown table, which any width
    and any Markdown viewer show whole. At a terminal: the boxed table when it fits ``width``
    (default: the terminal's), else one block per setting, a header and its value per line.
    """
    import shutil
    import sys

    title, cols, rows = results_rows(doc)
    if markdown is None:
        markdown = not sys.stdout.isatty()
    if markdown:
        return markdown_table(title, cols, rows)
    width = width or shutil.get_terminal_size().columns
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    if sum(widths) + 3 * len(cols) + 1 <= width:  # box borders and one space of padding a side
        return _render(results_table(doc), width)
    return key_value_text(title, cols, rows, width)


def markdown_table(title: str, cols: list[str], rows: list[list[str]]) -> str:
    """A Markdown (GitHub) table under its title; the first column left-aligned, numbers right."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join([":---", *["---:"] * (len(cols) - 1)]) + "|"
    return "\n".join([f"**{title}**", "", line(cols), rule, *(line(r) for r in rows)])


def key_value_text(title: str, cols: list[str], rows: list[list[str]], width: int) -> str:
    """One block per row: its first cell as a heading, then each header and value on a line."""
    import textwrap

    key = max(len(c) for c in cols[1:])
    out = textwrap.wrap(title, width=max(20, width))
    for cells in rows:
        out += ["", cells[0]]
        out += [f"  {c:<{key}}  {v}" for c, v in zip(cols[1:], cells[1:], strict=True)]
    return "\n".join(out)


def _render(renderable: Any, width: int) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True).print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def readable_count(x: float, _pos: Any = None) -> str:
    """An axis label in readable units: 950, 12k, 1.2M, 3G (no run-together long numbers)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.0f}{unit}" if v >= 10 or v == int(v) else f"{v:.1f}{unit}"
    return f"{x:g}"


def write_plot(doc: dict[str, Any], path: Path) -> Path:
    """Two panels: prompt tokens/s (engine vs through our code) and utilisation of the peak."""
    import matplotlib.pyplot as plt

    fig = plot_figure(doc)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_figure(doc: dict[str, Any]) -> Any:
    """The matplotlib figure ``write_plot`` saves (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    rows = doc["results"]
    labels = [r["label"] for r in rows]
    y = list(range(len(rows)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.55 * len(rows) + 2.2), sharey=True)
    h = 0.38
    a.barh(
        [i - h / 2 for i in y], [r["prompt_tokens_per_s"] for r in rows], h, label="engine alone"
    )
    a.barh(
        [i + h / 2 for i in y], [r["pipeline_prompt_tokens_per_s"] for r in rows], h,
        label="through selection (our code included)",
    )  # fmt: skip
    a.set_yticks(y, labels)
    a.invert_yaxis()
    a.set_xlabel("prompt tokens / s")
    a.xaxis.set_major_locator(MaxNLocator(nbins=5))
    a.xaxis.set_major_formatter(FuncFormatter(readable_count))
    a.legend(loc="lower right", fontsize=8)
    b.barh(y, [100 * r["prefill_utilization"] for r in rows], color="tab:green")
    for i, r in enumerate(rows):
        b.text(
            100 * r["prefill_utilization"],
            i,
            f" {100 * r['prefill_utilization']:.0f}%",
            va="center",
        )
    b.set_xlabel(f"prefill utilisation, % of measured {doc['peak']['dtype']} matmul peak")
    b.set_xlim(0, max(100.0, max(100 * r["prefill_utilization"] for r in rows) * 1.15))
    peak = doc["peak"]["flops"] / 1e9
    fig.suptitle(
        f"{doc['model']['shape'] or Path(doc['model']['path']).name}: {doc['workload']['subsets']} "
        f"subsets x {doc['workload']['candidates']} candidates; peak {peak:.0f} GFLOP/s; "
        f"{doc['machine'] or doc['environment'].get('cpu_model', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def write_outputs(
    doc: dict[str, Any], out_dir: Path | str, name: str = "select"
) -> dict[str, Path]:
    """Write ``<name>.json`` and ``<name>.png`` under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "png": out / f"{name}.png"}
    write_json(paths["json"], doc)
    if doc.get("results"):
        write_plot(doc, paths["png"])
    else:
        paths.pop("png")
    return paths
