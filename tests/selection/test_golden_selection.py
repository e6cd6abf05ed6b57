"""The example run's selection, byte for byte, against a recorded golden file.

A refactor must not change what ``select`` picks. This runs the README's example (a slice of
``examples/dolly_sample_1500.jsonl``) through the CLI, as a user would, with the tiny random-weight
model on both backends at temperature 0, and compares ``selected.jsonl`` with the digest recorded
in ``tests/golden/example_selection.json``.

The golden file changes only when the method changes on purpose (prompt text, grammar, layout):
regenerate it then with ``SELECTLLM_REGEN_GOLDEN=1 python -m pytest tests/selection/test_golden_selection.py``
and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import EXAMPLE_POOL, GOLDEN_DIR, requires_vllm

GOLDEN = GOLDEN_DIR / "example_selection.json"
ROWS, BUDGET = 300, 30


def _run(tmp_path: Path, model: Path, backend: str) -> bytes:
    lines = EXAMPLE_POOL.read_text("utf-8").splitlines()[:ROWS]
    pool = tmp_path / "example.jsonl"
    pool.write_text("\n".join(lines) + "\n", "utf-8")
    run_dir = tmp_path / f"run-{backend}"
    cmd = [sys.executable, "-m", "selectllm_local", "select", str(pool), "--budget", str(BUDGET)]
    cmd += ["--model", str(model), "--backend", backend, "--run-dir", str(run_dir), "--seed", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (run_dir / "selected.jsonl").read_bytes()


def _check(backend: str, data: bytes) -> None:
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert len(rows) == BUDGET
    got = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "indices": [r["selectllm"]["index"] for r in rows],
    }
    golden = json.loads(GOLDEN.read_text("utf-8")) if GOLDEN.exists() else {}
    if os.environ.get("SELECTLLM_REGEN_GOLDEN") == "1":
        golden[backend] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", "utf-8")
    assert backend in golden, f"no golden entry for {backend}: regenerate (see module docstring)"
    assert got["indices"] == golden[backend]["indices"]
    assert got["sha256"] == golden[backend]["sha256"]


def test_example_selection_transformers_unchanged(tmp_path: Path, tiny_model_dir: Path) -> None:
    _check("transformers", _run(tmp_path, tiny_model_dir, "transformers"))


@requires_vllm
def test_example_selection_vllm_unchanged(tmp_path: Path, tiny_model_dir: Path) -> None:
    _check("vllm", _run(tmp_path, tiny_model_dir, "vllm"))
