"""Benchmark outputs: a human table, the JSON document and a PNG plot.

The JSON has fixed keys (``bench.config.TOP_KEYS`` / ``RESULT_KEYS``) so results from different
machines and dates can be compared by a script; the table and the plot are for people.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from selectllm_local.runstore import atomic_path, write_json

log = logging.getLogger(__name__)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def results_table(doc: dict[str, Any]) -> Any:
    """A rich Table of the measured settings."""
    from rich.table import Table

    peak = doc["peak"]
    title = (
        f"{doc['model']['shape'] or doc['model']['path']} ({doc['model']['non_embedding_params'] / 1e6:.0f}M "
        f"non-embedding params, {peak['dtype']}), peak {peak['flops'] / 1e9:.1f} GFLOP/s measured"
    )
    t = Table(title=title, title_justify="left")
    cols = [
        "setting", "start s", "prompts/s", "prompt tok/s", "out tok/s", "engine s", "ours s",
        "util", "util (ours)", "padding", "cached", "peak RSS GiB", "fallback",
    ]  # fmt: skip
    if peak.get("datasheet_flops"):
        cols.insert(8, "util (datasheet)")
    for c in cols:
        t.add_column(c, justify="left" if c == "setting" else "right")
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
        t.add_row(*cells)
    return t


def write_plot(doc: dict[str, Any], path: Path) -> Path:
    """Two panels: prompt tokens/s (engine vs through our code) and utilisation of the peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


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
