"""The CLI starts instantly, turns user errors into exit code 2, and `plan` works end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import EXAMPLE_POOL

CLI = [sys.executable, "-m", "selectllm_local"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_help_is_fast_and_imports_no_heavy_library() -> None:
    code = (
        "import sys, time; t = time.perf_counter();"
        "from typer.testing import CliRunner; from selectllm_local.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = [m for m in ('torch', 'vllm', 'faiss', 'transformers', 'sentence_transformers', 'peft', 'numpy') if m in sys.modules];"
        "print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, _ = out.rsplit(" ", 1)
    assert heavy == "[]", f"--help imported heavy modules: {heavy}"
    # wall time of the real entry point, interpreter start included
    t = time.perf_counter()
    r = run_cli("--help")
    elapsed = time.perf_counter() - t
    assert r.returncode == 0 and "plan" in r.stdout and "select" in r.stdout
    assert elapsed < 3.0, f"selectllm --help took {elapsed:.2f}s"  # generous bound for a loaded CI box


def test_every_command_has_help() -> None:
    for cmd in ("plan", "select", "baseline", "split", "experiment", "bench", "report"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_missing_budget_is_a_clear_error() -> None:
    r = run_cli("plan", str(EXAMPLE_POOL))
    assert r.returncode == 2
    assert "--budget" in r.stderr and "Traceback" not in r.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    r = run_cli("plan", str(tmp_path / "nope.jsonl"), "--budget", "3", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "nope.jsonl" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_file_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("budget = 5\nbudgett = 6\n")
    r = run_cli("plan", str(EXAMPLE_POOL), "--config", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "budgett" in r.stderr and "Traceback" not in r.stderr


def test_plan_example_budget_137_then_reuses_embeddings(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    r = run_cli("plan", str(EXAMPLE_POOL), "--budget", "137", "--run-dir", str(run_dir), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["subsets"]["picks_total"] == 137
    assert s["embeddings"]["cached"] is False
    assert s["pool"]["schema"] == "dolly"
    for name in ("config.json", "pool.jsonl", "embeddings.npy", "clusters.npy", "subsets.jsonl", "manifest.json"):
        assert (run_dir / name).exists(), name
    subsets = [json.loads(line) for line in (run_dir / "subsets.jsonl").read_text().splitlines()]
    assert sum(x["k"] for x in subsets) == 137
    placed = sorted(i for x in subsets for i in x["candidates"])
    assert placed == list(range(s["pool"]["kept"]))

    # a second budget on the same run directory re-uses the embeddings (visible in the output)
    r2 = run_cli("plan", str(EXAMPLE_POOL), "--budget", "50", "--run-dir", str(run_dir))
    assert r2.returncode == 0, r2.stderr
    assert "reused from cache" in r2.stdout
    subsets = [json.loads(line) for line in (run_dir / "subsets.jsonl").read_text().splitlines()]
    assert sum(x["k"] for x in subsets) == 50
