"""``selectllm select`` as a user runs it: subprocesses, real engines, kills, no network.

Each subprocess starts its own engine (20-70 s on the 2-core CI machine), so there are few of
them: a vLLM run killed with SIGKILL midway and resumed (compared with an uninterrupted run on the
session's engine), a transformers run with networking blocked, a budget equal to the pool
(no model at all), and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import HANG_GUARD, n_lines, requires_vllm, small_pool

CLI = [sys.executable, "-m", "selectllm_local", "select"]

BLOCK_NETWORK = """
import os, socket
_log = os.environ["SELECTLLM_NET_LOG"]
def _record(what):
    with open(_log, "a") as fh:
        fh.write(what + "\\n")
def _local(addr):
    if not isinstance(addr, tuple):
        return True  # AF_UNIX path
    host = str(addr[0])
    return host.startswith("127.") or host in ("localhost", "::1", "0.0.0.0")
_connect, _connect_ex, _gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
def connect(self, addr):
    if not _local(addr):
        _record(f"connect {addr!r}")
        raise OSError("network disabled by the test")
    return _connect(self, addr)
def connect_ex(self, addr):
    if not _local(addr):
        _record(f"connect_ex {addr!r}")
        return 101
    return _connect_ex(self, addr)
def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1", "0.0.0.0"):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror("network disabled by the test")
    return _gai(host, *args, **kwargs)
socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
"""


def selected_indices(run_dir: Path) -> list[int]:
    lines = (run_dir / "selected.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line)["selectllm"]["index"] for line in lines]


@requires_vllm
def test_sigkill_midway_then_resume_equals_uninterrupted(
    tmp_path: Path, tiny_model_dir: Path, vllm_backend
) -> None:
    pool = small_pool(tmp_path, 240)
    args = [str(pool), "--model", str(tiny_model_dir), "--budget", "40", "--backend", "vllm", "--k", "8",
            "--max-model-len", "4096", "--max-num-seqs", "2"]  # fmt: skip
    run = tmp_path / "killed"
    responses = run / "responses.jsonl"
    # The run holds after its 4th written subset (testhooks) until the kill, however fast or
    # slow the machine; the deadline only guards against a hang.
    env = {**os.environ, "SELECTLLM_HOLD_AFTER_SUBSETS": "4"}
    proc = subprocess.Popen(
        [*CLI, *args, "--run-dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + HANG_GUARD
    while n_lines(responses) < 4:
        assert proc.poll() is None, (
            "select finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
        )
        assert time.monotonic() < deadline, "no subset finished in 30 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = n_lines(responses)
    total = len((run / "subsets.jsonl").read_text("utf-8").splitlines())
    assert 4 <= finished < total, (finished, total)
    assert finished == 4  # held: nothing was written after the 4th row
    assert not (run / "selected.jsonl").exists()

    again = subprocess.run(
        [*CLI, *args, "--run-dir", str(run), "--json"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert json.loads((run / "summary.json").read_text("utf-8")) == summary  # one to_dict()
    assert (run / "report.html").is_file()  # the run writes the report, --json or not
    c = summary["counts"]
    assert (
        c["resumed"] == finished and c["sent_this_run"] == total - finished
    )  # only the unfinished
    rows = [json.loads(line) for line in responses.read_text("utf-8").splitlines()]
    assert len(rows) == total and len({(r["round"], r["subset_id"]) for r in rows}) == total
    resumed = selected_indices(run)
    assert len(resumed) == 40 == len(set(resumed)) == summary["selected"]

    from selectllm_local.config import SelectConfig
    from selectllm_local.run.pipeline import select_run

    cfg = SelectConfig.of(pool=pool, budget=40, model=str(tiny_model_dir), backend="vllm", n_clusters=8,
                       max_model_len=4096, run_dir=tmp_path / "whole")  # fmt: skip
    whole = select_run(cfg, backend=vllm_backend, progress=False)
    assert whole.summary.counts.sent_this_run == total
    assert whole.report == tmp_path / "whole" / "report.html" and whole.report.is_file()
    assert whole.selected == resumed


def test_transformers_select_with_network_blocked(tmp_path: Path, tiny_model_dir: Path) -> None:
    pool = small_pool(tmp_path, 60)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_NETWORK, "utf-8")
    net_log = tmp_path / "net.log"
    env = {
        k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")
    }  # the code must set them
    env.update(PYTHONPATH=str(site), SELECTLLM_NET_LOG=str(net_log))
    cmd = [*CLI, str(pool), "--model", str(tiny_model_dir), "--budget", "10", "--backend", "transformers",
           "--k", "6", "--run-dir", str(tmp_path / "run"), "--format", "parquet", "--json"]  # fmt: skip
    if os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "-n", *cmd]  # a network namespace with no interfaces up, as well
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not net_log.exists(), "network access attempted: " + net_log.read_text()
    summary = json.loads(r.stdout)
    assert summary["selected"] == 10 and summary["backend"] == "transformers"
    assert summary["counts"]["fallback"] == 0  # the constrained gate keeps answers valid
    assert len(selected_indices(tmp_path / "run")) == 10

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "run" / "selected.parquet")
    assert table.num_rows == 10 and "selectllm_cluster" in table.column_names


def test_budget_equal_to_pool_needs_no_model(tmp_path: Path) -> None:
    pool = small_pool(tmp_path, 25)
    r = subprocess.run([*CLI, str(pool), "--budget", "25", "--k", "5", "--run-dir", str(tmp_path / "run"), "--json",
                        "--format", "hf"],
                       capture_output=True, text=True, timeout=HANG_GUARD)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["selected"] == 25 and not s["llm_called"] and "no LLM call" in s["note"]
    assert sorted(selected_indices(tmp_path / "run")) == list(range(25))
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "run" / "selected_hf"))
    assert ds.num_rows == 25 and "selectllm_subset_id" in ds.column_names
    r2 = subprocess.run([*CLI, str(pool), "--budget", "5", "--k", "5", "--run-dir", str(tmp_path / "run")],
                        capture_output=True, text=True, timeout=HANG_GUARD)  # fmt: skip
    assert r2.returncode == 2 and "needs --model" in r2.stderr


def _sigint_as_at_a_terminal() -> None:
    """Give the child Ctrl-C's default action. A test run started in the background (``cmd &``,
    ``nohup``, some CI runners) inherits SIGINT ignored, an ignored signal stays ignored across
    exec, and Python then installs no KeyboardInterrupt handler: the child would never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_with_resume_hint(tmp_path: Path) -> None:
    """SIGINT mid-run: exit 130, the finished subsets saved, a hint to resume.

    The run uses the fake backend told to answer two prompts and then wait until a signal
    interrupts it (``SELECTLLM_FAKE_BLOCK_AFTER``), so the signal always lands mid-run however
    fast or slow the machine is; the pipeline's handling of Ctrl-C is what is tested here (the
    engines' resume after a kill is tested above with vLLM).
    """
    pool = small_pool(tmp_path, 120)
    run = tmp_path / "run"
    env = {**os.environ, "SELECTLLM_FAKE_BLOCK_AFTER": "2"}
    proc = subprocess.Popen(
        [*CLI, str(pool), "--model", "fake", "--budget", "20", "--backend", "fake",
         "--k", "6", "--run-dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_sigint_as_at_a_terminal,
    )  # fmt: skip
    deadline = time.monotonic() + HANG_GUARD  # a hang guard only: the outcome does not depend on it
    while n_lines(run / "responses.jsonl") < 2:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 130, err[-2000:]
    assert "Run the same command again to resume" in " ".join(err.split())
    assert "Traceback" not in err
    assert n_lines(run / "responses.jsonl") == 2 and not (run / "selected.jsonl").exists()

    again = subprocess.run(
        [*CLI, str(pool), "--model", "fake", "--budget", "20", "--backend", "fake", "--k", "6",
         "--run-dir", str(run), "--json"],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    counts = json.loads(again.stdout)["counts"]
    assert counts["resumed"] == 2 and counts["sent_this_run"] == counts["subsets"] - 2
    assert len(selected_indices(run)) == 20
