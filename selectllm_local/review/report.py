"""One self-contained HTML page that shows what a run did (``selectllm report RUN_DIR``).

A selection is only trustworthy if a person can see it: did the picks spread over the clusters
or pile into a few, did the model favour short instructions or one category, did it prefer the
first candidates it was shown (position bias), how many answers needed a retry or a fallback, and
where the time went. The report reads only the run directory's files (``pool.jsonl``,
``clusters.npy``, ``subsets.jsonl``, ``responses.jsonl``, ``selected.jsonl``, ``summary.json``,
``plan_summary.json``, ``config.json``) and tolerates missing ones: a plan-only run gets the
cluster and pool sections and a note that no selection was made yet. Plots are PNGs embedded as
base64, so the file can be mailed or attached to an issue as is.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from selectllm_local.errors import UserError
from selectllm_local.run.store import atomic_path, read_json, read_jsonl
from selectllm_local.selection.prompttokens import PromptTokenEstimate

log = logging.getLogger(__name__)

POOL_COLOR, SEL_COLOR = "#9aa5b1", "#d9480f"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1050px;
color:#1f2328;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;border-bottom:1px solid #d0d7de;
padding-bottom:.2rem;margin-top:2rem} .sub{color:#59636e;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem} td,th{border:1px solid #d0d7de;
padding:.25rem .6rem;text-align:left} th{background:#f6f8fa} td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee} .note{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem .8rem;
border-radius:6px} .grid{display:flex;flex-wrap:wrap;gap:1.5rem} .grid>div{flex:1 1 400px}
"""


class _Run:
    """The run directory's files, each loaded once; missing optional files are ``None``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.summary = self._json("summary.json")
        self.plan_summary = self._json("plan_summary.json")
        self.config = self._json("config.json")
        self.pool = read_jsonl(root / "pool.jsonl") if (root / "pool.jsonl").exists() else None
        p = root / "clusters.npy"
        self.labels = np.load(p) if p.exists() else None
        self.subsets = read_jsonl(root / "subsets.jsonl")
        self.responses = read_jsonl(root / "responses.jsonl")
        self.selected = read_jsonl(root / "selected.jsonl")

    def _json(self, name: str) -> dict[str, Any] | None:
        p = self.root / name
        return read_json(p) if p.exists() else None

    def selected_indices(self) -> list[int]:
        return [int(r["selectllm"]["index"]) for r in self.selected if "selectllm" in r]


# -- plots -----------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fig(w: float = 7.0, h: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def plot_clusters(labels: np.ndarray, selected: list[int]) -> str:
    """Cluster sizes (pool share) next to each cluster's share of the picks."""
    k = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=k)
    fig, ax = _fig(9, 3.2)
    x = np.arange(k)
    ax.bar(x - 0.2, 100 * sizes / sizes.sum(), 0.4, color=POOL_COLOR, label="share of pool")
    if selected:
        picks = np.bincount(labels[selected], minlength=k)
        ax.bar(x + 0.2, 100 * picks / picks.sum(), 0.4, color=SEL_COLOR, label="share of picks")
    ax.set_xlabel("cluster")
    ax.set_ylabel("%")
    ax.set_xticks(x if k <= 40 else x[:: max(1, k // 20)])
    ax.legend(fontsize=8)
    return _png(fig)


def plot_categories(pool_cats: list[str], sel_cats: list[str]) -> str:
    pc, sc = Counter(pool_cats), Counter(sel_cats)
    cats = [c for c, _ in pc.most_common(20)]
    fig, ax = _fig(8, 0.32 * len(cats) + 1.2)
    y = np.arange(len(cats))
    ax.barh(
        y - 0.2, [100 * pc[c] / len(pool_cats) for c in cats], 0.4, color=POOL_COLOR, label="pool"
    )
    if sel_cats:
        ax.barh(
            y + 0.2,
            [100 * sc[c] / len(sel_cats) for c in cats],
            0.4,
            color=SEL_COLOR,
            label="selected",
        )
    ax.set_yticks(y, cats)
    ax.invert_yaxis()
    ax.set_xlabel("% of rows")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_lengths(pool_len: list[int], sel_len: list[int], what: str) -> str:
    fig, ax = _fig()
    hi = float(np.percentile(pool_len, 99)) if pool_len else 1.0
    bins = np.linspace(0, max(hi, 1.0), 40)
    ax.hist(
        np.clip(pool_len, 0, hi), bins=bins, density=True, color=POOL_COLOR, alpha=0.8, label="pool"
    )
    if sel_len:
        ax.hist(np.clip(sel_len, 0, hi), bins=bins, density=True, histtype="step", lw=2,
                color=SEL_COLOR, label="selected")  # fmt: skip
    ax.set_xlabel(f"{what} length (characters; clipped at the pool's 99th percentile)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_positions(positions: list[tuple[int, int]]) -> str:
    """Picks per display position, against the share a position-blind model would give."""
    n_max = max(n for _, n in positions)
    obs = Counter(p for p, _ in positions)
    expected = np.zeros(n_max + 1)
    for _, n in positions:  # a blind pick is uniform over that subset's n positions
        expected[1 : n + 1] += 1.0 / n
    x = np.arange(1, n_max + 1)
    fig, ax = _fig()
    ax.bar(x, [obs[int(i)] for i in x], color=SEL_COLOR, label="picks")
    ax.step(x, expected[1:], where="mid", color="black", lw=1.5, label="no position preference")
    ax.set_xlabel("position of the pick in the prompt (1 = shown first)")
    ax.set_ylabel("picks")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_stages(seconds: dict[str, float]) -> str:
    items = [(k, float(v)) for k, v in seconds.items() if k != "total" and v]
    fig, ax = _fig(7, 0.35 * len(items) + 1.2)
    ax.barh([k for k, _ in items], [v for _, v in items], color="#1f6feb")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f} s", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    return _png(fig)


# -- html ------------------------------------------------------------------------------------------
def _esc(x: Any) -> str:
    return html.escape(str(x))


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{_esc(k)}</th><td class='n'>{_esc(v)}</td></tr>" for k, v in rows if v is not None
    )
    return f"<table>{body}</table>"


def _img(b64: str, alt: str) -> str:
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{b64}'>"


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{_esc(title)}</h2>{''.join(parts)}</section>"


def _overview(run: _Run) -> str:
    s, ps = run.summary or {}, run.plan_summary or {}
    pool = ps.get("pool", {})
    rows = [
        ("pool file", pool.get("path")),
        ("pool rows kept", pool.get("kept", len(run.pool) if run.pool is not None else None)),
        ("budget", s.get("budget", ps.get("budget"))),
        ("selected", s.get("selected", len(run.selected) if run.selected else None)),
        ("model", s.get("model")),
        ("backend", s.get("backend")),
        ("mode", s.get("mode")),
        ("rounds", s.get("rounds")),
        ("clusters (K)", ps.get("clusters", {}).get("k")),
        ("subsets (round one)", ps.get("subsets", {}).get("count", len(run.subsets) or None)),
        ("subset layout", ps.get("subsets", {}).get("layout")),
    ]
    parts = [_kv_table(rows)]
    if s.get("note"):
        parts.append(f"<p class='note'>{_esc(s['note'])}</p>")
    if not run.selected:
        parts.append(
            "<p class='note'>No selection in this run directory yet (a plan-only run, or "
            "<code>select</code> has not finished): the sections below show the pool and the plan.</p>"
        )
    return _section("Overview", *parts)


def _clusters(run: _Run, sel: list[int]) -> str:
    if run.labels is None:
        return _section("Clusters", "<p>No clusters.npy in this run directory.</p>")
    labels = np.asarray(run.labels, dtype=np.int64)
    sizes = np.bincount(labels)
    text = (
        f"<p>{len(sizes)} clusters of {sizes.min()}..{sizes.max()} instructions (balanced). "
        "Grey: each cluster's share of the pool; orange: its share of the selection. A selection "
        "that follows the pool spreads its picks like the grey bars.</p>"
    )
    return _section(
        "Cluster sizes and picks per cluster", text, _img(plot_clusters(labels, sel), "clusters")
    )


def _content(run: _Run, sel: list[int]) -> str:
    if run.pool is None:
        return ""
    pool = run.pool
    chosen = [pool[i] for i in sel if i < len(pool)]
    parts = []
    cats = [r.get("category") for r in pool]
    if any(cats):
        parts.append(
            _section(
                "Categories: selected vs pool",
                "<p>Share of rows per category (the pool's 20 most common).</p>",
                _img(
                    plot_categories(
                        [str(c) for c in cats], [str(r.get("category")) for r in chosen]
                    ),
                    "categories",
                ),
            )
        )
    for what, key in (("instruction", "instruction"), ("input / context", "input")):
        pool_len = [len(r.get(key) or "") for r in pool]
        if key == "input" and not any(pool_len):
            continue
        sel_len = [len(r.get(key) or "") for r in chosen]
        med = (
            f"median {int(np.median(pool_len))} characters in the pool"
            + (f", {int(np.median(sel_len))} in the selection" if sel_len else "")
            + "."
        )
        parts.append(
            _section(
                f"{what.capitalize()} length: selected vs pool",
                f"<p>{_esc(med)}</p>",
                _img(plot_lengths(pool_len, sel_len, what), f"{what} lengths"),
            )  # fmt: skip
        )
    return "".join(parts)


def _positions(run: _Run) -> str:
    from selectllm_local.review.compare import summary_position_bias

    bias = summary_position_bias(run.summary or {}, run.root)
    pairs = position_pairs_of(run)
    if bias is None or not pairs:
        return ""
    rows = "".join(
        f"<tr><td class='n'>{r.position}</td><td class='n'>{r.picks}</td>"
        f"<td class='n'>{100 * r.share:.1f}%</td><td class='n'>{r.expected:.1f}</td>"
        f"<td class='n'>{100 * r.expected_share:.1f}%</td></tr>"
        for r in bias.positions
    )
    table = (
        "<table><tr><th>position</th><th>picks</th><th>share</th><th>expected picks</th>"
        f"<th>expected share</th></tr>{rows}</table>"
    )
    text = (
        f"<p>{bias.picks} model picks (no-call subsets and fallback picks excluded); position: "
        f"{_esc(bias.basis)}. Expected: a position-blind model, whose pick in a subset of n "
        f"candidates falls on each position with probability 1/n. Chi-square goodness of fit: "
        f"{bias.chi2:.1f} on {bias.df} degrees of freedom, p = {bias.p_value:.3g}.</p>"
    )
    flag = (
        f"<p class='note'><b>{_esc(bias.warning)}</b><br>Rule: {_esc(bias.rule)}.</p>"
        if bias.warning
        else f"<p>No position bias flagged ({_esc(bias.rule)}).</p>"
    )
    return _section("Position of the pick (does the model prefer early candidates?)", text,
                    flag, table, _img(plot_positions(pairs), "positions"))  # fmt: skip


def position_pairs_of(run: _Run) -> list[tuple[int, int]]:
    """(position, subset size) of every model pick of the run (``diagnostics.position_pairs``)."""
    from selectllm_local.review.diagnostics import position_pairs

    k = int(run.labels.max()) + 1 if run.labels is not None else 0
    return position_pairs(run.subsets, run.responses, k)


def _answers(run: _Run) -> str:
    s = run.summary or {}
    c = s.get("counts")
    if not c:
        return ""
    rows = [
        ("subsets", c.get("subsets")),
        ("asked the LLM", c.get("asked")),
        ("needed no call", c.get("no_call")),
        ("valid on the first try", c.get("valid_first_try")),
        ("valid after a retry", c.get("retried")),
        ("fallback (deterministic picks)", c.get("fallback")),
        ("invalid answers in total", c.get("invalid_answers")),
        ("resumed from an earlier run", c.get("resumed")),
    ]
    rows += [(f"error: {k}", v) for k, v in (c.get("errors") or {}).items()]
    return _section("Answers: retries and fallbacks", _kv_table(rows))


def _throughput(run: _Run) -> str:
    s = run.summary or {}
    ps = run.plan_summary or {}
    seconds = dict(s.get("seconds") or ps.get("seconds") or {})
    if not seconds:
        return ""
    if "select" in seconds and "engine" in seconds:  # select's time includes the engine's
        seconds["our code in select"] = max(0.0, seconds.pop("select") - seconds["engine"])
    tok, thr = s.get("tokens_this_run") or {}, s.get("throughput") or {}
    saved = ps.get("prompt_tokens_estimate")
    est = PromptTokenEstimate.from_dict(saved) if saved else None
    rows = [
        ("prompt tokens", tok.get("prompt")),
        ("of which served from the prefix cache", tok.get("cached_prompt")),
        ("output tokens", tok.get("output")),
        ("padding tokens (transformers)", tok.get("padding")),
        ("prompts / s (engine)", thr.get("prompts_per_s")),
        ("prompt tokens / s (engine)", thr.get("prompt_tokens_per_s")),
        ("output tokens / s (engine)", thr.get("output_tokens_per_s")),
        ("planned prompt tokens (estimate)", est.total if est is not None else None),
        ("total seconds", seconds.get("total")),
    ]
    return _section("Tokens, throughput and time per stage", _kv_table(rows),
                    _img(plot_stages(seconds), "seconds per stage"))  # fmt: skip


def render_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for a run directory and return its path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(
            f"Run directory {root} does not exist. Pass the --run-dir of a plan or select run."
        )
    run = _Run(root)
    if run.pool is None and run.labels is None and run.summary is None:
        raise UserError(
            f"{root} is not a run directory: it has none of pool.jsonl, clusters.npy, summary.json. "
            "Pass the directory a plan or select command wrote (its --run-dir)."
        )
    sel = run.selected_indices()
    body = "".join(
        [
            _overview(run),
            _clusters(run, sel),
            _content(run, sel),
            _positions(run),
            _answers(run),
            _throughput(run),
        ]
    )
    title = f"SelectLLM run report: {root.name}"
    doc = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='sub'>{_esc(root.resolve())}</p>{body}</body></html>\n"
    )
    path = Path(out) if out else root / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(doc, "utf-8")
    log.info("report written to %s", path)
    return path
