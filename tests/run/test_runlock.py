"""One run per run directory: a second ``select`` on a folder in use exits 2 naming the holder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from selectllm_local.errors import UserError
from selectllm_local.run.store import LOCK_FILE, run_lock
from tests.helpers import EXAMPLE_POOL, HANG_GUARD

HOLD = """
import sys, time
from selectllm_local.run.store import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    while True:  # held until the test kills this process, however slow the machine is
        time.sleep(3600)
"""


def test_second_select_on_a_locked_run_dir_exits_2_naming_the_holder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with run_lock(run_dir):  # this test process is the running select
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        proc = subprocess.run(
            [sys.executable, "-m", "selectllm_local", "select", str(EXAMPLE_POOL), "--budget",
             "5", "--run-dir", str(run_dir), "--model", "/nonexistent"],
            capture_output=True, text=True, timeout=HANG_GUARD,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        msg = " ".join(proc.stderr.split())
        assert f"in use by process {os.getpid()} on host {socket.gethostname()}" in msg
        assert "Traceback" not in proc.stderr and "--run-dir" in msg
        assert not (run_dir / "responses.jsonl").exists()
        with run_lock(run_dir):  # re-entrant in the holding process (select runs plan inside)
            pass
    assert (run_dir / LOCK_FILE).read_text() == ""  # released cleanly


def test_lock_of_a_killed_process_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by process {proc.pid} on host"):
            with run_lock(run_dir):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD)
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == proc.pid  # left behind
    with caplog.at_level("INFO", logger="selectllm_local.run.store"), run_lock(run_dir):
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"left by process {proc.pid}" in caplog.text
