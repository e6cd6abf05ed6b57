"""The HTML run report: rendered for real run directories (select and plan-only), and in Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from selectllm_local.errors import UserError
from selectllm_local.review.report import render_report
from tests.helpers import EXAMPLE_POOL

SECTIONS = (
    "Overview",
    "Cluster sizes and picks per cluster",
    "Categories: selected vs pool",
    "Instruction length: selected vs pool",
    "Position of the pick",
    "Answers: retries and fallbacks",
    "Tokens, throughput and time per stage",
)
PLANNED = "planned prompt tokens (estimate)"
OLD_RUN = Path(__file__).parents[1] / "data" / "old_format_run" / "run"
IMG = re.compile(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


def _small_pool(tmp: Path, n: int = 120) -> Path:
    pool = tmp / "pool.jsonl"
    with open(EXAMPLE_POOL, encoding="utf-8") as fh:
        pool.write_text("".join(fh.readline() for _ in range(n)), "utf-8")
    return pool


@pytest.fixture(scope="module")
def select_run_dir(tmp_path_factory: pytest.TempPathFactory, vllm_backend, tiny_model_dir) -> Path:
    """A run directory written by the real pipeline (embedder, FAISS, the shared vLLM engine)."""
    from selectllm_local.config import EngineConfig, PlanConfig, SelectConfig
    from selectllm_local.run.pipeline import select_run

    tmp = tmp_path_factory.mktemp("report")
    cfg = SelectConfig(
        plan=PlanConfig(pool=_small_pool(tmp), budget=12, n_clusters=6, run_dir=tmp / "run"),
        engine=EngineConfig(backend="vllm", model=str(tiny_model_dir), max_model_len=4096),
    )
    select_run(cfg, backend=vllm_backend, progress=False)
    return tmp / "run"


def test_report_of_a_select_run(select_run_dir: Path) -> None:
    path = render_report(select_run_dir)
    assert path == select_run_dir / "report.html"
    html = path.read_text("utf-8")
    for title in SECTIONS:
        assert title in html, title
    images = IMG.findall(html)
    assert len(images) >= 6
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((select_run_dir / "summary.json").read_text())
    assert f"<td class='n'>{summary['selected']}</td>" in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch


def test_report_of_a_plan_only_run(tmp_path: Path) -> None:
    from selectllm_local.config import PlanConfig
    from selectllm_local.run.pipeline import plan_run

    planned = plan_run(
        PlanConfig(pool=_small_pool(tmp_path, 60), budget=6, n_clusters=4, run_dir=tmp_path / "p"),
        progress=False,
    )
    out = render_report(tmp_path / "p", tmp_path / "elsewhere" / "r.html")
    html = out.read_text("utf-8")
    total = planned.prompt_tokens_estimate.total
    assert total > 0 and f"<th>{PLANNED}</th><td class='n'>{total}</td>" in html
    assert "No selection in this run directory yet" in html
    assert "Cluster sizes and picks per cluster" in html and "Categories" in html
    assert "Position of the pick" not in html  # nothing was picked


def test_report_of_an_old_run_directory(tmp_path: Path) -> None:
    """A run directory written by an older version (``tests/data/old_format_run``) renders from
    its files alone, the planned prompt tokens read from its ``plan_summary.json``."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    saved = json.loads((OLD_RUN / "plan_summary.json").read_text("utf-8"))
    html = render_report(run).read_text("utf-8")
    for title in SECTIONS:
        assert title in html, title
    total = saved["prompt_tokens_estimate"]["total"]
    assert f"<th>{PLANNED}</th><td class='n'>{total}</td>" in html


def test_report_refuses_a_non_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a run directory"):
        render_report(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        render_report(tmp_path / "missing")


def test_report_cli(select_run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selectllm_local.cli import app

    out = tmp_path / "cli.html"
    res = CliRunner().invoke(app, ["report", str(select_run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "Overview" in out.read_text("utf-8")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_report_opens_in_headless_chromium(select_run_dir: Path, tmp_path: Path) -> None:
    path = render_report(select_run_dir)
    shot = tmp_path / "shot.png"
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
    ]  # fmt: skip
    dom = subprocess.run(
        [*args, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Position of the pick" in dom.stdout and dom.stdout.count("<img") >= 6
    res = subprocess.run(
        [*args, "--window-size=1200,2000", f"--screenshot={shot}", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
