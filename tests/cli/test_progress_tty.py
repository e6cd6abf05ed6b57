"""Progress lines as a person at a terminal sees them (issue 21): ``finetune`` and ``evaluate``
run the real CLI in a pseudo-terminal with a tiny model, and the line must move.

Each update is drawn at once (``progress.Line``), so every state a step passes through reaches
the terminal: the assertions count distinct states, never time. With ``--json`` or a pipe for
stderr, no line is drawn at all.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from tests.helpers import EXAMPLE_POOL, HANG_GUARD, REPO

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``python -m selectllm_local ARGS`` with a terminal for stdin/stdout/stderr."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "selectllm_local", *args],
        stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], HANG_GUARD)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    rc = proc.wait(timeout=HANG_GUARD)
    return rc, ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def states(text: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, text))


def records_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(EXAMPLE_POOL.read_text().splitlines()[:n]) + "\n")
    return path


def test_finetune_shows_steps_loss_and_time_left(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    rc, text = run_in_pty(
        ["finetune", str(records_file(tmp_path, 16)), "--base-model", str(tiny_llama_dir),
         "--out", str(out), "--max-steps", "8", "--batch-size", "2", "--lora-r", "4",
         "--max-length", "96"],
        tmp_path,
    )  # fmt: skip
    assert rc == 0, text
    steps = states(text, r"fine-tuning \(steps\)\S*\s.*?(\d+)/8")
    assert len(steps) >= 2, text  # the line moved, relayed from the subprocess
    assert "loss " in text and re.search(r"~\d+:\d\d:\d\d left", text), text
    summary = json.loads((out / "train_summary.json").read_text())
    assert f"final train loss {summary['train_loss']:.4f}" in " ".join(text.split())
    assert "@@selectllm-progress" not in (out / "finetune.log").read_text()


def test_evaluate_shows_answers_done(tiny_model_dir: Path, tmp_path: Path) -> None:
    test = tmp_path / "test.jsonl"
    rows = [json.loads(x) for x in EXAMPLE_POOL.read_text().splitlines()[:6]]
    test.write_text(
        "".join(json.dumps({**r, "output": r.get("response", "x")}) + "\n" for r in rows)
    )
    rc, text = run_in_pty(
        ["evaluate", str(test), "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "ev"),
         "--backend", "transformers", "--batch-size", "2", "--max-new-tokens", "8"],
        tmp_path,
    )  # fmt: skip
    assert rc == 0, text
    done = states(text, r"LLM prompts\S*\s.*?(\d)/6")
    assert len(done) >= 2, text
    assert "Rouge-L F1" in text


def test_no_progress_line_without_a_terminal(tmp_path: Path) -> None:
    """stderr is a pipe: no row is drawn (the embedding would show one at a terminal)."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(EXAMPLE_POOL.read_text().splitlines()[:12]) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "selectllm_local", "select", str(pool), "--budget", "12",
         "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Selected 12 of 12" in " ".join(r.stdout.split())
    assert "embedding (" not in r.stderr and "━" not in r.stderr
